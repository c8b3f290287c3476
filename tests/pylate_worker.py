"""PyLate's side of the interoperability tests, run in its own process (torch only).

  python tests/pylate_worker.py SPEC.json

PyLate lives outside `.venv` (bench/README.md); the spec's `pylate_path` goes first on
`sys.path`. Actions:
  build   a ColBERT directory in PyLate's own layout: all-MiniLM-L6-v2 (`base_dir`) with
          PyLate's prefix tokens and a Dense projection (`embedding_size`, `bias`,
          `activation`: a torch.nn class name), drawn with `torch.manual_seed(seed)`, written
          by PyLate's `ColBERT.save` to `out_dir`;
  encode  PyLate's token embeddings of `queries` and `documents` by the model at `model_dir`
          (`ColBERT.encode`, is_query True / False), written to `out` (.npz: query_<i>,
          document_<i>).
"""

import json
import pathlib
import sys


def _pylate(spec):
  sys.path.insert(0, spec["pylate_path"])
  import pylate  # pylint: disable=import-outside-toplevel
  import sentence_transformers  # pylint: disable=import-outside-toplevel
  if sentence_transformers.__version__ != "5.3.0":
    raise RuntimeError(f"PyLate {pylate.__version__} needs sentence-transformers 5.3.0 on its "
                       f"path, found {sentence_transformers.__version__} "
                       f"({sentence_transformers.__file__}); see bench/README.md")
  return pylate


def build(spec):
  _pylate(spec)
  from pylate import models  # pylint: disable=import-outside-toplevel
  from sentence_transformers.models import Transformer  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(spec["seed"])
  transformer = Transformer(spec["base_dir"])
  dense = models.Dense(transformer.get_word_embedding_dimension(), spec["embedding_size"],
                       bias=spec["bias"],
                       activation_function=getattr(torch.nn, spec["activation"])())
  keys = ("query_prefix", "document_prefix", "query_length", "document_length",
          "do_query_expansion", "attend_to_expansion_tokens")
  model = models.ColBERT(modules=[transformer, dense], device="cpu",
                         **{k: spec[k] for k in keys if k in spec})
  model.save(spec["out_dir"])


def encode(spec):
  _pylate(spec)
  import numpy as np  # pylint: disable=import-outside-toplevel
  from pylate import models  # pylint: disable=import-outside-toplevel

  from aligner_jax.io import atomic_output  # pylint: disable=import-outside-toplevel
  model = models.ColBERT(spec["model_dir"], device="cpu")
  arrays = {}
  for kind, key, is_query in (("query", "queries", True), ("document", "documents", False)):
    if spec.get(key):
      vectors = model.encode(spec[key], is_query=is_query, batch_size=16)
      arrays.update({f"{kind}_{i}": np.asarray(v, np.float32) for i, v in enumerate(vectors)})
  with atomic_output(spec["out"]) as path:  # a path ending in .npz: savez keeps the name
    np.savez(path, **arrays)


def main(argv):
  spec = json.loads(pathlib.Path(argv[1]).read_text(encoding="utf-8"))
  {"build": build, "encode": encode}[spec["action"]](spec)


if __name__ == "__main__":
  main(sys.argv)
