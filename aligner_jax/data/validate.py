"""Checks a dataset directory the way training and evaluation will read it, and reports.

    python -m aligner_jax.data.validate --format {beir,msmarco,nq} PATH [--split S ...]
        [--training FORMAT=FILE ...] [--max_problems N] [--strict]

Prints the counts (documents, queries, judged queries and pairs per split, training groups)
and exits 0; on bad data prints one `file:line: problem` line per problem (the first
`--max_problems`, default 20) on stderr and exits 1. A missing directory or file is a problem
like any other.

Documents with neither title nor text are legal: they are counted (`empty documents: N`) and
listed as warnings, `file:line: empty document ...`, on stderr, and the exit code stays 0.
`--strict` refuses them instead (exit 1); a judgement naming a refused document then says so
rather than calling its id unknown. Without `--strict` the `ALIGNER_STRICT_DATA` environment
variable decides, as it does for every job that reads data.

`check_dataset` is the same check as a function; the readers behind it are the ones the seqio
tasks load through, so a dataset that validates is exactly what training and evaluation see.
For BEIR directories a `hard_negatives.train.jsonl` beside the qrels (the demo collection's
training file) is checked too; for MS MARCO the training files under their usual names are.
"""

import argparse
import os
import sys
from typing import Sequence

from aligner_jax.data import beir
from aligner_jax.data import msmarco
from aligner_jax.data import nq
from aligner_jax.data import training_files
from aligner_jax.data.collection import Collection
from aligner_jax.data.errors import DEFAULT_MAX_PROBLEMS
from aligner_jax.data.errors import DataError
from aligner_jax.data.errors import ProblemLog

FORMATS = ("beir", "msmarco", "nq")
BEIR_TRAINING_FILE = "hard_negatives.train.jsonl"


def check_dataset(fmt: str, path: str | os.PathLike, *, splits: Sequence[str] | None = None,
                  training: Sequence[msmarco.TrainingFile] = (),
                  max_problems: int = DEFAULT_MAX_PROBLEMS,
                  strict: bool | None = None) -> Collection:
  """Reads and checks a dataset; raises `DataError` listing the problems.

  Args:
    fmt: "beir", "msmarco" or "nq".
    path: the dataset directory.
    splits: the splits to check (None: all present).
    training: MS MARCO training files to check (default: those under their usual names).
    max_problems: how many problems (and warnings) are listed.
    strict: refuse empty documents (None: the `ALIGNER_STRICT_DATA` environment variable).

  Returns:
    The collection; `collection.warnings` lists what is legal but worth knowing.
  """
  path = os.fspath(path)
  if fmt == "beir":
    collection = beir.read_beir(path, splits=splits, max_problems=max_problems, strict=strict)
    extra = os.path.join(path, BEIR_TRAINING_FILE)
    if os.path.isfile(extra):
      log = ProblemLog(max_problems)
      groups = training_files.read_hard_negatives_jsonl(extra, collection, log,
                                                        teacher_scores=False)
      log.raise_if_any()
      collection.training["hard_negatives"] = groups
    return collection
  if fmt == "msmarco":
    if not training and os.path.isdir(path):
      training = msmarco.find_training_files(path)
    return msmarco.read_msmarco(path, splits=splits, training=training,
                                max_problems=max_problems, strict=strict)
  if fmt == "nq":
    return nq.read_nq(path, splits=splits, max_problems=max_problems, strict=strict)
  raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def format_counts(counts: dict) -> list[str]:
  """Human-readable count lines."""
  out = []
  for key, value in counts.items():
    if key.startswith("qrels/"):
      out.append(f"  {key}: {value['queries']} queries, {value['pairs']} judged pairs "
                 f"({value['relevant_pairs']} relevant)")
    elif key == "empty_documents":
      out.append(f"  empty documents: {value} (neither title nor text; kept, see the warnings)")
    elif key.startswith("training/"):
      scores = ", with teacher scores" if value["teacher_scores"] else ""
      out.append(f"  {key}: {value['groups']} training groups, {value['negatives']} negatives"
                 f"{scores}")
    elif isinstance(value, dict):
      out.append(f"  {key}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items()))
    else:
      out.append(f"  {key}: {value}")
  return out


def _training_arg(text: str) -> msmarco.TrainingFile:
  fmt, sep, file = text.partition("=")
  if not sep or fmt not in msmarco.TRAINING_FORMATS or not file:
    raise argparse.ArgumentTypeError(
        f"expected FORMAT=FILE with FORMAT one of {', '.join(msmarco.TRAINING_FORMATS)}, "
        f"got {text!r}")
  return msmarco.TrainingFile(file, fmt)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m aligner_jax.data.validate",
      description="Check a retrieval dataset directory and print its counts.")
  parser.add_argument("--format", required=True, choices=FORMATS, help="dataset format")
  parser.add_argument("path", help="dataset directory")
  parser.add_argument("--split", action="append", default=None,
                      help="split to check (repeatable; default: every split present)")
  parser.add_argument("--training", action="append", default=[], type=_training_arg,
                      help="MS MARCO training file to check, as FORMAT=FILE with FORMAT one of "
                      + ", ".join(msmarco.TRAINING_FORMATS) + " (repeatable)")
  parser.add_argument("--max_problems", type=int, default=DEFAULT_MAX_PROBLEMS,
                      help="how many problems (and warnings) to list")
  parser.add_argument("--strict", action="store_true", default=None,
                      help="refuse documents with neither title nor text (default: keep them "
                      "with a warning, unless ALIGNER_STRICT_DATA is set)")
  args = parser.parse_args(argv)
  if args.training and args.format != "msmarco":
    parser.error("--training applies to --format msmarco")
  if args.max_problems < 1:
    parser.error("--max_problems must be at least 1")
  try:
    collection = check_dataset(args.format, args.path, splits=args.split,
                               training=args.training, max_problems=args.max_problems,
                               strict=args.strict)
  except DataError as e:
    print(f"{args.path}: {args.format} data has problems", file=sys.stderr)
    print(str(e), file=sys.stderr)
    return 1
  print(f"{args.path}: {args.format} data OK")
  print("\n".join(format_counts(collection.counts())))
  if collection.warnings:
    print(str(collection.warnings), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
