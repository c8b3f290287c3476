"""Retrieval runs: what every retriever returns, and TREC run files.

Conventions:
  * A `Run` maps query id -> {document id -> score}; higher scores rank first. Ties rank as
    trec_eval ranks them: score descending, then document id descending (`ranked`), so the ranks
    written to a run file are the ones the metrics see.
  * A TREC run file has six whitespace-separated columns per line:
    `query-id Q0 doc-id rank score run-name`, ranks from 1.
"""

import math
import os
from typing import Mapping

from aligner_jax.io import atomic_write

Run = dict[str, dict[str, float]]


class RunFileError(ValueError):
  """A TREC run file line that cannot be read; names the file and line."""


def ranked(docs: Mapping[str, float]) -> list[tuple[str, float]]:
  """(doc id, score) best first, ties by document id descending (trec_eval's order)."""
  return sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def cut_run(run: Mapping[str, Mapping[str, float]], depth: int) -> Run:
  """Each query's top-`depth` documents in `ranked` order."""
  return {q: dict(ranked(docs)[:depth]) for q, docs in run.items()}


def write_trec_run(path: str | os.PathLike, run: Mapping[str, Mapping[str, float]], *,
                   run_name: str = "aligner_jax") -> None:
  """Writes `run` as a 6-column TREC run file (atomically), queries in sorted order."""
  if not run_name or any(c.isspace() for c in run_name):
    raise ValueError(f"run name must be one word, got {run_name!r}")
  lines = []
  for qid in sorted(run):
    _check_id(qid, "query id")
    for rank, (did, score) in enumerate(ranked(run[qid]), start=1):
      _check_id(did, "document id")
      if not math.isfinite(score):
        raise ValueError(f"query {qid!r} document {did!r}: score {score} is not finite")
      lines.append(f"{qid} Q0 {did} {rank} {score:.6f} {run_name}\n")
  atomic_write(path, "".join(lines))


def _check_id(value: str, what: str) -> None:
  if not value or any(c.isspace() for c in value):
    raise ValueError(f"{what} {value!r} cannot be written to a TREC run (empty or whitespace)")


def read_trec_run(path: str | os.PathLike) -> Run:
  """Reads a 6-column TREC run file; errors name the file and line."""
  run: Run = {}
  path = os.fspath(path)
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      cols = line.split()
      if len(cols) != 6:
        raise RunFileError(f"{path}:{number}: expected 6 columns "
                           f"(query-id Q0 doc-id rank score run-name), found {len(cols)}")
      qid, _, did, rank, score, _ = cols
      try:
        int(rank)
        value = float(score)
      except ValueError:
        raise RunFileError(f"{path}:{number}: rank {rank!r} / score {score!r} are not "
                           "numbers") from None
      docs = run.setdefault(qid, {})
      if did in docs:
        raise RunFileError(f"{path}:{number}: document {did!r} appears twice for query {qid!r}")
      docs[did] = value
  return run
