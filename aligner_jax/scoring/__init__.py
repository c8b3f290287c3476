"""Scorers of query/document token vectors: pure functions, plus Flax modules where parameters live.

Score convention: `S[b, c]` is the score of query b against document c (all pairs), or against
its c-th own candidate (`*_candidates`). Token axes: queries `[B, n, h]`, documents `[C, m, h]`,
masks bool with False = padding.

Where the paper equations live:
  similarity.py  ALIGNER Eq. (1) `sparse_alignment_score`, Eq. (2) `factorized_alignment`
  alignment.py   `Alignment` specs, Ã (`alignment_matrix`), `align_scores`(`_candidates`)
  fast_align.py  the chunked fast path behind `align_scores` (XLA)
  pallas_align.py, pallas_lite.py  Pallas kernels (alignment score; separable LITE)
  dispatch.py    `method="auto"`: the kernels on TPU / GPU, the XLA paths elsewhere
  salience.py    ALIGNER Eq. (3) `lp_gate`, Eq. (4) `lp_exact`, Eq. (5) `lp_coordinate_ascent`,
                 `salience_lp`, `SalienceHead`, `prune_tokens`
  selection.py   deterministic hard top-k and exact ratio counts
"""

from aligner_jax.scoring.alignment import Alignment
from aligner_jax.scoring.alignment import align_scores
from aligner_jax.scoring.alignment import align_scores_candidates
from aligner_jax.scoring.alignment import alignment_matrix
from aligner_jax.scoring.alignment import pair_score_dense

# LITE and KNRM scorers (lite.py, knrm.py) are re-exported below.
from aligner_jax.scoring.knrm import KNRM_MUS
from aligner_jax.scoring.knrm import KNRM_SIGMAS
from aligner_jax.scoring.knrm import KnrmScorer
from aligner_jax.scoring.knrm import knrm_features
from aligner_jax.scoring.lite import LiteBlock
from aligner_jax.scoring.lite import LiteScorer
from aligner_jax.scoring.lite import avg_pool_tokens
from aligner_jax.scoring.lite import zero_padding
from aligner_jax.scoring.salience import SalienceHead
from aligner_jax.scoring.salience import hard_topk_gate
from aligner_jax.scoring.salience import lp_coordinate_ascent
from aligner_jax.scoring.salience import lp_exact
from aligner_jax.scoring.salience import lp_gate
from aligner_jax.scoring.salience import prune_tokens
from aligner_jax.scoring.salience import relu_gate
from aligner_jax.scoring.salience import salience_budget
from aligner_jax.scoring.salience import salience_lp
from aligner_jax.scoring.selection import topk_mask
from aligner_jax.scoring.similarity import factorized_alignment
from aligner_jax.scoring.similarity import similarity_matrix
from aligner_jax.scoring.similarity import sparse_alignment_score
