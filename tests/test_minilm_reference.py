"""all-MiniLM-L6-v2 dense retrieval on BEIR SciFact test equals sentence-transformers.

The reference embeddings come from sentence-transformers in its own process (torch only) and
the project's run from `gin/experiments/minilm_de_beir.gin` in another (JAX), both through
`bench/bench_minilm_reference.py`; both are cached outside the repository, so a rerun only
scores. The project side reads its encoded SciFact from `$ALIGNER_MINILM_ENCODED_DIR` (the
encode job's ENCODED_DIR) or encodes it once into the bench cache (20-40 CPU-minutes).
"""

import pathlib

import pytest


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_minilm_dense_ndcg_equals_sentence_transformers(scifact_dir):
  pytest.importorskip("sentence_transformers", reason="the reference needs the test extras")
  from bench import bench_minilm_reference as ref
  result = ref.compare(pathlib.Path(scifact_dir).resolve(), ref.default_encoded_dir().resolve(),
                       log=lambda m: print(m, flush=True))
  assert result["queries"] == 300 and result["documents"] == 5183
  assert result["abs_diff"] <= ref.TOLERANCE, result
  # The same documents come back: per query, the top 10 agree (order may swap only where
  # two scores are within float rounding of each other).
  assert result["top10_mean_overlap"] >= 0.99, result
  assert result["top10_same_set"] >= 0.95, result
  # The embeddings themselves agree (float32 CPU kernels of two frameworks).
  assert result["queries_min_cosine"] > 0.9999 and result["corpus_min_cosine"] > 0.9999, result
