"""Checksummed, atomically written directories: how index shards and encodings go to disk.

A directory written here holds its files plus `manifest.json`:
  {"format": "aligner_jax", "kind": <what it is>, "version": 1, "config": {...},
   "counts": {...}, "files": {relative path: {"bytes": int, "sha256": hex}}, "total_bytes": int}
`verify_dir` refuses, with an `IndexFileError` naming the file, a directory whose manifest is
missing or unreadable, of another kind or version, that lacks a listed file, holds an unlisted
one, or whose sizes differ from the manifest: checks that read no data, so a load of any size
costs a directory listing. With `checksums=True` it also hashes every byte and compares the
SHA-256 sums: what an explicit verification does (`python -m aligner_jax.index verify`), not
every load.

Writers fill such a directory inside `aligner_jax.io.atomic_dir`, so a crash never leaves a
half-written directory under the final name. Arrays are `.npy` files read without pickle;
`load_array` checks dtype, shape and file size from the `.npy` header alone and maps the data
read-only (`mmap_mode="r"`): pages are read when something touches them, and the operating
system may drop them again under memory pressure.
"""

import hashlib
import json
import os
import pathlib
import threading
from typing import Any, BinaryIO

import numpy as np

from aligner_jax.io import atomic_write
from aligner_jax.io import write_json

METADATA = "metadata.jsonl"

FORMAT = "aligner_jax"
MANIFEST = "manifest.json"
_CHUNK = 1 << 23


class IndexFileError(ValueError):
  """A stored directory is corrupted, incomplete or does not match what was expected."""

  def __init__(self, path: str | os.PathLike, problem: str):
    self.path = os.fspath(path)
    self.problem = problem
    super().__init__(f"{self.path}: {problem}")


def sha256_file(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(_CHUNK):
      digest.update(block)
  return digest.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
  path = pathlib.Path(path)
  if not path.is_file():
    raise IndexFileError(path, "file not found")
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    line = getattr(e, "lineno", None)
    where = f":{line}" if line else ""
    raise IndexFileError(f"{path}{where}", f"not valid JSON ({e})") from None


def json_sha256(obj: Any) -> str:
  """SHA-256 of `obj`'s canonical JSON (sorted keys, no spaces): the checksum of a record
  kept inside another JSON file, whatever indentation that file is written with."""
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_array(directory: pathlib.Path, name: str, array: np.ndarray) -> None:
  np.save(directory / name, np.ascontiguousarray(array), allow_pickle=False)


def save_metadata(directory: pathlib.Path, text: str) -> None:
  """Writes documents' metadata (`token_store.metadata_jsonl`) as `metadata.jsonl`."""
  atomic_write(directory / METADATA, text)


def load_metadata(directory: pathlib.Path, count: int) -> list[dict[str, Any]]:
  """The `count` JSON objects of `directory / metadata.jsonl`, one a line.

  Raises:
    IndexFileError: naming the file and line, for a line that is not a JSON object or
      another number of lines.
  """
  path = directory / METADATA
  if not path.is_file():
    raise IndexFileError(path, "file not found")
  rows = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise IndexFileError(f"{path}:{number}", f"not valid JSON ({e})") from None
      if not isinstance(row, dict):
        raise IndexFileError(f"{path}:{number}", f"expected a JSON object, got {row!r:.60}")
      rows.append(row)
  if len(rows) != count:
    raise IndexFileError(path, f"holds {len(rows)} lines, expected one for each of the "
                         f"{count} documents (mismatched file)")
  return rows


def list_files(directory: pathlib.Path) -> list[str]:
  """Relative paths of every file below `directory` except the manifest, sorted."""
  return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST)


def write_manifest(directory: pathlib.Path, *, kind: str, version: int,
                   config: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
  """Checksums every file in `directory` and writes its `manifest.json`; returns the manifest."""
  files = {}
  for rel in list_files(directory):
    path = directory / rel
    files[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
  manifest = {"format": FORMAT, "kind": kind, "version": version, "config": config,
              "counts": counts, "files": files,
              "total_bytes": sum(f["bytes"] for f in files.values())}
  write_json(directory / MANIFEST, manifest)
  return manifest


def verify_dir(directory: str | os.PathLike, *, kind: str, version: int,
               checksums: bool = True) -> dict[str, Any]:
  """Checks `directory` against its manifest (see the module docstring); returns the manifest.

  Args:
    directory: the directory holding `manifest.json`.
    kind, version: what the manifest must declare.
    checksums: also compare every file's SHA-256 with the manifest (reads every byte);
      without, only presence and sizes are compared.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise IndexFileError(directory, "directory not found")
  manifest_path = directory / MANIFEST
  manifest = read_json(manifest_path)
  if not isinstance(manifest, dict):
    raise IndexFileError(manifest_path, "manifest must be a JSON object")
  for key in ("format", "kind", "version", "config", "counts", "files"):
    if key not in manifest:
      raise IndexFileError(manifest_path, f"manifest lacks the key {key!r}")
  if manifest["format"] != FORMAT or manifest["kind"] != kind:
    raise IndexFileError(manifest_path, f"expected a {FORMAT!r} {kind!r} manifest, found "
                         f"format {manifest['format']!r} kind {manifest['kind']!r}")
  if manifest["version"] != version:
    raise IndexFileError(manifest_path, f"{kind} version {manifest['version']} is not the "
                         f"supported version {version}; rebuild it")
  listed = manifest["files"]
  if not isinstance(listed, dict):
    raise IndexFileError(manifest_path, "`files` must map paths to {bytes, sha256}")
  present = set(list_files(directory))
  for rel in sorted(present - set(listed)):
    raise IndexFileError(directory / rel, "file is not listed in the manifest (a stray or "
                         "mixed-in file)")
  for rel, entry in sorted(listed.items()):
    path = directory / rel
    if rel not in present:
      raise IndexFileError(path, "file listed in the manifest is missing")
    size = path.stat().st_size
    if size != entry.get("bytes"):
      raise IndexFileError(path, f"size {size} bytes differs from the manifest's "
                           f"{entry.get('bytes')} (truncated or replaced)")
    if not checksums:
      continue
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
      raise IndexFileError(path, f"SHA-256 {digest[:16]}… differs from the manifest's "
                           f"{str(entry.get('sha256'))[:16]}… (the file is corrupted)")
  return manifest


def check_listed_manifest(directory: pathlib.Path, entry: dict[str, Any]) -> None:
  """Refuses the directory `directory / entry["name"]` (a shard or coarse level an index.json
  lists) when its manifest is not the one the listing names by `entry["manifest_sha256"]`; a
  missing manifest is left to `verify_dir` to report."""
  manifest_path = directory / entry["name"] / MANIFEST
  if manifest_path.is_file() and sha256_file(manifest_path) != entry["manifest_sha256"]:
    raise IndexFileError(manifest_path, "manifest differs from the one index.json lists (a "
                         "directory from another build was mixed in)")


# numpy reads a `.npy` header with `ast.literal_eval`, and CPython 3.11's AST constructor keeps
# one recursion counter per interpreter: two header reads on different threads (shards load on
# a thread pool) can fail with "SystemError: AST constructor recursion depth mismatch". Every
# header read of this package goes through this lock.
_NPY_HEADER_LOCK = threading.Lock()


def parse_npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
  """(shape, fortran_order, dtype) of the `.npy` stream `f`, read from its start; leaves `f`
  at the first byte of data. Safe to call from several threads at once.

  Raises:
    ValueError: not a `.npy` header of a version numpy writes (1.0 or 2.0).
  """
  with _NPY_HEADER_LOCK:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
      return np.lib.format.read_array_header_2_0(f)
  raise ValueError(f"unsupported .npy format version {version}")


def load_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Every array of the `.npz` archive `path`, read without pickle. Safe from several threads.

  Raises:
    OSError, ValueError, KeyError, zipfile.BadZipFile: an unreadable archive.
  """
  with _NPY_HEADER_LOCK, np.load(path, allow_pickle=False) as archive:
    return {name: archive[name] for name in archive.files}


def read_npy_header(path: pathlib.Path) -> tuple[np.dtype, tuple[int, ...], int]:
  """(dtype, shape, data offset) of a C-ordered `.npy` file, read from its header alone.

  Raises:
    IndexFileError: when the file is not such an array, or its size is not what the header
      says (a truncated or padded file).
  """
  try:
    with open(path, "rb") as f:
      shape, fortran, dtype = parse_npy_header(f)
      offset = f.tell()
  except (ValueError, OSError, EOFError) as e:
    raise IndexFileError(path, f"not a readable .npy array ({e})") from None
  if fortran or dtype.hasobject:
    raise IndexFileError(path, "array must be C-ordered plain data (no Fortran order, no "
                         "Python objects)")
  expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  size = path.stat().st_size
  if size != expected:
    raise IndexFileError(path, f"file has {size} bytes but its header describes "
                         f"{dtype}{list(shape)} in {expected} bytes (truncated or padded)")
  return dtype, tuple(shape), offset


def load_array(directory: pathlib.Path, name: str, *, dtype: str | np.dtype,
               shape: tuple[int | None, ...], mmap: bool = True) -> np.ndarray:
  """`name` mapped read-only (or read, `mmap=False`) after checking from its header alone
  that dtype and shape (None matches any size) are what the manifest implies."""
  path = directory / name
  found, found_shape, offset = read_npy_header(path)
  want = np.dtype(dtype)
  shape_ok = len(found_shape) == len(shape) and all(
      s is None or s == a for s, a in zip(shape, found_shape))
  if found != want or not shape_ok:
    shown = tuple("*" if s is None else s for s in shape)
    raise IndexFileError(path, f"array is {found}{list(found_shape)} but the manifest "
                         f"implies {want}{list(shown)} (mismatched shard)")
  try:
    # Opened from the header already read (not np.load, which would parse it again).
    # An empty array cannot be mapped (there is nothing to map): it is read instead.
    if mmap and 0 not in found_shape:
      return np.memmap(path, dtype=found, mode="r", shape=found_shape, offset=offset)
    count = int(np.prod(found_shape, dtype=np.int64))
    return np.fromfile(path, dtype=found, count=count, offset=offset).reshape(found_shape)
  except (ValueError, OSError) as e:
    raise IndexFileError(path, f"not a readable .npy array ({e})") from None
