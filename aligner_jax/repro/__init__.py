"""Reproductions of the papers' claims at CPU scale (docs/reproduction.md).

Gin-free library code; the gin jobs live in `aligner_jax.repro.jobs`.

Public API:
  family_positions                 query positions grouped by a metadata field (r1.py)
  strategy_ndcg                    [strategies, queries] nDCG@10 over fixed candidates (r1.py)
  r1_report, r1_summary            one dataset's R1 result; the claim over datasets (r1.py)
  write_r1, r1_table               docs/results/r1.{json,md} (r1.py)
  plot_strategy_heatmap, plot_picks  the R1 figures (figures.py)
"""

from aligner_jax.repro.figures import plot_picks
from aligner_jax.repro.figures import plot_strategy_heatmap
from aligner_jax.repro.r1 import PAPER
from aligner_jax.repro.r1 import family_positions
from aligner_jax.repro.r1 import r1_report
from aligner_jax.repro.r1 import r1_summary
from aligner_jax.repro.r1 import r1_table
from aligner_jax.repro.r1 import strategy_ndcg
from aligner_jax.repro.r1 import write_r1

__all__ = [
    "PAPER", "family_positions", "plot_picks", "plot_strategy_heatmap",
    "r1_report", "r1_summary", "r1_table", "strategy_ndcg", "write_r1",
]
