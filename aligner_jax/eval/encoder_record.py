"""Which encoder built an index: the record an index keeps so that text can be searched in it.

The record says which model encoded the documents and how: the module's token-encoding
architecture (`models.description`), where its parameters come from (a trained MODEL_DIR and
step, or a pretrained checkpoint such as a Hugging Face directory) with the SHA-256 of those
parameters, the vocabulary (name and SHA-256 of its file), the query and document lengths in
tokens, the token width and normalisation, and the defaults of the run that built the index:
its alignment and first-stage settings (K′, R, ScaNN leaves, β^q).

Where it lives: `index.json` under "encoder", with its SHA-256 (`index.token_index.index_info`,
`read_encoder`); an encode job writes it to ENCODED_DIR/encoder.json (atomically) and the index
job copies it into the index it publishes; an evaluation that builds its index records its own
model and settings. Queries must be encoded by the same encoder as the documents:
`check_same_encoder` names every difference.
"""

import dataclasses
import pathlib
from typing import Any

from aligner_jax.data.vocab import vocabulary_path
from aligner_jax.eval.model_loading import LoadedModel
from aligner_jax.eval.model_loading import abstract_params
from aligner_jax.eval.model_loading import fit_params
from aligner_jax.index.files import IndexFileError
from aligner_jax.index.files import read_json
from aligner_jax.index.files import sha256_file
from aligner_jax.models import description
from aligner_jax.retrieval.corpus_shards import params_fingerprint

VERSION = 1
ENCODED_RECORD = "encoder.json"  # in an encode job's ENCODED_DIR
# Fields that must agree for queries to be encoded as the documents were.
IDENTITY = ("model", "params_sha256", "vocabulary_sha256", "query_length", "doc_length", "dim",
            "normalize_vectors")


class EncoderMismatchError(ValueError):
  """Queries would be encoded by another encoder than the index's documents."""


@dataclasses.dataclass(frozen=True)
class EncoderRecord:
  """See the module docstring.

  Attributes:
    model: `models.description.describe` of the DualEncoder.
    params_source: {"kind": "trained", "path": MODEL_DIR, "step": N} or {"kind":
      "pretrained", "path": checkpoint} (`model_loading.LoadedModel.source`).
    params_sha256: `params_fingerprint` of the parameters the described module uses.
    vocabulary: the vocabulary's name ("minilm", "t5_1_1") or path, as `get_vocabulary` takes.
    vocabulary_sha256: SHA-256 of the vocabulary's file.
    query_length, doc_length: tokens per query / document, framing included.
    dim: h, the width of the token vectors.
    normalize_vectors: whether token vectors are L2-normalised.
    alignment: the default alignment spec of searches.
    search: default first-stage settings: num_neighbors, num_refine, leaves_to_search,
      prune_query_ratio (those absent take the searcher's defaults).
  """
  model: dict[str, Any]
  params_source: dict[str, Any]
  params_sha256: str
  vocabulary: str
  vocabulary_sha256: str
  query_length: int
  doc_length: int
  dim: int
  normalize_vectors: bool
  alignment: str = "top_k:1"
  search: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    return {"version": VERSION, **dataclasses.asdict(self)}

  @classmethod
  def from_json(cls, obj: Any, source: str | pathlib.Path) -> "EncoderRecord":
    """The record of `obj`; an `IndexFileError` naming `source` when it is malformed."""
    if not isinstance(obj, dict) or obj.get("version") != VERSION:
      raise IndexFileError(source, f"encoder record of an unknown version (this version reads "
                           f"version {VERSION})")
    fields = {f.name for f in dataclasses.fields(cls)}
    try:
      return cls(**{k: v for k, v in obj.items() if k in fields})
    except TypeError as e:
      raise IndexFileError(source, f"malformed encoder record ({e})") from None

  def with_defaults(self, alignment: str, search: dict[str, Any]) -> "EncoderRecord":
    """The same encoder with the search defaults of the run that builds an index."""
    return dataclasses.replace(self, alignment=alignment, search=dict(search))


def fitted_model(module: Any, params: Any, source: str) -> tuple[Any, Any]:
  """(the described module, `params` restricted to it): what a record describes and hashes,
  the same whether the module came from gin or from a record."""
  described = description.from_description(description.describe(module), source=source)
  return described, fit_params(abstract_params(described), params, source)


def make_record(model: LoadedModel, vocabulary: str, *, query_length: int, doc_length: int,
                alignment: str = "top_k:1", search: dict[str, Any] | None = None
                ) -> EncoderRecord:
  """The record of `model` (from `model_loading.load_model`) encoding with `vocabulary`."""
  module, params = model
  described, fitted = fitted_model(module, params, str(model.source.get("path")))
  return EncoderRecord(
      model=description.describe(described), params_source=dict(model.source),
      params_sha256=params_fingerprint(fitted), vocabulary=str(vocabulary),
      vocabulary_sha256=sha256_file(vocabulary_path(vocabulary)),
      query_length=int(query_length), doc_length=int(doc_length),
      dim=description.token_dim(described), normalize_vectors=bool(described.normalize_vectors),
      alignment=alignment, search=dict(search or {}))


def read_encoded_record(encoded_dir: str | pathlib.Path) -> dict[str, Any] | None:
  """The record an encode job wrote to ENCODED_DIR/encoder.json (checked), or None."""
  path = pathlib.Path(encoded_dir) / ENCODED_RECORD
  if not path.is_file():
    return None
  return EncoderRecord.from_json(read_json(path), path).to_json()


def check_same_encoder(recorded: EncoderRecord, other: EncoderRecord, *, index: str,
                       model: str) -> None:
  """Raises `EncoderMismatchError` naming every identity field that differs."""
  differ = [name for name in IDENTITY if getattr(recorded, name) != getattr(other, name)]
  if not differ:
    return
  shown = lambda r, n: "(differs)" if n == "model" else repr(getattr(r, n))  # noqa: E731
  details = "; ".join(f"{n}: index {shown(recorded, n)}, model {shown(other, n)}"
                      for n in differ)
  raise EncoderMismatchError(
      f"{index} was built by another encoder than {model} "
      f"(index encoder: {recorded.params_source}): {details}. Open it with the model that "
      "built it (model=None uses the recorded one) or rebuild the index with this model")
