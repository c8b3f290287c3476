"""Text in, ranked documents out: a token index searched with the encoder that built it.

  searcher = Searcher.open("runs/index")                 # the encoder the index records
  searcher.search("what reduces inflammation?", k=10)    # [(doc_id, score), ...]
  searcher.search(["query one", "query two"], filter={"d1", "d7"})
  searcher.add([{"_id": "new1", "title": "...", "text": "...", "metadata": {...}}])
  searcher.delete(["d7"])

`open` reads the index's encoder record (`eval.encoder_record`: which model, vocabulary,
lengths, normalisation and search defaults built it), loads that model (or the one given,
which must be the same encoder: another is an `EncoderMismatchError`), and maps the index's
current generation. `search` encodes the queries with the model's query encoder (jitted, the
evaluation's `Encoder`), selects candidates through the token index (`retrieval.
candidate_documents`, restricted to the filter's `allowed` documents) and refines them with
the alignment (`retrieval.refine`, any spec `scoring.Alignment.parse` accepts): the evaluation's
own path, so a search gives the evaluation's run.

Threads: any number of threads may search one `Searcher` at once. A search works on the
generation it started with (an immutable snapshot taken under the lock); `reload`, `add` and
`delete` swap in a new generation under the lock, so a search sees one generation or the
other, never a mix. Writers of one index are serialised by the index's own lock
(`index.generations`), across processes too.
"""

import dataclasses
import pathlib
import threading
from typing import Any, Iterable, Sequence

import numpy as np

from aligner_jax.eval.encoder_record import EncoderRecord
from aligner_jax.eval.encoder_record import check_same_encoder
from aligner_jax.eval.encoder_record import make_record
from aligner_jax.eval.inputs import ModelEncoders
from aligner_jax.eval.model_loading import LoadedModel
from aligner_jax.eval.model_loading import ModelLoadError
from aligner_jax.eval.model_loading import has_trained_checkpoint
from aligner_jax.eval.model_loading import load_model
from aligner_jax.eval.retrieval_jobs import model_encoders
from aligner_jax.index import TokenIndex
from aligner_jax.index import TokenStore
from aligner_jax.index import load_index
from aligner_jax.index import token_index
from aligner_jax.index.files import IndexFileError
from aligner_jax.index.generations import add_documents
from aligner_jax.index.generations import current_generation
from aligner_jax.index.generations import delete_documents
from aligner_jax.models import description
from aligner_jax.models.hf_import import CheckpointError
from aligner_jax.retrieval import candidate_documents
from aligner_jax.retrieval import refine
from aligner_jax.retrieval.encoding import encode_corpus
from aligner_jax.retrieval.encoding import encode_queries
from aligner_jax.scoring import Alignment
from aligner_jax.search import filters as filters_lib
from aligner_jax.search.documents import parse_documents

# First-stage defaults for an index whose record has none (the evaluation's own defaults).
SEARCH_DEFAULTS = {"num_neighbors": 4000, "num_refine": None, "leaves_to_search": None,
                   "prune_query_ratio": 1.0}
Model = str | pathlib.Path | tuple[Any, Any] | None
Results = list[tuple[str, float]]


def read_record(index_dir: str | pathlib.Path) -> EncoderRecord:
  """The encoder record of the index in `index_dir`.

  Raises:
    IndexFileError: when there is no index, or it records no encoder (built before encoder
      records, or from stores encoded without one: rebuild it with the encode / index jobs).
  """
  record = token_index.read_encoder(index_dir)
  if record is None:
    raise IndexFileError(pathlib.Path(index_dir) / token_index.INDEX_JSON,
                         "the index records no encoder, so text cannot be searched in it "
                         "(rebuild it with this version's encode and index jobs or evaluation)")
  return EncoderRecord.from_json(record, pathlib.Path(index_dir) / token_index.INDEX_JSON)


def _load_params(module: Any, model: Model, record: EncoderRecord, index_dir: str
                 ) -> LoadedModel:
  """`model`'s parameters for the recorded module (None: the recorded source's)."""
  if isinstance(model, tuple):
    return model if isinstance(model, LoadedModel) else LoadedModel(*model, {"kind": "given"})
  if model is None:
    source = record.params_source
    path, kind = source.get("path"), source.get("kind")
    if kind == "trained":
      return load_model(module, model_dir=path, step=source.get("step"))
    if kind == "pretrained":
      return load_model(module, checkpoint_path=path)
    raise ModelLoadError(f"{index_dir}: the index's encoder came from {source}, which cannot be "
                         "loaded again; give the model (model=...)")
  path = str(model)
  if has_trained_checkpoint(path):
    return load_model(module, model_dir=path)
  return load_model(module, checkpoint_path=path)


@dataclasses.dataclass(frozen=True)
class _Snapshot:
  """One generation of the index, as every search that starts now sees it."""
  index: TokenIndex
  generation: int


class Searcher:
  """See the module docstring. Build with `Searcher.open`."""

  def __init__(self, index_dir: pathlib.Path, record: EncoderRecord, encoders: ModelEncoders,
               index: TokenIndex, search_settings: dict[str, Any]):
    self.index_dir = index_dir
    self.record = record
    self.encoders = encoders
    self.search_settings = search_settings
    self._lock = threading.RLock()
    self._snapshot = _Snapshot(index, index.generation)

  @classmethod
  def open(cls, index_dir: str | pathlib.Path, model: Model = None, *,
           batch_size: int = 32, verify: bool = False, **search: Any) -> "Searcher":
    """The searcher of the index in `index_dir`.

    Args:
      index_dir: an index that records its encoder (built by the encode and index jobs, or by
        an evaluation that built it).
      model: None (the recorded model), a trained model directory (MODEL_DIR with
        checkpoints), a Hugging Face / sentence-transformers / ColBERT directory, or a
        (module, params) pair; it must be the encoder that built the index.
      batch_size: queries (and added documents) encoded per batch.
      verify: compare every file's SHA-256 with the manifests when loading the index.
      **search: first-stage settings overriding the recorded ones: num_neighbors (K′),
        num_refine (R), leaves_to_search, prune_query_ratio (β^q).

    Raises:
      IndexFileError: the index is missing, damaged or records no encoder.
      EncoderMismatchError: `model` is not the encoder that built the index.
    """
    index_dir = pathlib.Path(index_dir)
    record = read_record(index_dir)
    unknown = sorted(set(search) - set(SEARCH_DEFAULTS))
    if unknown:
      raise TypeError(f"unknown search settings {unknown} (known: {sorted(SEARCH_DEFAULTS)})")
    settings = {**SEARCH_DEFAULTS, **record.search, **search}
    source = f"{index_dir / token_index.INDEX_JSON}"
    module = description.from_description(record.model, source=source)
    shown = "the recorded model" if model is None else repr(str(model)) if not isinstance(
        model, tuple) else "the given (module, params)"
    try:
      loaded = _load_params(module, model, record, str(index_dir))
    except (ModelLoadError, CheckpointError) as e:
      raise ModelLoadError(f"{index_dir}: cannot load {shown} as the encoder of this index: "
                           f"{e}") from None
    mine = make_record(loaded, record.vocabulary, query_length=record.query_length,
                       doc_length=record.doc_length)
    check_same_encoder(record, mine, index=str(index_dir), model=shown)
    encoders = model_encoders(loaded[0], loaded[1], record.vocabulary, batch_size=batch_size,
                              local=True)
    index = load_index(index_dir, verify=verify)
    if index.dim != record.dim:
      raise IndexFileError(source, f"the index holds {index.dim}-dimensional tokens but its "
                           f"encoder record says {record.dim}")
    return cls(index_dir, record, encoders, index, settings)

  # -- reading ------------------------------------------------------------------------------

  @property
  def index(self) -> TokenIndex:
    """The generation searches use now."""
    with self._lock:
      return self._snapshot.index

  @property
  def generation(self) -> int:
    with self._lock:
      return self._snapshot.generation

  def search(self, queries: str | Sequence[str], k: int = 10, alignment: str | None = None,
             filter: filters_lib.Filter = None  # noqa: A002 (the documented name)
             ) -> Results | list[Results]:
    """The k best documents of each query, best first, as (doc_id, score) pairs.

    Args:
      queries: one query text (one list back) or a list of them (a list of lists back).
      k: results per query (fewer only when fewer documents are live and allowed).
      alignment: the refinement alignment spec (None: the index's recorded default).
      filter: see `filters.allowed_mask`: None, a set of document ids, or a predicate over a
        document's metadata dict.
    """
    single = isinstance(queries, str)
    texts = [queries] if single else list(queries)
    if not all(isinstance(t, str) for t in texts):
      raise TypeError("queries must be a string or a list of strings")
    if k < 1:
      raise ValueError(f"k must be positive, got {k}")
    spec = Alignment.parse(alignment or self.record.alignment)
    with self._lock:
      snapshot = self._snapshot
    index = snapshot.index
    if not texts:
      return []
    allowed = filters_lib.allowed_mask(index, filter)
    batch = encode_queries(self.encoders.queries, self.encoders.vocabulary,
                           [f"q{i}" for i in range(len(texts))], texts,
                           max_length=self.record.query_length)
    settings = self.search_settings
    options = ({} if settings["leaves_to_search"] is None
               else {"leaves_to_search": settings["leaves_to_search"]})
    candidates = candidate_documents(
        index, batch, num_neighbors=settings["num_neighbors"],
        prune_query_ratio=settings["prune_query_ratio"], num_refine=settings["num_refine"],
        allowed=allowed, min_candidates=k, **options)
    refined = refine(index, batch, candidates, spec, top_n=k)
    results = [[(index.doc_ids[int(d)], float(s)) for d, s in zip(docs, scores)]
               for docs, scores in refined]
    return results[0] if single else results

  def metadata(self, doc_id: str) -> dict[str, Any]:
    """The stored metadata of a live document ({} when it has none)."""
    index = self.index
    rows = np.flatnonzero(index.document_mask([doc_id]))
    if not len(rows):
      raise KeyError(f"no live document {doc_id!r} in {self.index_dir}")
    return index.metadata(int(rows[0]))

  # -- generations --------------------------------------------------------------------------

  def reload(self) -> bool:
    """Loads the index's current generation when it is another than the one searched (a
    change published by any process); returns whether it did. An index rebuilt from scratch
    starts again at generation 0: open it anew."""
    with self._lock:
      if current_generation(self.index_dir) == self._snapshot.generation:
        return False
      index = load_index(self.index_dir)
      self._snapshot = _Snapshot(index, index.generation)
      return True

  def encode_texts(self, doc_ids: Sequence[str], texts: Sequence[str],
                   metadata: Sequence[dict[str, Any]] | None = None) -> TokenStore:
    """Documents (texts as the encoder reads them) encoded as the index's documents were:
    its document length and vector format (PQ codes are trained when a shard is built, so
    those are held as float16 until then), with their metadata."""
    dtype = self.index.config.vector_dtype
    return encode_corpus(self.encoders.documents, self.encoders.vocabulary, doc_ids, texts,
                         max_length=self.record.doc_length,
                         vector_dtype="float16" if dtype.startswith("pq:") else dtype,
                         metadata=metadata)

  def encode_documents(self, documents: Iterable[Any]) -> tuple[TokenStore, list[dict]]:
    """BEIR dicts or (id, text) pairs (`documents.parse_documents`) encoded by `encode_texts`,
    with their metadata dicts."""
    docs = parse_documents(documents)
    return self.encode_texts(docs.ids, docs.texts, docs.metadata), docs.metadata

  def add(self, documents: Iterable[Any]) -> int:
    """Encodes `documents` (BEIR dicts or (id, text) pairs) and adds them to the index as a new
    generation (an id already in the index is updated); searches started afterwards see them.
    Returns the new generation."""
    store, metadata = self.encode_documents(documents)
    # The index's writer lock serialises writers; searches go on with the old generation.
    generation = add_documents(self.index_dir, store, metadata, log=lambda _: None)
    self.reload()
    return generation

  def delete(self, doc_ids: Iterable[str], *, missing: str = "error") -> int:
    """Deletes documents by id as a new generation (`missing`: "error" refuses unknown ids,
    "ignore" skips them); returns the new generation."""
    if isinstance(doc_ids, str):
      raise TypeError("delete takes a list of document ids, not one string")
    generation = delete_documents(self.index_dir, list(doc_ids), missing=missing)
    self.reload()
    return generation
