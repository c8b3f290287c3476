"""Command line of the token index: `python -m aligner_jax.index VERB ...`.

Verbs:
  verify INDEX_DIR   checks every file of the index against its manifests, SHA-256 included
                     (after copying an index, or from time to time); prints one line per
                     shard, "OK" or the problem, and exits 1 when any shard has a problem
                     (2 when INDEX_DIR holds no readable index).

A verb is a function `(args) -> exit code` registered in `VERBS` with the function that adds
its arguments to its sub-parser.
"""

import argparse
import sys
from typing import Callable, Sequence

from aligner_jax.index.files import IndexFileError
from aligner_jax.index.token_index import verify_index


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("index_dir", metavar="INDEX_DIR", help="the index (holding index.json)")


def verify(args: argparse.Namespace) -> int:
  try:
    report = verify_index(args.index_dir)
  except IndexFileError as e:
    print(f"{args.index_dir}: not a readable index: {e}", file=sys.stderr)
    return 2
  for name, problem in report.items():
    print(f"{name}: {'OK' if problem is None else f'PROBLEM: {problem}'}", flush=True)
  bad = sum(problem is not None for problem in report.values())
  summary = f"{len(report) - bad} of {len(report)} shards OK"
  print(summary if not bad else f"{summary}; {bad} with a problem", flush=True)
  return 1 if bad else 0


# name -> (help, add the arguments, run)
VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                       Callable[[argparse.Namespace], int]]] = {
    "verify": ("check every file of an index against its manifests (SHA-256 included)",
               _verify_arguments, verify),
}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m aligner_jax.index",
                                   description="Token index tools.")
  verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
  for name, (help_text, add_arguments, _) in VERBS.items():
    add_arguments(verbs.add_parser(name, help=help_text, description=help_text))
  args = parser.parse_args(argv)
  return VERBS[args.verb][2](args)


if __name__ == "__main__":
  sys.exit(main())
