"""aligner_jax's own scorers, called the way the library's retrieval and training code calls them.

  align_candidates  `align_scores_candidates` with the variant's spec and method "auto" (on the
                    CPU: the compiled kernel when it is built, else the chunked XLA path);
                    "salience" is top_k:1 with query and document saliences.
  align_candidates_xla  the same through the chunked XLA path (method "fast"), to compare.
  lite              `similarity_for_lite` then the separable `LiteScorer` (LITE Eq. 3-4).
  knrm              `similarity_for_lite` then `knrm` (LITE App. A.5).
  align_candidates_direct  the same, called as the README shows it, without a `jax.jit` of
                    the caller's (the library compiles it where it is defined).
Inputs are put on the device during set-up; every call blocks until its result is ready.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from aligner_jax.models.dual_encoder import Encoded
from aligner_jax.models.dual_encoder import similarity_for_lite
from aligner_jax.scoring import LiteScorer
from aligner_jax.scoring import align_scores_candidates
from aligner_jax.scoring.knrm import knrm
from bench.impls import scorer_inputs as si


def _put(inputs: dict[str, np.ndarray], *names: str) -> list[jax.Array]:
  return [jax.device_put(inputs[name]) for name in names]


def align_candidates(params: dict[str, Any], inputs: dict[str, np.ndarray],
                     method: str = "auto") -> Callable[[], Any]:
  variant = params["variant"]
  spec = "top_k:1" if variant == "salience" else variant
  q, q_mask, d, d_mask = _put(inputs, "q", "q_mask", "d", "d_mask")
  if variant == "salience":
    q_sal, d_sal = _put(inputs, "q_sal", "d_sal")
    fn = jax.jit(lambda q, qm, d, dm, qs, ds: align_scores_candidates(
        q, qm, d, dm, spec, q_salience=qs, d_salience=ds, method=method))
    return lambda: fn(q, q_mask, d, d_mask, q_sal, d_sal).block_until_ready()
  fn = jax.jit(lambda q, qm, d, dm: align_scores_candidates(q, qm, d, dm, spec, method=method))
  return lambda: fn(q, q_mask, d, d_mask).block_until_ready()


def align_candidates_xla(params: dict[str, Any],
                         inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
  return align_candidates(params, inputs, method="fast")


def _similarity(q, q_mask, d, d_mask):
  """S [B, K, n, m] through the same function DualEncoder uses for LITE."""
  none = jnp.zeros((q.shape[0], 1), jnp.float32)
  return similarity_for_lite(Encoded(q, q_mask, None, none), Encoded(d, d_mask, None, none))


def lite(params: dict[str, Any], inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
  scorer = LiteScorer(query_len=params["n"], doc_len=params["m"],
                      row_width=params["row_width"], col_width=params["col_width"],
                      kind="separable")
  variables = {"params": jax.device_put(si.lite_param_tree(inputs))}
  q, q_mask, d, d_mask = _put(inputs, "q", "q_mask", "d", "d_mask")

  @jax.jit
  def fn(variables, q, q_mask, d, d_mask):
    s = _similarity(q, q_mask, d, d_mask)
    q_rows = jnp.broadcast_to(q_mask[:, None, :], s.shape[:-1])
    return scorer.apply(variables, s, q_rows, d_mask)

  return lambda: fn(variables, q, q_mask, d, d_mask).block_until_ready()


def knrm_scores(params: dict[str, Any], inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
  q, q_mask, d, d_mask, w = _put(inputs, "q", "q_mask", "d", "d_mask", "w")
  b = float(inputs["b"])

  @jax.jit
  def fn(q, q_mask, d, d_mask, w):
    s = _similarity(q, q_mask, d, d_mask)
    return knrm(s, q_mask[:, None, :], d_mask, w, b)

  return lambda: fn(q, q_mask, d, d_mask, w).block_until_ready()


def align_candidates_direct(params: dict[str, Any],
                            inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
  variant = params["variant"]
  spec = "top_k:1" if variant == "salience" else variant
  q, q_mask, d, d_mask = _put(inputs, "q", "q_mask", "d", "d_mask")
  kw = {}
  if variant == "salience":
    q_sal, d_sal = _put(inputs, "q_sal", "d_sal")
    kw = dict(q_salience=q_sal, d_salience=d_sal)
  return lambda: align_scores_candidates(q, q_mask, d, d_mask, spec, **kw).block_until_ready()

