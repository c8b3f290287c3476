"""Helpers of the PyLate interoperability tests: where PyLate is, running its worker, texts.

PyLate is not a dependency of the project: it is installed apart (bench/README.md) into
`$ALIGNER_PYLATE_PATH` (default /work/cache/pylate_site) and runs in its own process
(`tests/pylate_worker.py`); tests that need it skip, naming the path, when it is absent.
"""

import itertools
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from aligner_jax.data import vocab as vocab_lib
from aligner_jax.data.collection import document_text
from aligner_jax.io import write_json
from aligner_jax.models import hf_import
from aligner_jax.retrieval import encoding

REPO = pathlib.Path(__file__).resolve().parents[1]
PYLATE_PATH = pathlib.Path(os.environ.get("ALIGNER_PYLATE_PATH", "/work/cache/pylate_site"))
TOLERANCE = 1e-4
# Texts beside real ones: empty, punctuation only, a marker-like string, a literal [MASK].
EDGE_TEXTS = ["", "?!", "[Q] what is [MASK] in cells?", "p53 (tumour-suppressor), i.e. TP53."]


def pylate_path() -> str:
  """The directory PyLate is installed in; skips the test when it is absent."""
  if not (PYLATE_PATH / "pylate").is_dir():
    pytest.skip(f"PyLate is not installed apart at {PYLATE_PATH} (see bench/README.md; "
                "ALIGNER_PYLATE_PATH points elsewhere)")
  return str(PYLATE_PATH)


def run_worker(spec: dict, work_dir: pathlib.Path) -> None:
  """Runs tests/pylate_worker.py with `spec` in a fresh process (torch only, no JAX)."""
  spec = {"pylate_path": pylate_path(), **spec}
  spec_file = work_dir / f"pylate_{spec['action']}.json"
  write_json(spec_file, spec)
  env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
         "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
  done = subprocess.run([sys.executable, str(REPO / "tests" / "pylate_worker.py"),
                         str(spec_file)], env=env, capture_output=True, text=True,
                        timeout=1800, check=False)
  if done.returncode:
    raise AssertionError(f"PyLate worker failed ({spec['action']}):\n{done.stderr[-4000:]}")


def pylate_encode(model_dir: pathlib.Path, queries: list[str], documents: list[str],
                  work_dir: pathlib.Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """PyLate's token embeddings ([n_i, h] per text) of the model at `model_dir`."""
  out = work_dir / "pylate_embeddings.npz"
  run_worker({"action": "encode", "model_dir": str(model_dir), "queries": queries,
              "documents": documents, "out": str(out)}, work_dir)
  with np.load(out) as data:
    return ([data[f"query_{i}"] for i in range(len(queries))],
            [data[f"document_{i}"] for i in range(len(documents))])


def project_encode(module, params, vocabulary: str, texts: list[str], side: str,
                   max_length: int) -> list[np.ndarray]:
  """The project's token vectors of `texts` through the retrieval encoding loop."""
  vocab = vocab_lib.get_vocabulary(vocabulary)
  encoder = encoding.Encoder(encoding.make_encode_fn(module, side), params, batch_size=8,
                             pad_id=vocab.pad_id)
  encoded = encoder.encode(encoding.tokenize(vocab, texts, max_length), max_length)
  return [e["vectors"] for e in encoded]


def scifact_texts(scifact_dir: pathlib.Path, count: int) -> tuple[list[str], list[str]]:
  """The first `count` SciFact queries and documents (as the project's reader joins title and
  text)."""
  def rows(name):
    with open(scifact_dir / name, encoding="utf-8") as f:
      return [json.loads(line) for line in itertools.islice(f, count)]
  queries = [r["text"] for r in rows("queries.jsonl")]
  documents = [document_text(r["title"], r["text"]) for r in rows("corpus.jsonl")]
  return queries, documents


def max_difference(ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
  """Largest |ours - theirs| over all texts; shapes must agree text by text."""
  assert len(ours) == len(theirs)
  for i, (a, b) in enumerate(zip(ours, theirs)):
    assert a.shape == b.shape, f"text {i}: the project keeps {a.shape}, PyLate {b.shape}"
  return max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs))


SETTINGS = {
    "bias_identity": dict(embedding_size=96, bias=True, activation="Identity",
                          query_prefix="[Q] ", document_prefix="[D] ", query_length=32,
                          document_length=180),
    "tanh_attend": dict(embedding_size=64, bias=False, activation="Tanh",
                        query_prefix="[unused0]", document_prefix="[unused1]", query_length=24,
                        document_length=96, attend_to_expansion_tokens=True),
    "no_markers_no_expansion": dict(embedding_size=48, bias=True, activation="ReLU",
                                    query_prefix="", document_prefix="", query_length=16,
                                    document_length=64, do_query_expansion=False),
}


def build_reference(work_dir: pathlib.Path, name: str) -> pathlib.Path:
  """A ColBERT directory written by PyLate: MiniLM + a seeded Dense, settings `name`."""
  out = work_dir / f"colbert_{name}"
  run_worker({"action": "build", "base_dir": str(hf_import.minilm_model_dir()), "seed": 7,
              "out_dir": str(out), **SETTINGS[name]}, work_dir)
  return out
