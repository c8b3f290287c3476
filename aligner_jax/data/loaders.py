"""Where data lives and loading it once: data directories, the collection cache, and the
example sources that seqio tasks and the pipeline read.

Data directories are resolved when a dataset is first requested, never at import:
  1. `set_data_dir(key, path)` (what an entry point does with a gin-configured path);
  2. the environment variable of the key: ALIGNER_MSMARCO_DIR, ALIGNER_NQ_DIR,
     ALIGNER_DEMO_DIR, ALIGNER_BEIR_<NAME>_DIR (e.g. ALIGNER_BEIR_SCIFACT_DIR);
  3. for BEIR, `$ALIGNER_BEIR_DIR/<name>` (the layout of BEIR's own downloads).
Otherwise a `DataDirError` says which variable to set. Teacher scores of a BEIR dataset (the
teacher-scoring job's output directory) have the key "teacher/<name>"
(ALIGNER_TEACHER_<NAME>_DIR). ALIGNER_CACHE_DIR, when set, is where
mined BM25 negatives are cached (never inside a data directory). ALIGNER_STRICT_DATA=1 makes
every reader refuse documents with neither title nor text (by default they are kept, see
`collection.py`); the setting is part of the cache key.

Loaded collections are cached per directory and the files' sizes and modification times, so
the corpus, query and training tasks of one dataset share one copy and edited files reload.
"""

import os
import pathlib
import re
import threading
from typing import Callable, Sequence

from aligner_jax.data import beir
from aligner_jax.data import msmarco
from aligner_jax.data import negatives
from aligner_jax.data import nq
from aligner_jax.data import sources
from aligner_jax.data import tfds_source
from aligner_jax.data import training_files
from aligner_jax.data.collection import Collection
from aligner_jax.data.errors import ProblemLog
from aligner_jax.data.errors import strict_mode

ENV_CACHE_DIR = "ALIGNER_CACHE_DIR"
TEACHER_FILE = "teacher_scores.jsonl"
_overrides: dict[str, str] = {}
_cache: dict[tuple, Collection] = {}
_cache_lock = threading.Lock()
_CACHE_SIZE = 4


class DataDirError(FileNotFoundError):
  """No directory configured for a dataset."""


def env_var(key: str) -> str:
  """The environment variable for a data key: "beir/scifact" -> ALIGNER_BEIR_SCIFACT_DIR."""
  return "ALIGNER_" + re.sub(r"[^A-Za-z0-9]+", "_", key).upper() + "_DIR"


def set_data_dir(key: str, path: str | os.PathLike | None) -> None:
  """Points a data key ("msmarco", "nq", "demo", "beir/<name>", "beir") at a directory;
  None removes the override."""
  if path is None:
    _overrides.pop(key, None)
  else:
    _overrides[key] = os.fspath(path)


def set_data_dirs(dirs: dict[str, str | None] | None = None) -> None:
  """`set_data_dir` for each entry, e.g. {"demo": "/data/demo", "beir/scifact": "..."}.

  This is what an entry point binds in gin (`set_data_dirs.dirs = {...}`) and calls before
  it asks for a dataset.
  """
  for key, path in (dirs or {}).items():
    set_data_dir(key, path)


def data_dir(key: str) -> str:
  """The directory of a data key (see the module docstring for the order)."""
  if key in _overrides:
    return _overrides[key]
  value = os.environ.get(env_var(key))
  if value:
    return value
  if key.startswith("beir/"):
    name = key.split("/", 1)[1]
    root = _overrides.get("beir") or os.environ.get(env_var("beir"))
    if root:
      return os.path.join(root, name)
    raise DataDirError(f"no directory for BEIR dataset {name!r}: set {env_var(key)} to it, "
                       f"or {env_var('beir')} to the directory holding {name}/")
  raise DataDirError(f"no directory for {key!r}: set {env_var(key)} (or call "
                     f"aligner_jax.data.loaders.set_data_dir({key!r}, PATH))")


def config_key() -> tuple:
  """What decides where data is read from: the overrides and the ALIGNER_* variables.

  Sources built under one configuration are reused only under the same one.
  """
  env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("ALIGNER_")))
  return tuple(sorted(_overrides.items())), env


def cache_dir() -> str | None:
  return os.environ.get(ENV_CACHE_DIR) or None


def _stamp(path: str) -> tuple:
  """Sizes and modification times of every file under path (one level of subdirectories)."""
  if not path:
    return ()
  root = pathlib.Path(path)
  if not root.is_dir():
    return ()
  entries = []
  for p in sorted(list(root.iterdir()) + list(root.glob("*/*"))):
    if p.is_file():
      st = p.stat()
      entries.append((str(p), st.st_size, st.st_mtime_ns))
  return tuple(entries)


def cached(key: tuple, path: str, load: Callable[[], Collection]) -> Collection:
  """`load()` once per (key, state of the files under path); keeps a few collections."""
  full_key = key + (_stamp(path),)
  with _cache_lock:
    if full_key in _cache:
      return _cache[full_key]
  collection = load()
  with _cache_lock:
    _cache[full_key] = collection
    while len(_cache) > _CACHE_SIZE:
      _cache.pop(next(iter(_cache)))
  return collection


def clear_cache() -> None:
  with _cache_lock:
    _cache.clear()


# -- BEIR ------------------------------------------------------------------------------------


def beir_collection(path: str, name: str | None = None) -> Collection:
  """A BEIR directory, or `tfds:DATA_DIR` for TFDS's prepared `beir/<name>` (tfds_source.py)."""
  strict = strict_mode()
  if path.startswith(tfds_source.PREFIX):
    data_dir = os.path.abspath(path[len(tfds_source.PREFIX):])
    config = tfds_source.tfds_config(name or "")
    return cached(("beir-tfds", data_dir, config, strict), data_dir,
                  lambda: tfds_source.TfdsBeirSource(config, data_dir).read(name=name,
                                                                            strict=strict))
  path = os.path.abspath(path)
  return cached(("beir", path, name, strict), path,
                lambda: beir.read_beir(path, name=name, strict=strict))


def _beir_name(key: str) -> str:
  """"beir/cqadupstack/android" -> "cqadupstack_android" (the collection's name)."""
  return re.sub(r"[^A-Za-z0-9]+", "_", key.split("/", 1)[1])


def beir_corpus(key: str) -> sources.CorpusSource:
  return sources.CorpusSource(beir_collection(data_dir(key), _beir_name(key)))


def beir_queries(key: str, split: str) -> sources.QuerySource:
  collection = beir_collection(data_dir(key), _beir_name(key))
  _require_split(collection, split, data_dir(key))
  return sources.QuerySource(collection, split)


def beir_bm25_train(key: str, split: str, *, depth: int = negatives.DEFAULT_DEPTH
                    ) -> sources.TrainSource:
  collection = beir_collection(data_dir(key), _beir_name(key))
  _require_split(collection, split, data_dir(key))
  groups = negatives.bm25_training_groups(collection, split, depth=depth, cache_dir=cache_dir())
  return sources.TrainSource(collection, groups)


def teacher_key(key: str) -> str:
  """The data key of a BEIR dataset's teacher scores: "beir/scifact" -> "teacher/scifact"."""
  return "teacher/" + key.split("/", 1)[1]


def beir_teacher_train(key: str, split: str) -> sources.TrainSource:
  """Training groups with teacher scores: `TEACHER_FILE` (the hard-negative JSONL with
  `scores` that the teacher-scoring job writes) in the directory of data key "teacher/<name>"
  (ALIGNER_TEACHER_<NAME>_DIR), e.g. {"qid", "pos", "neg", "scores"} per training query."""
  collection = beir_collection(data_dir(key), _beir_name(key))
  _require_split(collection, split, data_dir(key))
  path = os.path.join(data_dir(teacher_key(key)), TEACHER_FILE)
  if not os.path.isfile(path):
    raise DataDirError(f"{path}: no teacher scores (run gin/runs/score_candidates.gin with "
                       f"OUTPUT_DIR there, or point {env_var(teacher_key(key))} elsewhere)")
  log = ProblemLog()
  groups = training_files.read_hard_negatives_jsonl(path, collection, log, teacher_scores=True)
  log.raise_if_any()
  return sources.TrainSource(collection, groups)


def _require_split(collection: Collection, split: str, path: str) -> None:
  if split not in collection.qrels:
    from aligner_jax.data.errors import fail  # pylint: disable=g-import-not-at-top
    raise fail(os.path.join(path, "qrels", f"{split}.tsv"), None,
               f"file not found (splits with qrels here: {', '.join(sorted(collection.qrels))})")


# -- MS MARCO --------------------------------------------------------------------------------


def msmarco_collection(path: str, training: Sequence[msmarco.TrainingFile] = ()) -> Collection:
  path = os.path.abspath(path)
  strict = strict_mode()
  return cached(("msmarco", path, tuple(training), strict), path,
                lambda: msmarco.read_msmarco(path, training=training, strict=strict))


def msmarco_corpus() -> sources.CorpusSource:
  return sources.CorpusSource(msmarco_collection(data_dir("msmarco")))


def msmarco_queries(split: str) -> sources.QuerySource:
  collection = msmarco_collection(data_dir("msmarco"))
  if split not in collection.qrels:
    return sources.QuerySource(_queries_only(collection, split), None)
  return sources.QuerySource(collection, split)


def _queries_only(collection: Collection, split: str) -> Collection:
  """The queries of queries.<split>.tsv when the split has no qrels (e.g. the eval set)."""
  path = os.path.join(data_dir("msmarco"), f"queries.{split}.tsv")
  from aligner_jax.data.collection import new_queries  # pylint: disable=g-import-not-at-top
  from aligner_jax.data.errors import ProblemLog  # pylint: disable=g-import-not-at-top
  log = ProblemLog()
  table = new_queries()
  msmarco.read_id_text_tsv(path, log, table, "query", {})
  log.raise_if_any()
  return Collection(name=collection.name, corpus=collection.corpus, queries=table)


def msmarco_train(fmt: str) -> sources.TrainSource:
  root = data_dir("msmarco")
  training = msmarco.TrainingFile(msmarco.default_training_file(root, fmt), fmt)
  collection = msmarco_collection(root, (training,))
  return sources.TrainSource(collection, collection.training[fmt])


# -- NQ --------------------------------------------------------------------------------------


def nq_collection(path: str) -> Collection:
  path = os.path.abspath(path)
  strict = strict_mode()
  return cached(("nq", path, strict), path, lambda: nq.read_nq(path, strict=strict))


def nq_corpus() -> sources.CorpusSource:
  return sources.CorpusSource(nq_collection(data_dir("nq")))


def nq_queries(split: str) -> sources.QuerySource:
  collection = nq_collection(data_dir("nq"))
  prefix = f"{split}-"
  rows = [r for r, q in enumerate(collection.queries.ids) if q.startswith(prefix)]
  if not rows:
    raise FileNotFoundError(f"{data_dir('nq')}: no questions for split {split!r}")
  source = sources.QuerySource(collection, None)
  source.rows = rows
  return source


def nq_train(split: str) -> sources.TrainSource:
  collection = nq_collection(data_dir("nq"))
  if split not in collection.training:
    raise FileNotFoundError(f"{data_dir('nq')}: no DPR training questions for split {split!r} "
                            f"(biencoder-nq-{split}.json)")
  return sources.TrainSource(collection, collection.training[split])


# -- demo ------------------------------------------------------------------------------------


def demo_collection() -> Collection:
  """The demo collection from ALIGNER_DEMO_DIR, or generated in memory (seed 0) without it."""
  from aligner_jax.data import demo_collection as demo  # pylint: disable=g-import-not-at-top
  try:
    path = os.path.abspath(data_dir("demo"))
  except DataDirError:
    key = ("demo-generated", demo.DEFAULT_SEED)
    return cached(key, "", lambda: demo.generate_collection(demo.DEFAULT_SEED))
  return cached(("demo", path), path, lambda: demo.read_demo(path))


def demo_corpus() -> sources.CorpusSource:
  return sources.CorpusSource(demo_collection())


def demo_queries(split: str) -> sources.QuerySource:
  return sources.QuerySource(demo_collection(), split)


def demo_train(split: str) -> sources.TrainSource:
  collection = demo_collection()
  return sources.TrainSource(collection, collection.training[split])
