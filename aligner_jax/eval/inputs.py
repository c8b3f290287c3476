"""What an evaluation reads: a BEIR split, its encoded queries and corpus, the token index.

Queries and documents are either encoded here with a model (`ModelEncoders`) or read from an
encode job's output directory (corpus shards `corpus-<i>-of-<n>/` in document order, the
per-process stores of earlier versions alike, and `queries-<split>/`; checksums verified),
whose lengths and document ids must match the evaluation's (an error names the directory
otherwise). `SplitData` is one loaded split with both sources behind two methods, so the
evaluators never ask where vectors come from.
"""

import dataclasses
import pathlib
import time
from typing import Any, Callable, Sequence

import numpy as np

from aligner_jax.data.beir import read_beir
from aligner_jax.data.beir import read_split_queries
from aligner_jax.data.collection import Collection
from aligner_jax.data.collection import Table
from aligner_jax.eval import multihost
from aligner_jax.index import IndexConfig
from aligner_jax.index import TokenIndex
from aligner_jax.index import build_token_index
from aligner_jax.index import concatenate
from aligner_jax.index import index_exists
from aligner_jax.index import load_index
from aligner_jax.index import save_index
from aligner_jax.index.files import MANIFEST
from aligner_jax.index.files import IndexFileError
from aligner_jax.index.files import read_json
from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store_io import load_token_store
from aligner_jax.retrieval import QueryBatch
from aligner_jax.retrieval.encoding import Encoder
from aligner_jax.retrieval.encoding import encode_corpus
from aligner_jax.retrieval.encoding import encode_queries
from aligner_jax.retrieval.passages import Passages

Log = Callable[[str], None]
DEMO = "demo"


def print_log(message: str) -> None:
  print(message, flush=True)


@dataclasses.dataclass
class ModelEncoders:
  """What evaluation needs from a model: its vocabulary, the two sides' encoders and, for
  models with a LITE / KNRM head, that head as a re-ranking pair_fn with its fixed lengths."""
  vocabulary: Any
  queries: Encoder
  documents: Encoder
  lite: Callable[..., Any] | None = None
  lite_lengths: tuple[int, int] | None = None
  record: Any = None  # its `encoder_record.EncoderRecord`, kept in the indexes built with it


@dataclasses.dataclass(frozen=True)
class EvalInputs:
  """Where an evaluation's split and vectors come from.

  Attributes:
    beir_dir: a BEIR directory, or "demo" for the built-in demo collection.
    split: the qrels split to evaluate (e.g. "test").
    model: encodes whatever `encoded_dir` does not hold (None: BM25 only).
    encoded_dir: an encode job's output for the same model and lengths, or None.
    doc_length: document length in tokens (framing included).
    query_length: query length in tokens.
    ignore_identical_ids: drop a document whose id is the query's from its run before judging
      (BEIR's convention).
    strict_data: refuse documents with neither title nor text (by default they are kept,
      encoded as their framing tokens only, with a warning in the log); None: the
      `ALIGNER_STRICT_DATA` environment variable decides.
    passages: split documents longer than doc_length into overlapping passages, scored back
      per document (retrieval/passages.py); None cuts them at doc_length.
  """
  beir_dir: str
  split: str
  model: ModelEncoders | None = None
  encoded_dir: str | None = None
  doc_length: int = 256
  query_length: int = 64
  ignore_identical_ids: bool = True
  strict_data: bool | None = None
  passages: Passages | None = None

  def __post_init__(self):
    if self.passages is not None and self.encoded_dir:
      raise ValueError("passages are made at encoding: an evaluation with passages encodes its "
                       "corpus itself (ENCODED_DIR must be None)")


def load_split(beir_dir: str, split: str, *, strict: bool | None = None) -> Collection:
  """The BEIR directory's corpus, queries and `split` qrels; "demo" is the built-in demo
  collection (ALIGNER_DEMO_DIR, or generated in memory). `strict` refuses documents with
  neither title nor text (None: the `ALIGNER_STRICT_DATA` environment variable)."""
  if beir_dir == DEMO:
    from aligner_jax.data import loaders  # pylint: disable=g-import-not-at-top
    collection = loaders.demo_collection()
    if split not in collection.qrels:
      raise ValueError(f"the demo collection has no split {split!r} "
                       f"(has {sorted(collection.qrels)})")
    return collection
  return read_beir(beir_dir, splits=[split], strict=strict)


def log_warnings(collection: Collection, log: Log) -> None:
  """Says what was kept but is worth knowing (e.g. empty documents), with where."""
  empty = collection.corpus.num_empty()
  if empty:
    log(f"warning: {collection.name} has {empty} document(s) with neither title nor text, kept "
        "and encoded as their framing tokens only (STRICT_DATA / ALIGNER_STRICT_DATA=1 refuses "
        "them)")
  if collection.warnings:
    log(str(collection.warnings))


def corpus_documents(beir_dir: str, *, strict: bool | None = None,
                     log: Log = print_log) -> tuple[str, Any]:
  """(name, documents) of a collection's corpus, read a range at a time (`read_rows`):
  `data.beir.CorpusFile` for a BEIR directory (its warnings, e.g. empty documents, are logged;
  `strict` as in `load_split`); the demo collection is in memory anyway."""
  if beir_dir == DEMO:
    from aligner_jax.data import loaders  # pylint: disable=g-import-not-at-top
    collection = loaders.demo_collection()
    return collection.name, collection.corpus
  from aligner_jax.data.beir import CorpusFile  # pylint: disable=g-import-not-at-top
  documents = CorpusFile(pathlib.Path(beir_dir) / "corpus.jsonl", strict=strict)
  if documents.warnings:
    log(f"warning: {documents.warnings}")
  return pathlib.Path(beir_dir).name, documents


def judged_queries(beir_dir: str, split: str) -> Table:
  """The queries judged in `split`, without reading a BEIR corpus."""
  if beir_dir == DEMO:
    collection = load_split(DEMO, split)
    judged = collection.split_queries(split)
    table = Table(metadata=[])
    for q in judged:
      table.add(q, collection.queries.texts[collection.queries.index[q]])
    return table
  return read_split_queries(beir_dir, split)


def encode_split_queries(model: ModelEncoders, collection: Collection, split: str, *,
                         query_length: int, log: Log = print_log,
                         ids: Sequence[str] | None = None) -> QueryBatch:
  """The judged queries of `split` (or those of them in `ids`), encoded with `model`."""
  ids = collection.split_queries(split) if ids is None else list(ids)
  texts = [collection.queries.texts[collection.queries.index[q]] for q in ids]
  log(f"encoding {len(ids)} {split} queries")
  return encode_queries(model.queries, model.vocabulary, ids, texts, max_length=query_length,
                        progress=log)


def encode_collection_corpus(model: ModelEncoders, collection: Collection, *, doc_length: int,
                             vector_dtype: str = "float16", rows: slice = slice(None),
                             log: Log = print_log, passages: Passages | None = None
                             ) -> TokenStore:
  corpus = collection.corpus
  index = range(len(corpus))[rows]
  log(f"encoding {len(index)} documents (max {doc_length} tokens"
      f"{'' if passages is None else ' a passage'})")
  return encode_corpus(model.documents, model.vocabulary, [corpus.ids[i] for i in index],
                       [corpus.text(i) for i in index], max_length=doc_length,
                       vector_dtype=vector_dtype, progress=log, passages=passages,
                       metadata=[corpus.metadata_of(i) for i in index])


def corpus_shards(encoded_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """The complete set of encoded corpus shards (corpus-<i>-of-<n>/) in `encoded_dir`, in
  document order."""
  found = sorted(pathlib.Path(encoded_dir).glob("corpus-*-of-*"))
  if not found:
    raise IndexFileError(encoded_dir, "no encoded corpus shards (corpus-*-of-*) here; "
                         "run the encode job first")
  counts = {p.name.rsplit("-of-", 1)[1] for p in found}
  if len(counts) != 1:
    raise IndexFileError(encoded_dir, f"corpus shards of different layouts mixed "
                         f"({sorted(counts)} shards); remove the directory and encode again")
  count = counts.pop()
  names = {p.name for p in found}
  missing = [f"corpus-{i:05d}-of-{count}" for i in range(int(count))
             if f"corpus-{i:05d}-of-{count}" not in names]
  if missing or len(found) != int(count):
    raise IndexFileError(encoded_dir, f"incomplete set of corpus shards: {len(missing)} of "
                         f"{int(count)} missing, e.g. {missing[:3]} (the encode job has not "
                         "finished: rerun it, it continues where it stopped)")
  return found


def _check_encoded(directory: pathlib.Path, key: str, want: int) -> dict[str, Any]:
  manifest = read_json(pathlib.Path(directory) / MANIFEST)
  config = manifest.get("config", {})
  if config.get(key) != want:
    raise IndexFileError(directory, f"encoded with {key}={config.get(key)!r} but this run asks "
                         f"for {want}; re-encode or set the evaluation length to match")
  return manifest


def _check_order(shards: Sequence[pathlib.Path], manifests: Sequence[dict[str, Any]]) -> None:
  """Shards that record their first document (the encode job's) must follow one another;
  stores of the one-per-process layout of earlier versions record none and load as they are."""
  first = 0
  for shard, manifest in zip(shards, manifests):
    start = manifest.get("config", {}).get("first_document", first)
    if start != first:
      raise IndexFileError(shard, f"starts at document {start} but the shards before it hold "
                           f"{first} documents (shards of different encodings mixed); remove "
                           "the directory and run the encode job again")
    first += int(manifest.get("counts", {}).get("documents", 0))


def load_encoded_corpus(encoded_dir: str | pathlib.Path, collection: Collection, *,
                        doc_length: int, log: Log = print_log) -> TokenStore:
  """The encoded corpus shards of `encoded_dir` (verified) as one store, checked against
  `collection`'s document ids and `doc_length`."""
  t = time.time()
  shards = corpus_shards(encoded_dir)
  _check_order(shards, [_check_encoded(shard, "doc_length", doc_length) for shard in shards])
  store = concatenate([load_token_store(p) for p in shards])
  if sorted(store.doc_ids) != sorted(collection.corpus.ids):
    raise IndexFileError(encoded_dir, f"the encoded corpus holds {store.num_docs} documents "
                         f"that are not the {len(collection.corpus)} of {collection.name}")
  log(f"read {store.num_docs} encoded documents from {encoded_dir} in {time.time() - t:.1f}s")
  return store


def load_encoded_queries(directory: str | pathlib.Path, query_ids: Sequence[str], *,
                         query_length: int) -> QueryBatch:
  """The encoded queries in `directory` (queries-<split>/, verified) as a padded batch in the
  order of `query_ids`."""
  directory = pathlib.Path(directory)
  _check_encoded(directory, "query_length", query_length)
  store = load_token_store(directory)
  row = {q: i for i, q in enumerate(store.doc_ids)}
  missing = [q for q in query_ids if q not in row]
  if missing:
    raise IndexFileError(directory, f"{len(missing)} queries were not encoded, e.g. {missing[:3]}")
  rows = np.array([row[q] for q in query_ids], np.int64)
  g = store.gather_padded(rows, max(1, int(store.lengths[rows].max(initial=0))))
  return QueryBatch(list(query_ids), g["vectors"], g["mask"], g.get("salience"),
                    g.get("token_ids"), None if store.pooled is None else store.pooled[rows])


def _check_config(index_dir: str, found: IndexConfig, config: IndexConfig) -> None:
  for field in ("backend", "prune_doc_ratio", "vector_dtype", "refine_tokens"):
    if getattr(found, field) != getattr(config, field):
      raise ValueError(f"{index_dir}: the existing index has {field}={getattr(found, field)!r} "
                       f"but this run asks for {getattr(config, field)!r}; set "
                       "REBUILD_INDEX=True (or another INDEX_DIR) to rebuild it")


def _load(index_dir: str, config: IndexConfig, *, verify: bool, log: Log) -> TokenIndex:
  t = time.time()
  index = load_index(index_dir, verify=verify)
  _check_config(index_dir, index.config, config)
  checked = "SHA-256 of every file verified" if verify else "files checked against manifests"
  log(f"loaded index {index_dir}: {index.num_docs} documents, {index.num_ann_tokens} "
      f"searched tokens in {len(index.shards)} memory-mapped shard(s), {checked}, in "
      f"{time.time() - t:.1f}s")
  return index


def _build(index_dir: str | None, config: IndexConfig, corpus_fn: Callable[[], TokenStore],
           log: Log, encoder: dict[str, Any] | None) -> TokenIndex:
  store = corpus_fn()
  t = time.time()
  log(f"building {config.backend} index over {store.num_tokens} tokens (β^d = "
      f"{config.prune_doc_ratio})")
  index = build_token_index(store, config)
  log(f"built {len(index.shards)} shard(s), {index.num_ann_tokens} searched tokens, in "
      f"{time.time() - t:.1f}s")
  if index_dir:
    info = save_index(index, index_dir, encoder=encoder)
    log(f"saved {index_dir}: {info['total_bytes'] / 2**20:.1f} MiB, "
        f"{info['bytes_per_original_token']:.1f} bytes per original token")
  return index


def obtain_index(index_dir: str | None, config: IndexConfig, *, rebuild: bool,
                 corpus_fn: Callable[[], TokenStore], log: Log = print_log,
                 verify: bool = False, encoder: dict[str, Any] | None = None) -> TokenIndex:
  """The index in `index_dir`, its shards memory-mapped after their files are checked against
  their manifests (`verify`: SHA-256 of every file too); or, when there is none (or
  `rebuild`), the index built from `corpus_fn()` and saved there with the `encoder` record
  (`encoder_record`) in its `index.json`.

  With several processes, process 0 decides whether to load or build, builds (and saves) or
  verifies alone, and the others then load what it saved, so `index_dir` is required.
  """
  here, count = multihost.process()
  if count > 1 and not index_dir:
    raise ValueError("with several processes, INDEX_DIR must be set: process 0 builds the "
                     "index once and the other processes load it from there")
  existing = multihost.broadcast_flag(bool(index_dir) and index_exists(index_dir)
                                      and not rebuild)
  if existing:
    return _load(index_dir, config, verify=verify and here == 0, log=log)
  index = _build(index_dir, config, corpus_fn, log, encoder) if here == 0 else None
  multihost.barrier("aligner_jax_index_built")
  return index if index is not None else _load(index_dir, config, verify=False, log=log)


@dataclasses.dataclass
class SplitData:
  """One loaded split: the collection, its judged queries, and where vectors come from.

  `part` = (p, P): this process retrieves the p-th of P slices of the judged queries
  (`multihost.query_slice`); `query_ids` are those, `judged_ids` all of them.
  """
  inputs: EvalInputs
  collection: Collection
  log: Log = print_log
  part: tuple[int, int] = (0, 1)

  @classmethod
  def load(cls, inputs: EvalInputs, log: Log = print_log,
           part: tuple[int, int] = (0, 1)) -> "SplitData":
    collection = load_split(inputs.beir_dir, inputs.split, strict=inputs.strict_data)
    data = cls(inputs, collection, log, part)
    log(f"{collection.name}/{inputs.split}: {len(collection.corpus)} documents, "
        f"{len(data.judged_ids)} judged queries")
    log_warnings(collection, log)
    return data

  @property
  def judged_ids(self) -> list[str]:
    return self.collection.split_queries(self.inputs.split)

  @property
  def query_ids(self) -> list[str]:
    """The judged queries this process retrieves."""
    judged = self.judged_ids
    return judged[multihost.query_slice(len(judged), *self.part)]

  def query_texts(self) -> list[str]:
    queries = self.collection.queries
    return [queries.texts[queries.index[q]] for q in self.query_ids]

  def corpus_store(self, vector_dtype: str = "float16") -> TokenStore:
    """The encoded corpus; product-quantised codes are trained later by the index build (after
    pruning, on the kept tokens), so a `pq:M` request is held as float16 until then."""
    vector_dtype = "float16" if vector_dtype.startswith("pq:") else vector_dtype
    inputs = self.inputs
    if inputs.encoded_dir:
      return load_encoded_corpus(inputs.encoded_dir, self.collection,
                                 doc_length=inputs.doc_length,
                                 log=self.log).with_vector_dtype(vector_dtype)
    return encode_collection_corpus(inputs.model, self.collection, doc_length=inputs.doc_length,
                                    vector_dtype=vector_dtype, log=self.log,
                                    passages=inputs.passages)

  def queries(self) -> QueryBatch:
    """The judged queries, read from `encoded_dir` when that split was encoded there."""
    inputs = self.inputs
    stored = pathlib.Path(inputs.encoded_dir or "") / f"queries-{inputs.split}"
    if inputs.encoded_dir and stored.is_dir():
      self.log(f"reading {len(self.query_ids)} encoded {inputs.split} queries from {stored}")
      return load_encoded_queries(stored, self.query_ids, query_length=inputs.query_length)
    return encode_split_queries(inputs.model, self.collection, inputs.split,
                                query_length=inputs.query_length, log=self.log,
                                ids=self.query_ids)
