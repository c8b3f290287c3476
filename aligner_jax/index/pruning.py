"""Salience pruning of stored tokens (ALIGNER §3.2): keep each document's top-β^d tokens.

A document of m stored tokens keeps `prune_budget(m, β)` = ⌈β · m⌉ tokens, chosen by salience,
highest first; ties keep the earlier token. β = 1 keeps everything. The same rule picks the
top-β^q query tokens that are searched in the token index. This is `scoring.prune_tokens` in
NumPy over ragged documents (β read as the same exact fraction, so ⌈0.1 · 30⌉ is 3), which
large corpora need without padding.
"""

import numpy as np

from aligner_jax.index.token_store import TokenStore
from aligner_jax.scoring.selection import ratio_fraction


def check_ratio(ratio: float, name: str = "pruning ratio") -> float:
  if not 0.0 < ratio <= 1.0:
    raise ValueError(f"{name} must be in (0, 1], got {ratio}")
  return float(ratio)


def prune_budget(lengths: np.ndarray | int, ratio: float) -> np.ndarray:
  """⌈ratio · m⌉ tokens kept of m (0 for an empty document): int64 of the shape of `lengths`."""
  check_ratio(ratio)
  frac = ratio_fraction(ratio, name="pruning ratio")
  lengths = np.asarray(lengths, np.int64)
  return (frac.numerator * lengths + frac.denominator - 1) // frac.denominator


def top_salience_mask(salience: np.ndarray, mask: np.ndarray, ratio: float) -> np.ndarray:
  """Padded form: which valid tokens are among the top-⌈ratio · m_valid⌉ by salience.

  Args:
    salience: [B, L] float.
    mask: [B, L] bool, True on valid tokens.
    ratio: β in (0, 1].

  Returns:
    [B, L] bool, a subset of `mask`.
  """
  salience = np.asarray(salience, np.float32)
  mask = np.asarray(mask, bool)
  budget = prune_budget(mask.sum(axis=1), ratio)
  # Stable sort of -salience with padding pushed last: ties keep the earlier position.
  keys = np.where(mask, -salience, np.inf)
  order = np.argsort(keys, axis=1, kind="stable")
  rank = np.empty_like(order)
  np.put_along_axis(rank, order, np.arange(mask.shape[1])[None, :].repeat(len(mask), 0), axis=1)
  return mask & (rank < budget[:, None])


def kept_rows(store: TokenStore, ratio: float) -> np.ndarray:
  """Rows of `store` that survive pruning at β^d = `ratio`, sorted: [T_kept] int64."""
  check_ratio(ratio, "document pruning ratio β^d")
  if ratio >= 1.0:
    return np.arange(store.num_tokens, dtype=np.int64)
  if store.salience is None:
    raise ValueError(f"pruning documents to β^d = {ratio} needs token saliences, but the "
                     "encoded documents have none (the model has no salience head); use "
                     "a pruning ratio of 1.0")
  lengths = store.lengths
  budget = prune_budget(lengths, ratio)
  doc_of_row = np.repeat(np.arange(store.num_docs), lengths)
  # Sort rows by (document, -salience, position); the rank within a document decides.
  order = np.lexsort((np.arange(store.num_tokens), -store.salience.astype(np.float64),
                      doc_of_row))
  rank = np.empty(store.num_tokens, np.int64)
  rank[order] = np.arange(store.num_tokens) - store.offsets[doc_of_row[order]]
  return np.flatnonzero(rank < budget[doc_of_row]).astype(np.int64)


def prune_store(store: TokenStore, ratio: float) -> TokenStore:
  """`store` with only each document's top-β^d tokens by salience."""
  if ratio >= 1.0:
    check_ratio(ratio, "document pruning ratio β^d")
    return store
  return store.select_rows(kept_rows(store, ratio))
