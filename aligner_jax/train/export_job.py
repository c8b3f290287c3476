"""The export job (`gin/runs/export_colbert.gin`): a trained multi-vector model written in the
sentence-transformers / PyLate ColBERT layout (`aligner_jax.models.export`), so that PyLate's
`models.ColBERT(EXPORT_DIR)` loads it and gives the model's token vectors.

The model comes from `load_model` (a trainer checkpoint in MODEL_DIR, or a pretrained
CHECKPOINT_PATH) with the DualEncoder settings of the model gin file; the tokenizer files are
copied from the directory of the VOCABULARY's tokenizer.json.
"""

import pathlib
from typing import Any

from aligner_jax.data import vocab as vocab_lib
from aligner_jax.models import export


def tokenizer_dir(vocabulary: str) -> pathlib.Path:
  """The directory of a vocabulary's tokenizer.json (a SentencePiece model is not enough)."""
  path = getattr(vocab_lib.get_vocabulary(vocabulary), "path", None)
  if path is None or not str(path).endswith(".json"):
    raise export.ExportError(f"vocabulary {vocabulary!r} is not a tokenizer.json: PyLate "
                             "needs the Hugging Face tokenizer files")
  return pathlib.Path(path).parent


def export_colbert(*, model: tuple[Any, Any], vocabulary: str, export_dir: str,
                   query_length: int | None = None, doc_length: int | None = None,
                   drop_salience: bool = False) -> str:
  """Writes EXPORT_DIR; query_length / doc_length are the lengths the model was trained with
  (PyLate's query_length / document_length for a side without a framing). Returns it."""
  module, params = model
  out = export.export_colbert(export_dir, module, params,
                              tokenizer_dir=tokenizer_dir(vocabulary),
                              query_length=query_length, doc_length=doc_length,
                              drop_salience=drop_salience)
  print(f"exported to {out} (sentence-transformers / PyLate ColBERT layout)", flush=True)
  return str(out)
