"""A corpus encoded into store shards of bounded size: resumable, for any number of processes.

The N documents of a corpus are cut into shards of `shard_documents` consecutive documents
(`ShardPlan`): shard i holds documents [i·S, min((i+1)·S, N)) and is the token store
`corpus-<i>-of-<n>/` (`index.token_store_io`), whose manifest records the shard's place
(`shard`, `shards`, `first_document`, `shard_documents`) and the settings that made it
(dataset, lengths, vector format, a fingerprint of the model's parameters). Names and bytes
depend only on the corpus and those settings, so the same corpus encoded by one process or by
several yields the same files.

Process p of P encodes the shards i with i mod P = p on its own devices (an `Encoder` over a
mesh of local devices: no collective with the other processes), so processes may run at
different speeds or be restarted one at a time. A shard is read, tokenised, encoded and written
(atomically) in one go: memory holds one shard at a time, its texts, token ids and stored
vectors, never the corpus. A rerun skips each shard whose manifest verifies and whose settings
and document ids match, so `kill -9` loses at most the shard in progress; a shard written with
other settings is an error naming it, never silently mixed in.
"""

import dataclasses
import hashlib
import math
import pathlib
import re
import time
from typing import Any, Callable, Protocol, Sequence

import jax
import numpy as np

from aligner_jax.index import files
from aligner_jax.index.token_store_io import KIND
from aligner_jax.index.token_store_io import VERSION
from aligner_jax.index.token_store_io import save_token_store
from aligner_jax.index.token_store_io import shard_name
from aligner_jax.io import remove_leftovers
from aligner_jax.retrieval.encoding import Encoder
from aligner_jax.retrieval.encoding import encode_corpus

PREFIX = "corpus"
_NAME = re.compile(rf"^{PREFIX}-(\d+)-of-(\d+)$")
Log = Callable[[str], None]


class DocumentSource(Protocol):
  """Documents read a range at a time (`data.beir.CorpusFile`, `data.collection.Table`)."""

  def __len__(self) -> int:
    ...

  def read_rows(self, rows: range, *, with_metadata: bool = False) -> tuple[list, ...]:
    """(ids, texts) of documents `rows`, and with `with_metadata` their metadata dicts."""


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  """Which documents each shard holds and which process encodes it."""
  num_documents: int
  shard_documents: int

  def __post_init__(self):
    if self.shard_documents < 1:
      raise ValueError(f"shard_documents must be at least 1, got {self.shard_documents}")
    if self.num_documents < 1:
      raise ValueError("no documents to encode")

  @property
  def num_shards(self) -> int:
    return math.ceil(self.num_documents / self.shard_documents)

  def rows(self, shard: int) -> range:
    start = shard * self.shard_documents
    return range(start, min(start + self.shard_documents, self.num_documents))

  def name(self, shard: int) -> str:
    return shard_name(PREFIX, shard, self.num_shards)

  def owned(self, process_index: int, process_count: int) -> list[int]:
    """The shards process `process_index` of `process_count` encodes (every P-th one, so
    shards of similar position, and cost, spread over the processes)."""
    return list(range(process_index, self.num_shards, process_count))

  def config(self, shard: int) -> dict[str, int]:
    """The shard's place, recorded in its manifest."""
    return {"shard": shard, "shards": self.num_shards, "shard_documents": self.shard_documents,
            "first_document": self.rows(shard).start}


def params_fingerprint(params: Any) -> str:
  """SHA-256 over every parameter's path, dtype, shape and bytes: which model made a store."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                           key=lambda item: jax.tree_util.keystr(item[0])):
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def check_layout(out_dir: pathlib.Path, plan: ShardPlan) -> None:
  """Refuses an output directory holding corpus shards of another layout (another shard size
  or corpus, or the one-store-per-process layout of earlier versions)."""
  others = sorted(p.name for p in out_dir.glob(f"{PREFIX}-*-of-*")
                  if _NAME.match(p.name) and int(_NAME.match(p.name).group(2)) != plan.num_shards)
  if others:
    raise files.IndexFileError(out_dir, f"holds corpus shards of another layout ({others[0]}, "
                               f"…) but this run writes {plan.num_shards} shards of "
                               f"{plan.shard_documents} documents; remove them (or choose "
                               "another output directory) to re-encode")


def store_is_current(directory: pathlib.Path, config: dict[str, Any], ids: Sequence[str],
                     log: Log) -> bool:
  """Whether `directory` is a verified store made with `config` holding `ids`.

  False when it is missing or fails verification (a crash can leave neither, since stores are
  written atomically, but a damaged file is re-encoded); an `IndexFileError` when it verifies
  but was made with other settings or other documents.
  """
  if not directory.exists():
    return False
  try:
    manifest = files.verify_dir(directory, kind=KIND, version=VERSION)
  except files.IndexFileError as e:
    log(f"re-encoding {directory.name}: {e}")
    return False
  found = manifest["config"]
  for key, want in sorted(config.items()):
    if found.get(key) != want:
      raise files.IndexFileError(directory / files.MANIFEST, f"encoded with {key}="
                                 f"{found.get(key)!r} but this run asks for {want!r}; remove "
                                 "it (or choose another output directory) to re-encode")
  if files.read_json(directory / "doc_ids.json") != list(ids):
    raise files.IndexFileError(directory / "doc_ids.json", "holds other documents than this "
                               "run's (the corpus changed); remove it to re-encode")
  return True


def encode_corpus_shards(encoder: Encoder, vocabulary: Any, source: DocumentSource,
                         out_dir: str | pathlib.Path, plan: ShardPlan, *, shards: Sequence[int],
                         config: dict[str, Any], max_length: int,
                         vector_dtype: str = "float16",
                         log: Log = print) -> dict[str, Any]:
  """Encodes `shards` of `plan` into `out_dir`, skipping the finished ones (module docstring).

  Args:
    encoder: the document encoder, over a mesh of this process's devices.
    vocabulary: the model's vocabulary.
    source: the corpus, `plan.num_documents` documents.
    out_dir: where `corpus-<i>-of-<n>/` go.
    plan: the shard layout.
    shards: the shards to encode here (`plan.owned(...)`).
    config: settings recorded in every manifest and checked on a rerun (JSON values).
    max_length: document length in tokens (framing included).
    vector_dtype: the stored vector format.
    log: progress lines.

  Returns:
    {"encoded": shard numbers encoded now, "skipped": those already finished, "documents",
    "tokens": totals over both}.
  """
  if len(source) != plan.num_documents:
    raise ValueError(f"the plan is for {plan.num_documents} documents, the source has "
                     f"{len(source)}")
  out_dir = pathlib.Path(out_dir)
  check_layout(out_dir, plan)
  config = {**config, "doc_length": max_length, "vector_dtype": vector_dtype}
  done: dict[str, Any] = {"encoded": [], "skipped": [], "documents": 0, "tokens": 0}
  start = time.time()
  for position, shard in enumerate(shards):
    directory = out_dir / plan.name(shard)
    shard_config = {**config, **plan.config(shard)}
    ids, texts, metadata = source.read_rows(plan.rows(shard), with_metadata=True)
    if store_is_current(directory, shard_config, ids, log):
      done["skipped"].append(shard)
      counts = files.read_json(directory / files.MANIFEST)["counts"]
    else:
      t = time.time()
      remove_leftovers(directory)  # what a killed run left; this process alone writes the shard
      store = encode_corpus(encoder, vocabulary, ids, texts, max_length=max_length,
                            vector_dtype=vector_dtype, metadata=metadata)
      del texts, metadata
      counts = save_token_store(store, directory, **shard_config)["counts"]
      del store
      done["encoded"].append(shard)
      rate = len(ids) / max(time.time() - t, 1e-9)
      left = (time.time() - start) / (position + 1) * (len(shards) - position - 1)
      log(f"wrote {directory.name}: {len(ids)} documents, {counts['tokens']} tokens "
          f"({rate:.1f} documents/s); {position + 1}/{len(shards)} shards of this process, "
          f"~{left / 60:.0f} min left")
    done["documents"] += int(counts["documents"])
    done["tokens"] += int(counts["tokens"])
  return done
