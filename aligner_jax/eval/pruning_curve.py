"""Retrieval quality against the document pruning ratio β^d (ALIGNER §3.2, Fig. 5).

`pruning_curve` rebuilds the token index at each β^d from the same encoded corpus (each
document keeps its ⌈β^d · m⌉ most salient tokens for search and refinement), retrieves the
same encoded queries and refines with one alignment; `write_pruning_curve` writes
`pruning.json` and `pruning.png` (nDCG@10 against β^d, overall and per query family).
"""

import dataclasses
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from aligner_jax.eval import ir_metrics
from aligner_jax.index import IndexConfig
from aligner_jax.index import TokenStore
from aligner_jax.index import build_token_index
from aligner_jax.io import write_json
from aligner_jax.plots import write_png
from aligner_jax.retrieval import QueryBatch
from aligner_jax.retrieval import candidate_documents
from aligner_jax.retrieval import to_run
from aligner_jax.retrieval.runs import Run
from aligner_jax.retrieval.token_retrieval import refine_many


def curve_point(ratio: float, per_query: Mapping[str, float], family: Mapping[str, str | None],
                searched_tokens: int) -> dict[str, Any]:
  """One point: mean nDCG@10 over `per_query` (query id -> nDCG@10), overall and per family."""
  groups: dict[str, list[float]] = {}
  for q, v in per_query.items():
    if family.get(q):
      groups.setdefault(family[q], []).append(v)
  return {"prune_doc_ratio": ratio, "searched_tokens": int(searched_tokens),
          "ndcg@10": float(np.mean(list(per_query.values()))),
          "by_family": {f: float(np.mean(v)) for f, v in sorted(groups.items())}}


def pruning_curve(ratios: Sequence[float], store_fn: Callable[[], TokenStore],
                  queries: QueryBatch, qrels: Mapping[str, Mapping[str, int]], family:
                  Mapping[str, str | None], *, alignment: str, index_config: IndexConfig,
                  num_neighbors: int, prune_query_ratio: float, top_n: int,
                  known: Mapping[float, tuple[Run, int]] = (),
                  ignore_identical_ids: bool = True,
                  candidate_options: Mapping[str, Any] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
  """nDCG@10 of `alignment` at each β^d of `ratios` (see the module docstring).

  Args:
    store_fn: the encoded corpus (called once, only when a ratio needs a new index).
    known: β^d -> (run, searched tokens) already computed (the evaluation's own index).
    candidate_options: more `candidate_documents` settings, as the evaluation used them
      (num_refine, leaves_to_search).
  Returns:
    {"alignment", "points": [curve_point(...)] in the order of `ratios`}.
  """
  known = dict(known)
  store = None
  points = []
  for ratio in ratios:
    t = time.time()
    if ratio in known:
      run, tokens = known[ratio]
    else:
      store = store if store is not None else store_fn()
      index = build_token_index(store, dataclasses.replace(index_config, prune_doc_ratio=ratio))
      cands = candidate_documents(index, queries, num_neighbors=num_neighbors,
                                  prune_query_ratio=prune_query_ratio,
                                  **(candidate_options or {}))
      refined = refine_many(index, queries, cands, [alignment], top_n=top_n)
      run, tokens = to_run(queries.ids, index.doc_ids, refined[alignment]), index.num_ann_tokens
    _, pq = ir_metrics.evaluate(qrels, run, metrics=("ndcg@10",),
                                ignore_identical_ids=ignore_identical_ids)
    point = curve_point(ratio, {q: v["ndcg@10"] for q, v in pq.items()}, family, tokens)
    points.append(point)
    log(f"pruning curve: β^d = {ratio}: {alignment} nDCG@10 {point['ndcg@10']:.4f} "
        f"({tokens} searched tokens, {time.time() - t:.1f}s)")
  return {"alignment": alignment, "points": points}


def write_pruning_curve(out: pathlib.Path, curve: Mapping[str, Any]) -> None:
  """pruning.json and pruning.png (nDCG@10 against β^d, overall and per family) in `out`."""
  write_json(out / "pruning.json", dict(curve))
  points = sorted(curve["points"], key=lambda p: p["prune_doc_ratio"])
  ratios = [p["prune_doc_ratio"] for p in points]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(ratios, [p["ndcg@10"] for p in points], "o-", color="black", label="all queries")
  for family in sorted({f for p in points for f in p["by_family"]}):
    ax.plot(ratios, [p["by_family"].get(family, np.nan) for p in points], "o--", label=family)
  ax.set_xlabel(r"$\beta^d$ (fraction of document tokens kept, by salience)")
  ax.set_ylabel(f"nDCG@10 ({curve['alignment']})")
  ax.set_xlim(0, 1.05)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  write_png(fig, out / "pruning.png", dpi=100)

