"""Small clustered corpora and queries for the index generation tests, and a script of changes
(add / delete / compact) that a killed process can resume."""

import pathlib
import sys

import numpy as np

from aligner_jax.index import IndexConfig
from aligner_jax.index import TokenStore
from aligner_jax.index import concatenate
from aligner_jax.index import from_padded

DIM = 16
CONFIGS = {"exact": IndexConfig(backend="exact"),
           "scann": IndexConfig(backend="scann", reorder="float32"),
           "ivf": IndexConfig(backend="ivf")}


def _clustered(rng, count: int, max_len: int, centres: np.ndarray):
  lengths = rng.integers(1, max_len + 1, count)
  mask = np.arange(max_len)[None, :] < lengths[:, None]
  vectors = centres[rng.integers(0, len(centres), (count, max_len))]
  vectors = vectors + 0.4 * rng.normal(size=vectors.shape).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
  return vectors.astype(np.float32), mask


def corpus(num_docs: int, *, seed: int = 0, first: int = 0, max_len: int = 10) -> TokenStore:
  """Documents `doc-<first>` … with token vectors around shared centres, saliences and
  metadata {"group": i % 5, "first": i < 50}."""
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(1234).normal(size=(48, DIM)).astype(np.float32)
  vectors, mask = _clustered(rng, num_docs, max_len, centres)
  salience = rng.random(mask.shape).astype(np.float32)
  store = from_padded([f"doc-{first + i}" for i in range(num_docs)], vectors, mask,
                      salience=salience, vector_dtype="float16")
  store.metadata = [{"group": (first + i) % 5, "first": first + i < 50}
                    for i in range(num_docs)]
  return store


def queries(count: int = 24, *, seed: int = 7):
  """A `QueryBatch` of `count` queries around the corpus's centres."""
  from aligner_jax.retrieval import QueryBatch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(1234).normal(size=(48, DIM)).astype(np.float32)
  vectors, mask = _clustered(rng, count, 6, centres)
  return QueryBatch([f"q{i}" for i in range(count)], vectors, mask)


# The changes a resumable writer applies in order: change g (1, 2, …) makes generation g.
def script_step(generation: int) -> tuple[str, object]:
  """("add", (first, count, seed, updated ids)), ("delete", ids) or ("compact", None)."""
  kind = ("add", "delete", "compact")[(generation - 1) % 3]
  if kind == "add":
    first = 1000 + 100 * generation
    return kind, (first, 30, generation, [f"doc-{generation}", f"doc-{generation + 40}"])
  if kind == "delete":
    return kind, [f"doc-{1000 + 100 * (generation - 1) + i}" for i in range(0, 30, 3)]
  return kind, None


def store_for_step(first: int, count: int, seed: int, updated: list[str]) -> TokenStore:
  """The documents an add step writes: new ones plus new versions of `updated`."""
  new = corpus(count, seed=seed, first=first)
  again = corpus(len(updated), seed=seed + 500, first=0)
  again.doc_ids = list(updated)
  return concatenate([new, again])


def expected_live(base_ids: list[str], generation: int) -> set[str]:
  """The live document ids after `generation` steps of the script over `base_ids`."""
  live = set(base_ids)
  for g in range(1, generation + 1):
    kind, arg = script_step(g)
    if kind == "add":
      first, count, _, updated = arg
      live |= {f"doc-{first + i}" for i in range(count)} | set(updated)
    elif kind == "delete":
      live -= set(arg)
  return live


def run_script(index_dir: pathlib.Path, steps: int) -> None:
  """Applies the script from the index's current generation up to generation `steps`
  (resuming where a killed run stopped)."""
  from aligner_jax.index import generations  # pylint: disable=g-import-not-at-top
  quiet = lambda message: None  # noqa: E731
  while (generation := generations.current_generation(index_dir) + 1) <= steps:
    kind, arg = script_step(generation)
    if kind == "add":
      generations.add_documents(index_dir, store_for_step(*arg), log=quiet)
    elif kind == "delete":
      generations.delete_documents(index_dir, arg, log=quiet)
    elif generations.compact(index_dir, log=quiet) != generation:
      raise AssertionError(f"step {generation}: compaction found nothing to do")


if __name__ == "__main__":  # python generations_testlib.py INDEX_DIR STEPS [COARSE_MIN]
  if len(sys.argv) > 3:  # IVF indexes this small get a stored coarse level too
    from aligner_jax.index import ivf  # pylint: disable=g-import-not-at-top
    ivf.COARSE_MIN = int(sys.argv[3])
  run_script(pathlib.Path(sys.argv[1]), int(sys.argv[2]))
