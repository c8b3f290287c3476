"""Command line of the token index: `python -m aligner_jax.index VERB ...`.

Verbs:
  verify INDEX_DIR   checks every file of the index against its manifests, SHA-256 included
                     (after copying an index, or from time to time), tombstones and metadata
                     too; prints one line per shard, "OK" or the problem, and exits 1 when any
                     shard has a problem (2 when INDEX_DIR holds no readable index).
  add INDEX_DIR --store ENCODED_STORE_DIR [--store ...] | --corpus CORPUS_JSONL
                     adds documents as a new generation: already encoded ones (token-store
                     directories, e.g. an encode job's `corpus-<i>-of-<n>/`), or a BEIR
                     corpus.jsonl encoded with the encoder the index records (a bad line is
                     reported as file:line and nothing is added); an id already in the index
                     is an update.
  delete INDEX_DIR --ids ID [ID ...] | --ids-file FILE
                     deletes documents by id (FILE: one id a line) as a new generation; an id
                     that names no live document is an error unless --ignore-missing.
  compact INDEX_DIR [--max-shard-tokens N]
                     rewrites shards with deleted documents and merges small ones.
The changing verbs are `generations.py`'s functions: each publishes a new `index.json`
generation or, on bad input, exits non-zero with the problem on stderr and the index as it
was (exit 2 when INDEX_DIR holds no readable index, 1 for any other problem).

A verb is a function `(args) -> exit code` registered in `VERBS` with the function that adds
its arguments to its sub-parser. Where `add` reads its documents from is a table too,
`ADD_SOURCES`: option name -> (the function adding the option to the verb's group of mutually
exclusive sources, the function turning the parsed arguments into (TokenStore, metadata or
None)); another source (e.g. texts encoded by a model) is one more entry.
"""

import argparse
import sys
from typing import Any, Callable, Sequence

from aligner_jax.data.lines import read_id_lines
from aligner_jax.index import generations
from aligner_jax.index.files import IndexFileError
from aligner_jax.index.token_index import verify_index
from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store import concatenate
from aligner_jax.index.token_store_io import load_token_store


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


def _log(message: str) -> None:
  print(message, flush=True)


def _changed(verb: str, index_dir: str, change: Callable[[], int]) -> int:
  """Runs one change of the index; its problems become a message and an exit code."""
  try:
    generation = change()
  except IndexFileError as e:
    print(f"{verb}: {index_dir}: not a readable index, or a damaged one: {e}", file=sys.stderr)
    return 2
  except ValueError as e:  # bad input, busy index: nothing was changed
    print(f"{verb}: {e}", file=sys.stderr)
    return 1
  print(f"{index_dir}: generation {generation}", flush=True)
  return 0


def _store_option(group: Any) -> None:
  group.add_argument("--store", action="append", metavar="ENCODED_STORE_DIR",
                     help="a token-store directory of encoded documents (repeatable)")


def _read_stores(args: argparse.Namespace) -> tuple[TokenStore, None]:
  """The documents of every --store, in order (checksums verified); their own metadata."""
  return concatenate([load_token_store(path) for path in args.store]), None


def _corpus_option(group: Any) -> None:
  group.add_argument("--corpus", metavar="CORPUS_JSONL",
                     help="a BEIR corpus.jsonl, encoded with the encoder the index records")


def _read_corpus(args: argparse.Namespace) -> tuple[TokenStore, list[dict[str, Any]]]:
  """The documents of --corpus encoded by the index's recorded encoder (`search.corpus_source`:
  a command line may reach the searcher above this layer, and only this verb loads a model)."""
  from aligner_jax.search.corpus_source import read_corpus  # pylint: disable=g-import-not-at-top
  return read_corpus(args.index_dir, args.corpus)


# option name -> (add the option to the group of sources, read (store, metadata | None))
ADD_SOURCES: dict[str, tuple[Callable[[Any], None],
                             Callable[[argparse.Namespace],
                                      tuple[TokenStore, list[dict[str, Any]] | None]]]] = {
    "store": (_store_option, _read_stores),
    "corpus": (_corpus_option, _read_corpus),
}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("index_dir", metavar="INDEX_DIR", help="the index (holding index.json)")
  sources = parser.add_mutually_exclusive_group(required=True)
  for add_option, _ in ADD_SOURCES.values():
    add_option(sources)


def add(args: argparse.Namespace) -> int:
  name = next(n for n in ADD_SOURCES if getattr(args, n, None) is not None)

  try:
    store, metadata = ADD_SOURCES[name][1](args)
  except ValueError as e:  # IndexFileError included: a damaged or missing source
    print(f"add: cannot read the new documents: {e}", file=sys.stderr)
    return 1
  return _changed("add", args.index_dir,
                  lambda: generations.add_documents(args.index_dir, store, metadata, log=_log))


def _delete_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("index_dir", metavar="INDEX_DIR", help="the index (holding index.json)")
  ids = parser.add_mutually_exclusive_group(required=True)
  ids.add_argument("--ids", nargs="+", metavar="ID", help="ids of the documents to delete")
  ids.add_argument("--ids-file", metavar="FILE", help="a file of ids, one a line")
  parser.add_argument("--ignore-missing", action="store_true",
                      help="skip ids that name no live document instead of failing")


def read_ids_file(path: str) -> list[str]:
  """The ids of a file, one a line (surrounding white space and blank lines ignored).

  Raises:
    ValueError: naming the file (and line) when it cannot be read or holds no id.
  """
  ids = read_id_lines(path)
  if not ids:
    raise ValueError(f"{path}: holds no id")
  return ids


def delete(args: argparse.Namespace) -> int:
  def change() -> int:
    ids = args.ids if args.ids is not None else read_ids_file(args.ids_file)
    return generations.delete_documents(args.index_dir, ids, log=_log,
                                        missing="ignore" if args.ignore_missing else "error")

  return _changed("delete", args.index_dir, change)


def _compact_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("index_dir", metavar="INDEX_DIR", help="the index (holding index.json)")
  parser.add_argument("--max-shard-tokens", type=int, default=None, metavar="N",
                      help="searched tokens a merged shard may hold (default: the index's "
                      "max_shard_tokens, else its largest shard's)")


def compact(args: argparse.Namespace) -> int:
  if args.max_shard_tokens is not None and args.max_shard_tokens < 1:
    print(f"compact: --max-shard-tokens must be positive, got {args.max_shard_tokens}",
          file=sys.stderr)
    return 1
  return _changed("compact", args.index_dir, lambda: generations.compact(
      args.index_dir, max_shard_tokens=args.max_shard_tokens, log=_log))


# name -> (help, add the arguments, run)
VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                       Callable[[argparse.Namespace], int]]] = {
    "verify": ("check every file of an index against its manifests (SHA-256 included)",
               _verify_arguments, verify),
    "add": ("add encoded documents to an index as a new generation", _add_arguments, add),
    "delete": ("delete documents of an index by id as a new generation", _delete_arguments,
               delete),
    "compact": ("rewrite shards with deleted documents and merge small ones",
                _compact_arguments, compact),
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
