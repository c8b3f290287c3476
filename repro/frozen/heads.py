"""Heads trained over a frozen encoder's cached token vectors, as `DualEncoder`s without encoder.

The cached vectors play the encoder states: `DualEncoder.encode_hidden` / `heads` run only the
heads, so only head parameters exist and receive gradients. Kinds (`KINDS`):
  aligner  token projection to `projection_dim` (L2-normalised) + query and document
           `SalienceHead`s (gate "lp" | "relu" | "hard_topk", ALIGNER Eq. 3-5); top-1 alignment
           weighted by the saliences (ALIGNER §3.2); `with_gate` names the gate variants
  colbert  token projection, MaxSim (top-1 alignment, no saliences)
  maxsim   no parameters: MaxSim over the frozen vectors (LITE App. A.4's frozen ColBERT)
  de       mean of the frozen token vectors + pooled projection: q·d (the dual encoder)
  lite     separable `LiteScorer` on the frozen similarity matrix (LITE App. A.4), with
           `lite_doc_tokens` set: a learned reduction to that many document tokens (§4.4)
  knrm     `KnrmScorer` on the frozen similarity matrix (LITE App. A.5)
Scores: `pair_scores` [B, K] = each query against its own K candidates; `in_batch_scores`
[B, C] = every query against every document (token and pooled kinds only).
Shapes: cached queries q [B, n, H], documents d [B, K, m, H] (pairs) or [C, m, H] (in-batch).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aligner_jax.models import DualEncoder
from aligner_jax.models import configs
from aligner_jax.scoring import KnrmScorer
from aligner_jax.scoring import LiteScorer
from aligner_jax.scoring import align_scores
from aligner_jax.scoring import align_scores_candidates

KINDS = ("aligner", "colbert", "maxsim", "de", "lite", "knrm")
TOKEN_KINDS = ("aligner", "colbert", "maxsim")
MATRIX_KINDS = ("lite", "knrm")
MAXSIM = "top_k:1"


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """What head is trained (see the module docstring).

  Attributes:
    kind: one of KINDS.
    projection_dim: token / pooled projection width (aligner, colbert, de).
    gate: salience gate of the aligner kind.
    query_salience_ratio / doc_salience_ratio: α^q, α^d of the salience budgets (training).
    salience_eps: ε of the LP gate.
    salience_num_iters: the LP gate's solver: None = exact optimum (bisection + closed form),
      an int = that many ALIGNER Eq. 5 iterations from a = b = 0 (the paper's solver).
    normalize_vectors: L2-normalise the token vectors (False: LITE / KNRM see raw dot
      products QᵀD of the cached states, as in the LITE paper).
    normalize_pooled: L2-normalise the dual encoder's vectors (False lets score scales match a
      teacher's in distillation).
    query_len / doc_len: LITE's fixed matrix shape (longer queries are cut).
    lite_row_width / lite_col_width: LITE's m₂ / m₁.
    lite_doc_tokens: None = all document tokens; an int reduces them (LITE Table 3).
  """
  kind: str
  projection_dim: int = 128
  gate: str = "lp"
  query_salience_ratio: float = 0.5
  doc_salience_ratio: float = 0.4
  salience_eps: float = 0.002
  salience_num_iters: int | None = None
  normalize_vectors: bool = True
  normalize_pooled: bool = True
  query_len: int = 32
  doc_len: int = 256
  lite_row_width: int = 256
  lite_col_width: int = 64
  lite_doc_tokens: int | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"head kind must be one of {KINDS}, got {self.kind!r}")


LP_ITERS_PREFIX = "lp_iters"


def with_gate(config: HeadConfig, gate: str) -> HeadConfig:
  """`config` with the salience gate named `gate`: "lp" (exact LP), "lp_iters<N>" (the LP
  solved by N Eq. 5 iterations, e.g. "lp_iters3"), "relu" or "hard_topk"."""
  if gate.startswith(LP_ITERS_PREFIX):
    iters = gate[len(LP_ITERS_PREFIX):]
    if not iters.isdigit() or int(iters) < 1:
      raise ValueError(f"gate {gate!r}: expected {LP_ITERS_PREFIX}<N> with N >= 1")
    return dataclasses.replace(config, gate="lp", salience_num_iters=int(iters))
  return dataclasses.replace(config, gate=gate, salience_num_iters=None)


def build_module(config: HeadConfig, encoder_config: Any | None = None) -> DualEncoder:
  """The `DualEncoder` carrying the heads of `config` (its encoder is never called)."""
  if encoder_config is None:
    encoder_config = configs.bert_config("minilm_l6")
  kind = config.kind
  scorer = None
  if kind == "lite":
    reduce = config.lite_doc_tokens is not None
    scorer = LiteScorer(query_len=config.query_len, doc_len=config.doc_len,
                        row_width=config.lite_row_width, col_width=config.lite_col_width,
                        doc_reduction="projection" if reduce else None,
                        reduced_doc_len=config.lite_doc_tokens)
  elif kind == "knrm":
    scorer = KnrmScorer()
  aligner = kind == "aligner"
  return DualEncoder(
      encoder_config=encoder_config,
      projection_dim=config.projection_dim if kind in ("aligner", "colbert") else None,
      normalize_vectors=config.normalize_vectors,
      pooled_projection_dim=config.projection_dim if kind == "de" else None,
      normalize_pooled=config.normalize_pooled,
      query_salience_ratio=config.query_salience_ratio if aligner else None,
      doc_salience_ratio=config.doc_salience_ratio if aligner else None,
      salience_eps=config.salience_eps, salience_gate=config.gate,
      salience_num_iters=config.salience_num_iters, lite_scorer=scorer)


def init_params(module: DualEncoder, config: HeadConfig, *, hidden_dim: int,
                rng: jax.Array) -> Any:
  """Head parameters (plain arrays) for cached states of width `hidden_dim`."""
  q = jnp.zeros((1, config.query_len, hidden_dim), jnp.float32)
  d = jnp.zeros((1, config.doc_len, hidden_dim), jnp.float32)
  mask = lambda x: jnp.ones(x.shape[:2], bool)  # noqa: E731
  variables = module.init(rng, q, mask(q), d, mask(d), method="heads")
  return nn.meta.unbox(variables.get("params", {}))


def _fit_query(config: HeadConfig, q: jax.Array, q_mask: jax.Array):
  if config.kind == "lite" and q.shape[1] > config.query_len:
    return q[:, :config.query_len], q_mask[:, :config.query_len]
  return q, q_mask


def pair_scores(module: DualEncoder, config: HeadConfig, params: Any, q: jax.Array,
                q_mask: jax.Array, d: jax.Array, d_mask: jax.Array) -> jax.Array:
  """Scores [B, K] of queries q [B, n, H] against their candidates d [B, K, m, H]."""
  q, q_mask = _fit_query(config, q, q_mask)
  b, k, m, h = d.shape

  def fn(mdl: DualEncoder):
    qe = mdl.encode_hidden("query", q, q_mask)
    de = mdl.encode_hidden("doc", d.reshape(b * k, m, h), d_mask.reshape(b * k, m))
    de = jax.tree_util.tree_map(lambda x: x.reshape((b, k) + x.shape[1:]), de)
    if config.kind in MATRIX_KINDS:
      return mdl.lite_scores(qe, de)
    if config.kind == "de":
      return jnp.einsum("bh,bkh->bk", qe.pooled, de.pooled)
    return align_scores_candidates(qe.vectors, qe.mask, de.vectors, de.mask, MAXSIM,
                                   q_salience=qe.salience, d_salience=de.salience)

  return module.apply({"params": params}, method=fn)


def in_batch_scores(module: DualEncoder, config: HeadConfig, params: Any, q: jax.Array,
                    q_mask: jax.Array, d: jax.Array, d_mask: jax.Array) -> jax.Array:
  """Scores [B, C] of queries q [B, n, H] against all documents d [C, m, H]."""
  if config.kind in MATRIX_KINDS:
    raise ValueError(f"{config.kind} heads score pairs only (use pair_scores)")

  def fn(mdl: DualEncoder):
    qe = mdl.encode_hidden("query", q, q_mask)
    de = mdl.encode_hidden("doc", d, d_mask)
    if config.kind == "de":
      return qe.pooled @ de.pooled.T
    return align_scores(qe.vectors, qe.mask, de.vectors, de.mask, MAXSIM,
                        q_salience=qe.salience, d_salience=de.salience)

  return module.apply({"params": params}, method=fn)


def encode_side(module: DualEncoder, params: Any, side: str, hidden: jax.Array,
                mask: jax.Array) -> dict[str, jax.Array]:
  """The heads' outputs for one side: vectors [B, L, h], salience [B, L] (or absent),
  pooled [B, h'] -- what the token index and dense search consume."""

  def fn(mdl: DualEncoder):
    e = mdl.encode_hidden(side, hidden, mask)
    out = {"vectors": e.vectors, "pooled": e.pooled}
    if e.salience is not None:
      out["salience"] = e.salience
    return out

  return module.apply({"params": params}, method=fn)


def num_params(params: Any) -> int:
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))
