"""Pairwise alignments Ã of ALIGNER §2.2/§3.1/App. A.2 and the scores they give (Eq. 1-2).

Output convention: `align_scores(...)[b, c]` is the score of query b against document c, and
`align_scores_candidates(...)[b, k]` the score of query b against its own k-th candidate.

Conventions:
  * `S_ij = q_i · d_j`; masks are bool (False = padding). Padding is never selected and never
    contributes; saliences default to the masks (u = 1 on valid tokens).
  * A = Ã ⊙ (u^q ⊗ u^d) and score = Σ S ⊙ A / Σ A, 0 when Σ A = 0 (e.g. a fully pruned document).
  * Ã is chosen from S alone (Eq. 2): a valid token with zero salience can still be selected and
    then contributes nothing. To keep a token out of the selection, drop it from the mask
    (`prune_tokens`).
  * Hard selections break ties towards the lower document index.
  * The alignment is static (a Python value), so every function jits and vmaps with it closed over.

Alignment specs (`Alignment.parse`, also the gin override syntax):
  "top_k:K"        each valid query token aligns with its min(K, m_valid) most similar document
                   tokens; "top_k:1" is ColBERT's sum-of-max.
  "top_p:P"        the same with max(⌊P · m_valid⌋, 1) tokens; P is a fraction (0.015 = 1.5 %).
  "da:k=K,eps=E"   differentiable alignment (App. A.2): per query row the entropic LP of Eq. (4)
                   over S with Σ_j Ã_ij = K (clipped to m_valid); ε → 0 gives top_k:K.
  "cls"            DPR: Ã_11 = 1, the score is q_0 · d_0.
  "me_bert:K"      ME-BERT: the first query token against the first K document tokens, max.
  "coil"           COIL: top-1 among the document tokens whose token id equals the query token's;
                   query tokens without a match contribute nothing (needs token ids).
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp

from aligner_jax.scoring import cpu_align
from aligner_jax.scoring import dispatch
from aligner_jax.scoring import fast_align
from aligner_jax.scoring import native
from aligner_jax.scoring import pallas_align
from aligner_jax.scoring import salience as salience_lib
from aligner_jax.scoring import selection
from aligner_jax.scoring import similarity

KINDS = ("top_k", "top_p", "da", "cls", "me_bert", "coil")
ALLOWED_SPECS = ('"top_k:K" (K >= 1 int; ColBERT = "top_k:1"), "top_p:P" (0 < P <= 1), '
                 '"da:k=K,eps=E" (K >= 1 int, E > 0), "cls", "me_bert:K" (K >= 1 int), "coil"')

_INT = r"\s*(\d+)\s*"
_FLOAT = r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*"


@dataclasses.dataclass(frozen=True)
class Alignment:
  """A pairwise alignment strategy; build it with `Alignment.parse(spec)`.

  Attributes:
    kind: one of KINDS.
    k: top_k's K, da's K, me_bert's K; None otherwise.
    p: top_p's P; None otherwise.
    eps: da's ε; None otherwise.
  """
  kind: str
  k: int | None = None
  p: float | None = None
  eps: float | None = None

  def __post_init__(self):
    need_k = self.kind in ("top_k", "da", "me_bert")
    ok = (self.kind in KINDS
          and (self.k is not None) == need_k
          and (self.k is None or (isinstance(self.k, int) and self.k >= 1))
          and (self.p is not None) == (self.kind == "top_p")
          and (self.p is None or 0.0 < self.p <= 1.0)
          and (self.eps is not None) == (self.kind == "da")
          and (self.eps is None or self.eps > 0.0))
    if not ok:
      raise ValueError(f"invalid alignment {self!r}; allowed: {ALLOWED_SPECS}")

  @classmethod
  def parse(cls, spec: "str | Alignment") -> "Alignment":
    """The alignment named by `spec` (see the module docstring); an Alignment passes through."""
    if isinstance(spec, Alignment):
      return spec
    if not isinstance(spec, str):
      raise ValueError(f"alignment spec must be a string, got {spec!r}; allowed: {ALLOWED_SPECS}")
    text = spec.strip()
    try:
      if text in ("cls", "coil"):
        return cls(text)
      if m := re.fullmatch(r"top_k:" + _INT, text):
        return cls("top_k", k=int(m.group(1)))
      if m := re.fullmatch(r"me_bert:" + _INT, text):
        return cls("me_bert", k=int(m.group(1)))
      if m := re.fullmatch(r"top_p:" + _FLOAT, text):
        return cls("top_p", p=float(m.group(1)))
      if m := re.fullmatch(r"da:\s*k=" + _INT + r",\s*eps=" + _FLOAT, text):
        return cls("da", k=int(m.group(1)), eps=float(m.group(2)))
      if m := re.fullmatch(r"da:\s*eps=" + _FLOAT + r",\s*k=" + _INT, text):
        return cls("da", k=int(m.group(2)), eps=float(m.group(1)))
    except ValueError:
      pass
    raise ValueError(f"invalid alignment spec {spec!r}; allowed: {ALLOWED_SPECS}")

  def __str__(self) -> str:
    if self.kind in ("top_k", "me_bert"):
      return f"{self.kind}:{self.k}"
    if self.kind == "top_p":
      return f"top_p:{self.p!r}"
    if self.kind == "da":
      return f"da:k={self.k},eps={self.eps!r}"
    return self.kind

  @property
  def needs_token_ids(self) -> bool:
    """COIL aligns only exact token-id matches, so it needs `q_ids` and `d_ids`."""
    return self.kind == "coil"

  def count(self, m_valid: jax.Array) -> jax.Array:
    """Alignments per valid query row for top_k / top_p / da, given m_valid [...] -> [...] int32."""
    m_valid = jnp.asarray(m_valid, jnp.int32)
    if self.kind in ("top_k", "da"):
      return jnp.minimum(self.k, m_valid)
    if self.kind == "top_p":
      wanted = jnp.maximum(selection.floor_ratio_count(m_valid, self.p, name="top_p"), 1)
      return jnp.minimum(wanted, m_valid)
    raise ValueError(f"alignment {self} has no per-row count")

  def max_count(self, m: int) -> int:
    """Upper bound of `count` for documents padded to length m (a static int)."""
    if self.kind in ("top_k", "da"):
      return min(self.k, m)
    if self.kind == "top_p":
      frac = selection.ratio_fraction(self.p, name="top_p")
      return min(max(frac.numerator * m // frac.denominator, 1), m)
    return 1


def _check_ids(alignment: Alignment, q_ids, d_ids):
  if alignment.needs_token_ids and (q_ids is None or d_ids is None):
    raise ValueError(f"alignment {alignment} needs q_ids and d_ids (token ids of both sides)")


def alignment_matrix(s: jax.Array, q_mask: jax.Array, d_mask: jax.Array,
                     alignment: "Alignment | str", *, q_ids: jax.Array | None = None,
                     d_ids: jax.Array | None = None) -> jax.Array:
  """The pairwise alignment Ã of one query/document pair (batched over leading axes).

  Straightforward reference implementation; `align_scores` computes the same scores without
  materialising Ã for the hard alignments.

  Args:
    s: [..., n, m] similarities.
    q_mask: [..., n] bool.
    d_mask: [..., m] bool.
    alignment: Alignment or spec string.
    q_ids: [..., n] int token ids (coil only).
    d_ids: [..., m] int token ids (coil only).
  Returns:
    Ã: [..., n, m] in `s.dtype` (at least float32), values in [0, 1], zero on padded rows and
      columns.
  """
  alignment = Alignment.parse(alignment)
  _check_ids(alignment, q_ids, d_ids)
  n, m = s.shape[-2:]
  out_dtype = similarity.score_dtype(s)
  rows = q_mask[..., :, None]
  cols = jnp.broadcast_to(d_mask[..., None, :], s.shape)
  if alignment.kind in ("top_k", "top_p"):
    count = alignment.count(jnp.sum(d_mask, axis=-1))[..., None]
    a = selection.topk_mask(s, cols, count) & rows
  elif alignment.kind == "da":
    count = alignment.count(jnp.sum(d_mask, axis=-1))[..., None]
    lam = salience_lib.salience_lp(s, cols, count, eps=alignment.eps)
    return jnp.where(rows, lam, 0.0).astype(out_dtype)
  elif alignment.kind == "coil":
    same = q_ids[..., :, None] == d_ids[..., None, :]
    a = selection.topk_mask(s, cols & same, 1) & rows
  else:  # cls and me_bert align the first query token only
    first_row = jnp.arange(n) == 0
    if alignment.kind == "cls":
      first_cols = jnp.arange(m) == 0
    else:
      first_cols = jnp.arange(m) < alignment.k
    a = (selection.topk_mask(s, cols & first_cols, 1) & rows & first_row[:, None])
  return a.astype(out_dtype)


def _saliences(mask: jax.Array, sal: jax.Array | None) -> jax.Array:
  """u: the salience on valid tokens (1 without one), 0 on padding, at least float32."""
  u = jnp.ones(mask.shape, jnp.float32) if sal is None else sal.astype(similarity.score_dtype(sal))
  return jnp.where(mask, u, 0.0)


def pair_score_dense(q, q_mask, d, d_mask, alignment, *, q_salience=None, d_salience=None,
                     q_ids=None, d_ids=None) -> jax.Array:
  """Score of one query against one document through the explicit S, Ã and A (Eq. 1-2).

  Args:
    q: [n, h]; q_mask: [n] bool; d: [m, h]; d_mask: [m] bool; saliences and ids shaped like
    the masks.
  Returns:
    [] in `score_dtype` (float32 unless an input is float64).
  """
  s = similarity.similarity_matrix(q, d)
  a_tilde = alignment_matrix(s, q_mask, d_mask, alignment, q_ids=q_ids, d_ids=d_ids)
  a = similarity.factorized_alignment(
      a_tilde, _saliences(q_mask, q_salience), _saliences(d_mask, d_salience))
  return similarity.sparse_alignment_score(s, a)


METHODS = ("fast", "dense", "pallas", dispatch.NATIVE)


def _check_shapes(name, q, q_mask, d, d_mask, lead):
  if q.ndim != 3 or q_mask.shape != q.shape[:2]:
    raise ValueError(f"{name}: expected q [B, n, h] and q_mask [B, n], got {q.shape} and "
                     f"{q_mask.shape}")
  if d.ndim != lead + 2 or d_mask.shape != d.shape[:-1] or d.shape[-1] != q.shape[-1]:
    want = "[C, m, h]" if lead == 1 else "[B, K, m, h]"
    raise ValueError(f"{name}: expected d {want} with d_mask = d.shape[:-1] and the width of q, "
                     f"got d {d.shape}, d_mask {d_mask.shape}, q {q.shape}")


def _prepare(name, alignment, q, q_mask, d, d_mask, q_ids, d_ids, method, lead):
  """Checks the arguments and resolves the alignment and the method (outside any jit)."""
  alignment = Alignment.parse(alignment)
  _check_ids(alignment, q_ids, d_ids)
  _check_shapes(name, q, q_mask, d, d_mask, lead)
  cpu_problem = cpu_align.unsupported(alignment, d.shape[-2], q, d)
  method = dispatch.resolve(method, xla="fast", allowed=METHODS,
                            backends=dispatch.ALIGN_BACKENDS, name=name,
                            cpu_kernel=native.ALIGN if cpu_problem is None else None)
  if method == dispatch.NATIVE:  # asked for explicitly, or "auto" found it built
    if cpu_problem:
      raise ValueError(f"{name}: method={method!r}: the CPU kernel does not compute "
                       f"{cpu_problem}")
    native.ALIGN.require()
  if method == "pallas" and similarity.score_dtype(q, d) == jnp.float64 and not (
      dispatch.interpret(dispatch.ALIGN_BACKENDS)):
    method = "fast"  # accelerators' kernels have no float64
  return alignment, method


def _grouped(method, q, q_mask, u_q, d, d_mask, u_d, alignment, q_ids, d_ids, chunk_size):
  """The fast XLA path, the Pallas kernel or the CPU kernel over groups (see
  `fast_align.grouped_scores`)."""
  if method == dispatch.NATIVE:
    return cpu_align.grouped_scores(q, q_mask, u_q, d, d_mask, u_d, alignment)
  if method == "pallas":
    return pallas_align.grouped_scores(q, q_mask, u_q, d, d_mask, u_d, alignment,
                                       q_ids=q_ids, d_ids=d_ids)
  return fast_align.grouped_scores(q, q_mask, u_q, d, d_mask, u_d, alignment, q_ids=q_ids,
                                   d_ids=d_ids, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("alignment", "method", "chunk_size"))
def _align_scores(q, q_mask, d, d_mask, q_salience, d_salience, q_ids, d_ids, *, alignment,
                  method, chunk_size):
  q_mask = q_mask.astype(bool)
  d_mask = d_mask.astype(bool)
  if method == "dense":
    per_doc = jax.vmap(
        lambda qq, qm, qs, qi: jax.vmap(
            lambda dd, dm, ds, di: pair_score_dense(
                qq, qm, dd, dm, alignment, q_salience=qs, d_salience=ds, q_ids=qi, d_ids=di)
        )(d, d_mask, d_salience, d_ids))
    return per_doc(q, q_mask, q_salience, q_ids)
  u_d = None if d_salience is None else _saliences(d_mask, d_salience)[None]
  add = (lambda x: None if x is None else x[None])
  return _grouped(method, q[None], q_mask[None], _saliences(q_mask, q_salience)[None], d[None],
                  d_mask[None], u_d, alignment, add(q_ids), add(d_ids), chunk_size)[0]


def align_scores(q: jax.Array, q_mask: jax.Array, d: jax.Array, d_mask: jax.Array,
                 alignment: "Alignment | str", *, q_salience: jax.Array | None = None,
                 d_salience: jax.Array | None = None, q_ids: jax.Array | None = None,
                 d_ids: jax.Array | None = None, method: str = "auto",
                 chunk_size: int | None = None) -> jax.Array:
  """Alignment scores of every query against every document (ALIGNER Eq. 1-2).

  Compiled once per shape, alignment and method (`jax.jit` with those static), so a direct call
  costs what a call inside the caller's own jit does.

  Args:
    q: [B, n, h] query token vectors.
    q_mask: [B, n] bool.
    d: [C, m, h] document token vectors.
    d_mask: [C, m] bool.
    alignment: Alignment or spec string (static).
    q_salience: [B, n] u^q, or None for 1 on valid tokens.
    d_salience: [C, m] u^d, or None.
    q_ids: [B, n] int token ids (coil only).
    d_ids: [C, m] int token ids (coil only).
    method: "auto" (without a multi-device mesh: the Pallas kernel on TPU / GPU, the CPU kernel
      on the CPU for the calls it computes when it is built, else "fast"; `dispatch.resolve`),
      "fast" (chunked XLA, no Ã materialised for hard alignments), "pallas" (`pallas_align`;
      interpret mode on CPU), "native" (`cpu_align`: top_k / top_p on the CPU) or "dense"
      (explicit S, Ã, A; the reference).
    chunk_size: documents per chunk of the fast path (None = sized for ~1 MiB blocks).
  Returns:
    [B, C] float32 (float64 for float64 inputs), `[b, c]` = score of query b against document c.
  """
  alignment, method = _prepare("align_scores", alignment, q, q_mask, d, d_mask, q_ids, d_ids,
                               method, lead=1)
  if not alignment.needs_token_ids:
    q_ids = d_ids = None
  return _align_scores(q, q_mask, d, d_mask, q_salience, d_salience, q_ids, d_ids,
                       alignment=alignment, method=method, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("alignment", "method", "chunk_size"))
def _align_scores_candidates(q, q_mask, d, d_mask, q_salience, d_salience, q_ids, d_ids, *,
                             alignment, method, chunk_size):
  q_mask = q_mask.astype(bool)
  d_mask = d_mask.astype(bool)
  if method == "dense":
    per_candidate = jax.vmap(  # queries
        jax.vmap(  # candidates
            lambda qq, qm, qs, qi, dd, dm, ds, di: pair_score_dense(
                qq, qm, dd, dm, alignment, q_salience=qs, d_salience=ds, q_ids=qi, d_ids=di),
            in_axes=(None, None, None, None, 0, 0, 0, 0)))
    return per_candidate(q, q_mask, q_salience, q_ids, d, d_mask, d_salience, d_ids)
  u_d = None if d_salience is None else _saliences(d_mask, d_salience)
  add = (lambda x: None if x is None else x[:, None])  # one query per group
  return _grouped(method, q[:, None], q_mask[:, None], _saliences(q_mask, q_salience)[:, None],
                  d, d_mask, u_d, alignment, add(q_ids), d_ids, chunk_size)[:, 0]


def align_scores_candidates(q: jax.Array, q_mask: jax.Array, d: jax.Array, d_mask: jax.Array,
                            alignment: "Alignment | str", *,
                            q_salience: jax.Array | None = None,
                            d_salience: jax.Array | None = None,
                            q_ids: jax.Array | None = None, d_ids: jax.Array | None = None,
                            method: str = "auto", chunk_size: int | None = None) -> jax.Array:
  """Scores of every query against its own candidates (re-ranking, distillation losses).

  Compiled where defined, as `align_scores`.

  Args:
    q: [B, n, h]; q_mask: [B, n] bool; q_salience / q_ids: [B, n].
    d: [B, K, m, h]; d_mask: [B, K, m] bool; d_salience / d_ids: [B, K, m].
    alignment, method, chunk_size: as in `align_scores`.
  Returns:
    [B, K] float32 (float64 for float64 inputs), `[b, k]` = score of query b against its k-th
    candidate.
  """
  alignment, method = _prepare("align_scores_candidates", alignment, q, q_mask, d, d_mask,
                               q_ids, d_ids, method, lead=2)
  if d.shape[0] != q.shape[0]:
    raise ValueError(f"align_scores_candidates: q has {q.shape[0]} queries but d has candidates "
                     f"for {d.shape[0]}")
  if not alignment.needs_token_ids:
    q_ids = d_ids = None
  return _align_scores_candidates(q, q_mask, d, d_mask, q_salience, d_salience, q_ids, d_ids,
                                  alignment=alignment, method=method, chunk_size=chunk_size)
