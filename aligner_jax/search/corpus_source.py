"""New documents from a BEIR `corpus.jsonl`, encoded with the encoder an index records: the
`--corpus` source of `python -m aligner_jax.index add INDEX_DIR --corpus corpus.jsonl`.

The file is read with every check of `data.beir.read_corpus_jsonl` (a bad line is reported as
`file:line: problem`, and nothing is added); its documents are encoded by the index's own
encoder (`Searcher.open(INDEX_DIR)`: model, vocabulary, document length and vector format
from the index's record) and handed to `index.generations.add_documents` by the command line.
"""

import pathlib
from typing import Any

from aligner_jax.data.beir import read_corpus_jsonl
from aligner_jax.data.errors import ProblemLog
from aligner_jax.index import TokenStore
from aligner_jax.search.searcher import Searcher


def read_corpus(index_dir: str | pathlib.Path, corpus_path: str | pathlib.Path, *,
                strict: bool | None = None) -> tuple[TokenStore, list[dict[str, Any]]]:
  """(encoded store, metadata) of the documents of `corpus_path` for the index in `index_dir`.

  Raises:
    DataError: listing every `file:line: problem` of the corpus file.
    IndexFileError, EncoderMismatchError: the index has no usable encoder record.
  """
  log = ProblemLog()
  corpus = read_corpus_jsonl(corpus_path, log, strict=strict)
  log.raise_if_any()
  if not len(corpus):
    raise ValueError(f"{corpus_path}: no documents to add")
  rows = range(len(corpus))
  ids, texts, metadata = corpus.read_rows(rows, with_metadata=True)
  searcher = Searcher.open(index_dir)
  return searcher.encode_texts(ids, texts, metadata), metadata
