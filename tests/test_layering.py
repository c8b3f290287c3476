"""The library's import graph points down its layers, and never into the experiments.

Layers, lowest first (a module may import its own layer and those below it):
  0 utilities   aligner_jax.io, sharding, partitioning, plots, native_logs
  1 math        aligner_jax.scoring, losses
  2 models/data aligner_jax.models, aligner_jax.data
  3 index       aligner_jax.index
  4 retrieval   aligner_jax.retrieval
  5 jobs        aligner_jax.eval, aligner_jax.train
  6 searcher    aligner_jax.search
  7 entry point aligner_jax.main
A command line (`__main__`) is an entry point: it may import, inside a function, what
`ENTRY_POINT_IMPORTS` allows it above its layer (`python -m aligner_jax.index add --corpus`
encodes through the searcher). `tasks/` (seqio registrations), `repro/` (the papers'
reproductions) and `bench/` sit above the library and are never imported by it. Every import
counts, including those inside functions.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aligner_jax"
LAYERS = (
    ("aligner_jax.io", "aligner_jax.sharding", "aligner_jax.partitioning", "aligner_jax.plots",
     "aligner_jax.native_logs"),
    ("aligner_jax.scoring", "aligner_jax.losses"),
    ("aligner_jax.models", "aligner_jax.data"),
    ("aligner_jax.index",),
    ("aligner_jax.retrieval",),
    ("aligner_jax.eval", "aligner_jax.train"),
    ("aligner_jax.search",),
    ("aligner_jax.main",),
)
# entry point module -> the packages above its layer it may import inside functions.
ENTRY_POINT_IMPORTS = {"aligner_jax.index.__main__": ("aligner_jax.search",)}
OUTSIDE = ("tasks", "repro", "bench", "tests")


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
  path = ROOT.joinpath(*name.split("."))
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: pathlib.Path) -> set[tuple[str, int]]:
  """(imported module, line) for every import in `path`; `from M import n` counts as M.n when
  that is a module."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      found.update((a.name, node.lineno) for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        found.add((sub if _is_module(sub) else node.module, node.lineno))
  return found


def layer_of(module: str) -> int | None:
  if module == "aligner_jax":
    return 0  # the package's own __init__: a docstring, no imports
  for i, names in enumerate(LAYERS):
    if any(module == n or module.startswith(n + ".") for n in names):
      return i
  return None


def function_level_imports(path: pathlib.Path) -> set[int]:
  """Lines of the imports made inside functions of `path`."""
  lines = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      lines.update(n.lineno for n in ast.walk(node)
                   if isinstance(n, (ast.Import, ast.ImportFrom)))
  return lines


def _allowed_entry_point_import(importer: str, imported: str, line: int,
                                lazy_lines: set[int]) -> bool:
  allowed = ENTRY_POINT_IMPORTS.get(importer, ())
  return line in lazy_lines and any(imported == a or imported.startswith(a + ".")
                                    for a in allowed)


def upward_imports() -> list[str]:
  problems = []
  for path in sorted(PACKAGE.rglob("*.py")):
    importer = _module_name(path)
    lazy_lines = function_level_imports(path) if importer in ENTRY_POINT_IMPORTS else set()
    own = layer_of(importer)
    if own is None:
      problems.append(f"{path.relative_to(ROOT)}: {importer} belongs to no layer of LAYERS")
      continue
    for imported, line in sorted(imports_of(path)):
      top = imported.split(".")[0]
      if top in OUTSIDE:
        problems.append(f"{path.relative_to(ROOT)}:{line}: imports {imported}, which is outside "
                        "the library")
      elif top == "aligner_jax" and imported != "aligner_jax":
        target = layer_of(imported)
        if _allowed_entry_point_import(importer, imported, line, lazy_lines):
          continue
        if target is None or target > own:
          problems.append(f"{path.relative_to(ROOT)}:{line}: {importer} (layer {own}) imports "
                          f"{imported} (layer {target})")
  return problems


def test_the_library_imports_only_downward():
  assert upward_imports() == []


def test_every_layer_names_existing_modules():
  for names in LAYERS:
    for name in names:
      assert _is_module(name), name


def _fake_library(tmp_path, monkeypatch, files: dict[str, str]) -> list[str]:
  """`upward_imports()` of a library made of `files` (path under aligner_jax -> source), each
  package getting an empty __init__.py."""
  for rel, text in files.items():
    path = tmp_path / "aligner_jax" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "__init__.py").touch()
    path.write_text(text)
  monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
  monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "aligner_jax")
  return upward_imports()


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
  """The check itself can fail: an index module importing evaluation is reported."""
  problems = _fake_library(tmp_path, monkeypatch, {
      "eval/__init__.py": "",
      "index/x.py": "def f():\n  from aligner_jax.eval import y\n  import repro.r1\n"})
  assert any("x.py:2" in p and "layer 3" in p and "layer 5" in p for p in problems), problems
  assert any("x.py:3" in p and "outside the library" in p for p in problems), problems


def test_an_entry_point_imports_upward_only_inside_functions(tmp_path, monkeypatch):
  """The index command line may reach the searcher lazily, never at module level."""
  problems = _fake_library(tmp_path, monkeypatch, {
      "search/__init__.py": "",
      "index/__main__.py": "import aligner_jax.search\n\ndef f():\n  import aligner_jax.search\n"})
  assert any("__main__.py:1" in p for p in problems), problems
  assert not any("__main__.py:4" in p for p in problems), problems


if __name__ == "__main__":
  pytest.main([__file__])
