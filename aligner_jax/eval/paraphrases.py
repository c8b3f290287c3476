"""Has a trained model learned the demo collection's paraphrases? (`gin/experiments/
demo_paraphrases.gin`)

The demo collection (`aligner_jax.data.demo_collection`) names each concept by three surfaces;
broad queries are answerable only if the encoder maps them close together. The diagnostic
encodes every concept surface alone with each tower, takes the mean of its piece vectors
(without the final `</s>`), L2-normalises it and reports, per tower:

  cos_same_concept / cos_same_theme / cos_other: mean cosine between surfaces of the same
    concept, of other concepts of the same theme, of concepts of other themes;
  nn_is_synonym: the share of surfaces whose nearest other surface names the same concept
    (chance = 2 / (number of surfaces - 1)).

It needs no index and no retrieval, so it runs in seconds after training: the cheap signal to
check before a full `demo_eval.gin` evaluation.
"""

import logging
import pathlib
from typing import Any, Sequence

import gin
import numpy as np

from aligner_jax.data import demo_collection
from aligner_jax.io import write_json
from aligner_jax.retrieval.encoding import encode_queries

_MODULE = "aligner_jax.eval"
OUTPUT_FILE = "paraphrases.json"


def concept_surfaces(lexicon: dict[str, Any]) -> tuple[list[str], list[tuple[int, int]]]:
  """The lexicon's concept surfaces and each one's (theme, concept)."""
  words, concepts = [], []
  for t, theme in enumerate(lexicon["themes"]):
    for c, surfaces in enumerate(theme):
      words.extend(surfaces)
      concepts.extend([(t, c)] * len(surfaces))
  return words, concepts


def synonym_statistics(vectors: np.ndarray,
                       concepts: Sequence[tuple[int, int]]) -> dict[str, float]:
  """vectors [N, h] (one a surface), concepts: N (theme, concept) -> the module docstring's
  statistics."""
  v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  sim = v @ v.T
  theme = np.array([t for t, _ in concepts])
  concept = np.array([t * 1_000_000 + c for t, c in concepts])
  off_diagonal = ~np.eye(len(v), dtype=bool)
  same_concept = (concept[:, None] == concept[None, :]) & off_diagonal
  same_theme = (theme[:, None] == theme[None, :]) & ~same_concept & off_diagonal
  other = ~same_concept & ~same_theme & off_diagonal
  nearest = np.where(off_diagonal, sim, -np.inf).argmax(axis=1)
  return {"cos_same_concept": float(sim[same_concept].mean()),
          "cos_same_theme": float(sim[same_theme].mean()),
          "cos_other": float(sim[other].mean()),
          "nn_is_synonym": float(same_concept[np.arange(len(v)), nearest].mean())}


def surface_vectors(encoder: Any, vocabulary: Any, words: Sequence[str]) -> np.ndarray:
  """[N, h]: each word encoded alone, the mean of its piece vectors without the final token."""
  batch = encode_queries(encoder, vocabulary, [str(i) for i in range(len(words))], words,
                         max_length=16)
  return np.stack([batch.vectors[i][batch.mask[i]][:-1].mean(axis=0)
                   for i in range(len(words))])


@gin.configurable(module=_MODULE)
def demo_paraphrases(*, model: tuple[Any, Any], vocabulary: str, output_dir: str,
                     seed: int = demo_collection.DEFAULT_SEED) -> dict[str, dict[str, float]]:
  """Writes OUTPUT_DIR/paraphrases.json: {"query" | "doc": statistics} for the demo collection
  of `seed`."""
  from aligner_jax.eval.retrieval_jobs import model_encoders  # pylint: disable=g-import-not-at-top
  module, params = model
  encoders = model_encoders(module, params, vocabulary, batch_size=64)
  words, concepts = concept_surfaces(demo_collection.generate(seed).lexicon)
  result = {}
  for side, encoder in (("query", encoders.queries), ("doc", encoders.documents)):
    result[side] = synonym_statistics(surface_vectors(encoder, encoders.vocabulary, words),
                                      concepts)
    logging.info("paraphrases, %s tower: %s", side,
                 ", ".join(f"{k} {v:.3f}" for k, v in result[side].items()))
  write_json(pathlib.Path(output_dir) / OUTPUT_FILE, result)
  return result
