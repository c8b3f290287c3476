"""Token index for multi-vector retrieval: pruned document tokens in per-shard MIPS indexes
(ScaNN or exact) plus the stored vectors that refinement scores.

Public API:
  TokenStore, from_padded, concatenate        ragged per-document token vectors (store.py)
  pq                                          product quantisation of vectors ("pq:M")
  prune_budget, top_salience_mask, prune_store  top-β salience pruning (pruning.py)
  IndexConfig, build_token_index, TokenIndex  building and searching (token_index.py)
  save_index, load_index, index_exists        checksummed export / memory-mapped load
  verify_index                                every file against its SHA-256 (also
                                              `python -m aligner_jax.index verify INDEX_DIR`)
  IndexFileError                              raised for corrupted or mismatched files
  add_documents, delete_documents, compact    a published index changed as new generations
                                              (generations.py; also the `add`, `delete`,
                                              `compact` verbs of `python -m aligner_jax.index`)
"""

from aligner_jax.index import pq
from aligner_jax.index.files import IndexFileError
from aligner_jax.index.generations import IndexBusyError
from aligner_jax.index.generations import UnknownDocumentsError
from aligner_jax.index.generations import add_documents
from aligner_jax.index.generations import compact
from aligner_jax.index.generations import current_generation
from aligner_jax.index.generations import delete_documents
from aligner_jax.index.pruning import prune_budget
from aligner_jax.index.pruning import prune_store
from aligner_jax.index.pruning import top_salience_mask
from aligner_jax.index.token_index import IndexConfig
from aligner_jax.index.token_index import TokenIndex
from aligner_jax.index.token_index import build_token_index
from aligner_jax.index.token_index import index_exists
from aligner_jax.index.token_index import load_index
from aligner_jax.index.token_index import save_index
from aligner_jax.index.token_index import verify_index
from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store import concatenate
from aligner_jax.index.token_store import from_padded

__all__ = [
    "IndexBusyError", "IndexConfig", "IndexFileError", "TokenIndex", "TokenStore",
    "UnknownDocumentsError", "add_documents", "build_token_index", "compact", "concatenate",
    "current_generation", "delete_documents", "from_padded", "index_exists", "load_index",
    "prune_budget", "prune_store", "pq", "save_index", "top_salience_mask", "verify_index",
]
