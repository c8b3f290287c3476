"""The papers' reported numbers that the reproduction puts beside ours, read from data.

They live in `docs/results/papers.json`, one entry per claim ("r1" ... "r5"), each naming in
"source" the paper and the tables / sections its numbers come from and in "units" how they are
written. The tables (`r1.r1_table`, `frozen.r2_r5_tables`), the R1 heat map and the result
files (a copy of the claim's entry under "paper") all read them here, so a number is corrected
in one place.
"""

import json
import os
import pathlib
from typing import Any

PAPERS_JSON = pathlib.Path(__file__).resolve().parent.parent / "docs" / "results" / "papers.json"


def load_papers(path: str | os.PathLike = PAPERS_JSON) -> dict[str, Any]:
  """The whole file: {claim: entry} (and an "about" text)."""
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: the papers' numbers are missing (the file is kept in "
                            "the repository, beside the result files)") from None
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
  if not isinstance(data, dict):
    raise ValueError(f"{path}:1: expected an object keyed by claim, got {type(data).__name__}")
  return data


def paper_numbers(claim: str, path: str | os.PathLike = PAPERS_JSON) -> dict[str, Any]:
  """The entry of `claim` ("r1" ... "r5"), a fresh copy the caller may change."""
  data = load_papers(path)
  entry = data.get(claim)
  if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
    claims = sorted(k for k, v in data.items() if isinstance(v, dict))
    raise ValueError(f"{path}: no entry with a 'source' for claim {claim!r} (entries: {claims})")
  return entry
