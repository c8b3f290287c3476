"""Command line: `python -m aligner_jax.search INDEX_DIR "query text" [options]`.

Searches the index with the encoder it records (`Searcher.open(INDEX_DIR)`, or `--model`) and
prints a ranked table: rank, document id, score and, when the document's stored metadata has a
"title" or "text", the start of it. `--json` prints `[{"doc_id": ..., "score": ...}, ...]`
instead (a list of such lists with several queries). Options:

  -k N                 results per query (10)
  --alignment SPEC     refinement alignment, e.g. top_k:4 (the index's recorded default)
  --filter SPEC        ids:FILE or KEY=VALUE over the metadata; repeatable, all must hold
                       (`filters.py`)
  --model DIR          the encoder (must be the one that built the index; default: recorded)
  --json               machine-readable output

Exit status: 0 with results, 2 on bad input (a missing or unreadable index, one without an
encoder record, another encoder, a bad filter or alignment), with the problem on stderr.
"""

import argparse
import json
import sys
from typing import Sequence

_SNIPPET = 70


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m aligner_jax.search",
                                   description="Search a token index with text.")
  parser.add_argument("index_dir", metavar="INDEX_DIR", help="the index (holding index.json)")
  parser.add_argument("queries", metavar="QUERY", nargs="+", help="query text(s)")
  parser.add_argument("-k", type=int, default=10, help="results per query (10)")
  parser.add_argument("--alignment", default=None,
                      help="refinement alignment, e.g. top_k:4 (default: the index's)")
  parser.add_argument("--filter", action="append", default=[], metavar="SPEC",
                      help="ids:FILE or KEY=VALUE over document metadata; repeatable")
  parser.add_argument("--model", default=None,
                      help="the encoder directory (default: the one the index records)")
  parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
  return parser


def _snippet(metadata: dict) -> str:
  for key in ("title", "text"):
    value = metadata.get(key)
    if isinstance(value, str) and value.strip():
      text = " ".join(value.split())
      return text if len(text) <= _SNIPPET else text[:_SNIPPET - 1] + "…"
  return ""


def _table(searcher, results: list[tuple[str, float]]) -> str:
  rows = [(str(rank), doc_id, f"{score:.4f}", _snippet(searcher.metadata(doc_id)))
          for rank, (doc_id, score) in enumerate(results, start=1)]
  if not rows:
    return "no results"
  header = ("rank", "doc_id", "score", "snippet")
  show_snippet = any(r[3] for r in rows)
  columns = 4 if show_snippet else 3
  widths = [max(len(r[c]) for r in [header, *rows]) for c in range(columns)]
  line = lambda r: "  ".join(  # noqa: E731
      r[c].rjust(widths[c]) if c in (0, 2) else r[c].ljust(widths[c])
      for c in range(columns)).rstrip()
  return "\n".join([line(header), *map(line, rows)])


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  if args.k < 1:
    print(f"error: -k must be positive, got {args.k}", file=sys.stderr)
    return 2
  # Imported here so that `--help` and usage errors answer at once.
  from aligner_jax.scoring import Alignment  # pylint: disable=g-import-not-at-top
  from aligner_jax.search.filters import parse_filters  # pylint: disable=g-import-not-at-top
  from aligner_jax.search.searcher import Searcher  # pylint: disable=g-import-not-at-top
  try:
    if args.alignment is not None:
      Alignment.parse(args.alignment)
    query_filter = parse_filters(args.filter)
    searcher = Searcher.open(args.index_dir, args.model)
    results = searcher.search(args.queries, k=args.k, alignment=args.alignment,
                              filter=query_filter)
  except (ValueError, TypeError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.json:
    out = [[{"doc_id": d, "score": s} for d, s in per_query] for per_query in results]
    print(json.dumps(out[0] if len(out) == 1 else out))
    return 0
  for query, per_query in zip(args.queries, results):
    if len(args.queries) > 1:
      print(f"query: {query}")
    print(_table(searcher, per_query))
  return 0


if __name__ == "__main__":
  sys.exit(main())
