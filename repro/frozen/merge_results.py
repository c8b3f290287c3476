"""One result file from runs of the same R2 / R3 job split by gate over several processes.

`python -m repro.frozen.merge_results OUT.json IN.json [IN.json ...] [--gates lp,relu,...]`
(from the repository root) writes OUT.json, its table (`OUT.md`, as the jobs write it) and,
for R3, the gates figure beside the other figures (`--figure PATH`). The inputs must be the
same claim with the same set-up apart from their gates, and no gate may appear twice; the
merged set-up lists the gates in `--gates` order (default: the inputs' order) and records
where each came from.
"""

import argparse
import json
import pathlib
from typing import Any, Mapping, Sequence

from aligner_jax.io import atomic_write
from aligner_jax.io import write_json
from repro.frozen import r2_r5_figures
from repro.frozen import r2_r5_tables

_PER_RUN = ("created", "machine", "wall_seconds")


def _shared_setup(setup: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in setup.items() if k != "gates"}


def merge(contents: Sequence[Mapping[str, Any]], names: Sequence[str],
          gates: Sequence[str] | None = None) -> dict[str, Any]:
  """The merged result dict of `contents` (read from the files `names`)."""
  first = contents[0]
  if first["claim"] not in ("r2", "r3"):
    raise ValueError(f"{names[0]}: only R2 / R3 results are split by gate, not {first['claim']}")
  results: dict[str, Any] = {}
  origin: dict[str, str] = {}
  for content, name in zip(contents, names):
    if content["claim"] != first["claim"]:
      raise ValueError(f"{name}: claim {content['claim']} differs from {names[0]}'s")
    if _shared_setup(content["setup"]) != _shared_setup(first["setup"]):
      raise ValueError(f"{name}: its set-up differs from {names[0]}'s beyond the gates")
    for gate, entry in content["results"].items():
      if gate in results:
        raise ValueError(f"{name}: gate {gate!r} is also in {origin[gate]}")
      results[gate], origin[gate] = entry, name
  order = list(gates) if gates else list(results)
  if sorted(order) != sorted(results):
    raise ValueError(f"--gates {order} must list exactly the merged gates {list(results)}")
  return {**{k: v for k, v in first.items() if k not in _PER_RUN + ("results", "setup")},
          "setup": {**first["setup"], "gates": order},
          "results": {g: results[g] for g in order},
          "merged_from": [{"file": n, "gates": list(c["results"]),
                           **{k: c.get(k) for k in _PER_RUN}}
                          for c, n in zip(contents, names)]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("output")
  parser.add_argument("inputs", nargs="+")
  parser.add_argument("--gates", default="")
  parser.add_argument("--figure", default="")
  args = parser.parse_args(argv)
  contents = [json.loads(pathlib.Path(p).read_text(encoding="utf-8")) for p in args.inputs]
  merged = merge(contents, args.inputs, [g for g in args.gates.split(",") if g])
  out = pathlib.Path(args.output)
  write_json(out, merged)
  atomic_write(out.with_suffix(".md"), r2_r5_tables.table(merged))
  if args.figure and merged["claim"] == "r3":
    ratio = merged["results"][next(iter(merged["results"]))]["summary"][0]["query_ratio"]
    r2_r5_figures.plot_gates(merged["results"], args.figure, query_ratio=ratio, title=(
        f"{merged['setup']['data']['name']} {merged['setup']['data']['test_split']}: salience "
        f"gates, β^q = {100 * ratio:g}%"))
  print(f"wrote {out} and {out.with_suffix('.md')}", flush=True)
  return merged


if __name__ == "__main__":
  main()
