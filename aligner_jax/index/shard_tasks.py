"""An index build as independent per-shard tasks: plan, build one shard, skip finished ones.

`plan_tasks` turns the encoded corpus shards (`corpus-<i>-of-<n>/` token stores, in document
order) into a list of small picklable `ShardTask`s: each names one encoded shard, the range of
its documents that becomes one index shard (split by `IndexConfig.max_shard_tokens` exactly as
`token_index.split_documents` splits a store in memory), the index shard's directory name and
its first global document. Planning reads only each encoded shard's manifest and offsets.

`build_task` turns one task into one index shard directory: it verifies the encoded shard's
checksums, maps its arrays read-only (`files.load_array`, so only the pages of this task's
documents are read), and builds and saves the shard with the same `build_shard` / `save_shard`
as the in-memory `build_token_index` / `save_index`, so both write the same bytes. A task is
idempotent: when its directory already holds a shard whose manifest verifies, whose index
settings equal the config and whose `source_sha256` equals the content digest of the task's
documents, it is kept as it is. That is what lets a build killed at any moment continue where
it stopped, on one machine or on many (`eval/index_build.py`, `eval/beam_index.py`).

Global document numbering follows the task order: task t's documents come after those of
tasks 0 … t-1, as shards of an index do.
"""

import ctypes
import dataclasses
import gc
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from aligner_jax.index import files
from aligner_jax.index.token_index import SHARD_KIND
from aligner_jax.index.token_index import VERSION
from aligner_jax.index.token_index import IndexConfig
from aligner_jax.index.token_index import build_shard
from aligner_jax.index.token_index import document_groups
from aligner_jax.index.token_index import listing_entry
from aligner_jax.index.token_index import save_shard
from aligner_jax.index.token_index import shard_dir_name
from aligner_jax.index.token_index import slice_documents
from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store import content_sha256
from aligner_jax.index.token_store_io import KIND as STORE_KIND
from aligner_jax.index.token_store_io import load_token_store

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class ShardTask:
  """One index shard to build: documents [start, stop) of the encoded shard `source`.

  Attributes:
    position: the index shard's place in the index (its directory is `shard_dir_name`).
    source: the encoded token-store directory.
    start, stop: the range of the source's documents.
    first_document: the global number of the shard's first document.
  """
  position: int
  source: str
  start: int
  stop: int
  first_document: int

  @property
  def name(self) -> str:
    return shard_dir_name(self.position)

  @property
  def num_documents(self) -> int:
    return self.stop - self.start


def _store_manifest(directory: pathlib.Path) -> dict[str, Any]:
  manifest = files.read_json(directory / files.MANIFEST)
  if (not isinstance(manifest, dict) or manifest.get("kind") != STORE_KIND or
      not isinstance(manifest.get("counts"), dict)):
    raise files.IndexFileError(directory / files.MANIFEST, f"not a {STORE_KIND!r} manifest "
                               "(expected an encoded corpus shard)")
  return manifest


def document_lengths(directory: str | pathlib.Path) -> np.ndarray:
  """[N] stored tokens per document of an encoded shard, from its manifest and offsets."""
  directory = pathlib.Path(directory)
  counts = _store_manifest(directory)["counts"]
  try:
    n, t = int(counts["documents"]), int(counts["tokens"])
  except (KeyError, TypeError, ValueError) as e:
    raise files.IndexFileError(directory / files.MANIFEST, f"malformed counts ({e})") from None
  offsets = np.asarray(files.load_array(directory, "offsets.npy", dtype=np.int64, shape=(n + 1,)))
  if n and (offsets[0] != 0 or offsets[-1] != t or np.any(np.diff(offsets) < 0)):
    raise files.IndexFileError(directory / "offsets.npy", f"offsets must rise from 0 to the "
                               f"manifest's {t} tokens")
  return np.diff(offsets)


def plan_tasks(sources: Sequence[str | pathlib.Path], config: IndexConfig) -> list[ShardTask]:
  """The tasks of an index over the encoded shards `sources` (in document order)."""
  tasks, first = [], 0
  for source in sources:
    lengths = document_lengths(source)
    if not len(lengths):
      raise files.IndexFileError(source, "encoded shard without documents")
    for start, stop in document_groups(lengths, config.max_shard_tokens,
                                       config.prune_doc_ratio):
      tasks.append(ShardTask(len(tasks), str(source), start, stop, first + start))
    first += len(lengths)
  return tasks


def open_store(directory: str | pathlib.Path) -> TokenStore:
  """An encoded shard whose checksums verify, with its arrays memory-mapped read-only."""
  return load_token_store(directory)


def current_manifest(directory: pathlib.Path, config: IndexConfig, source_sha256: str,
                     log: Log) -> dict[str, Any] | None:
  """The manifest of a finished shard in `directory` built with `config` from documents of
  digest `source_sha256`; None (with a log line naming it and why) when it must be built."""
  if not directory.exists():
    return None
  try:
    manifest = files.verify_dir(directory, kind=SHARD_KIND, version=VERSION)
    found = manifest["config"]
    built_with = IndexConfig.from_json(found["index"])
  except (files.IndexFileError, KeyError, TypeError, ValueError) as e:
    log(f"rebuilding {directory}: not a complete index shard ({e})")
    return None
  if built_with != config:
    log(f"rebuilding {directory}: built with other index settings ({built_with})")
    return None
  if found.get("source_sha256") != source_sha256:
    log(f"rebuilding {directory}: built from other documents (source digest "
        f"{str(found.get('source_sha256'))[:12]}…, these are {source_sha256[:12]}…)")
    return None
  return manifest


def release_freed_memory() -> None:
  """Hands what a finished task freed back to the system before the next task starts: objects
  in reference cycles are collected now instead of during the next task, and glibc returns
  the free pages of its heaps (`malloc_trim`), so one task's leftovers do not add to the next
  task's peak (measured in bench/README.md, "Scaling")."""
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc: its allocator keeps its own policy
    pass


def build_task(task: ShardTask, config: IndexConfig, out_dir: str | pathlib.Path,
               log: Log = print) -> dict[str, Any]:
  """Builds `task`'s shard into `out_dir / task.name` unless it is there already (module
  docstring); returns its `index.json` entry plus "position", "first_document" and "built"."""
  out_dir = pathlib.Path(out_dir)
  target = out_dir / task.name
  store = slice_documents(open_store(task.source), task.start, task.stop)
  digest = content_sha256(store)
  built = current_manifest(target, config, digest, log) is None
  if built:
    save_shard(build_shard(store, config, source_sha256=digest), target, config)
    log(f"built {target.name}: documents {task.first_document}…"
        f"{task.first_document + task.num_documents - 1} from {pathlib.Path(task.source).name}")
  del store
  release_freed_memory()
  entry = listing_entry(out_dir, task.name)
  return {**entry, "position": task.position, "first_document": task.first_document,
          "built": built}
