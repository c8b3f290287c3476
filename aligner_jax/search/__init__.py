"""Text search over a token index, with the encoder that built it; adding and deleting documents.

Public API:
  Searcher               open(index_dir, model=None) -> search(queries, k, alignment, filter),
                         add(documents), delete(ids), reload()     (searcher.py)
  EncoderMismatchError   opening an index with another encoder than the one that built it
  FilterError, parse_filters   `filter=` values and the command line's --filter (filters.py)
Command line: `python -m aligner_jax.search INDEX_DIR "query" [-k 10] [--alignment top_k:4]
[--filter ...] [--json]` (__main__.py).
"""

from aligner_jax.eval.encoder_record import EncoderMismatchError
from aligner_jax.search.filters import FilterError
from aligner_jax.search.filters import parse_filters
from aligner_jax.search.searcher import Searcher

__all__ = ["EncoderMismatchError", "FilterError", "Searcher", "parse_filters"]
