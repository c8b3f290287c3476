"""The demo paraphrase diagnostic's statistics on vectors whose answer is known."""

import numpy as np

from aligner_jax.data import demo_collection
from aligner_jax.eval.paraphrases import concept_surfaces
from aligner_jax.eval.paraphrases import synonym_statistics


def _concepts(themes: int, per_theme: int, surfaces: int) -> list[tuple[int, int]]:
  return [(t, c) for t in range(themes) for c in range(per_theme) for _ in range(surfaces)]


def test_synonyms_sharing_a_direction_are_each_others_nearest():
  concepts = _concepts(2, 3, 3)
  rng = np.random.default_rng(0)
  centres = {k: rng.normal(size=16) for k in set(concepts)}
  vectors = np.stack([centres[k] + 0.01 * rng.normal(size=16) for k in concepts])
  stats = synonym_statistics(vectors, concepts)
  assert stats["nn_is_synonym"] == 1.0
  assert stats["cos_same_concept"] > 0.99 > stats["cos_other"]


def test_a_theme_direction_shows_in_the_same_theme_cosine_only():
  concepts = _concepts(2, 4, 3)
  rng = np.random.default_rng(1)
  themes = {0: 5 * rng.normal(size=32), 1: 5 * rng.normal(size=32)}
  vectors = np.stack([themes[t] + rng.normal(size=32) for t, _ in concepts])
  stats = synonym_statistics(vectors, concepts)
  assert stats["cos_same_theme"] > stats["cos_other"] + 0.3
  assert abs(stats["cos_same_concept"] - stats["cos_same_theme"]) < 0.1
  assert stats["nn_is_synonym"] < 0.5


def test_concept_surfaces_lists_every_surface_with_its_concept():
  lexicon = demo_collection.generate(0).lexicon
  words, concepts = concept_surfaces(lexicon)
  t, c = concepts[5]
  assert words[5] in lexicon["themes"][t][c]
  assert len(words) == len(concepts) == sum(len(s) for theme in lexicon["themes"] for s in theme)
