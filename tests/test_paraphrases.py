"""The demo paraphrase diagnostic: its statistics on vectors whose answer is known, and the gin
job on a demo model trained for 2 steps."""

import json

import numpy as np
import pytest
import train_testlib as lib

from aligner_jax.data import demo_collection
from aligner_jax.eval.paraphrases import OUTPUT_FILE
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


@pytest.mark.slow
def test_the_gin_job_reads_a_trained_demo_model_and_writes_both_towers(tmp_path):
  model_dir = tmp_path / "model"
  bindings = [f"MODEL_DIR = '{model_dir}'", *lib.TINY_DEMO_BINDINGS, "TRAIN_STEPS = 2"]
  lib.run_main(["gin/experiments/demo.gin"], bindings)
  result = lib.run_main(["gin/experiments/demo_paraphrases.gin"],
                        [f"MODEL_DIR = '{model_dir}'", "DualEncoder.projection_dim = 16"])
  assert json.loads((model_dir / OUTPUT_FILE).read_text()) == result
  words, _ = concept_surfaces(demo_collection.generate(0).lexicon)
  for side in ("query", "doc"):
    stats = result[side]
    assert 0.0 <= stats["nn_is_synonym"] <= 1.0
    # Every surface was encoded: a share of N surfaces is a multiple of 1 / N.
    hits = stats["nn_is_synonym"] * len(words)
    assert abs(hits - round(hits)) < 1e-6
