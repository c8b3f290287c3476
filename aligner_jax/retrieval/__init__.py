"""Retrieval paths: the token index with refinement (ALIGNER), dense pooled vectors, BM25, and
re-ranking a first-stage run with any scorer.

Public API:
  QueryBatch, Candidates, candidate_documents, all_documents, refine, retrieve, to_run,
  top_documents, refine_many                           (token_retrieval.py)
  first_stage: XTR scores of the retrieved candidates   (first_stage.py)
  dense_search                                         (dense.py)
  BM25                                                 (bm25.py)
  rerank, token_scorer, alignment_pair_fn, lite_pair_fn  (rerank.py)
"""

from aligner_jax.retrieval import first_stage
from aligner_jax.retrieval.bm25 import BM25
from aligner_jax.retrieval.dense import dense_search
from aligner_jax.retrieval.rerank import alignment_pair_fn
from aligner_jax.retrieval.rerank import lite_pair_fn
from aligner_jax.retrieval.rerank import rerank
from aligner_jax.retrieval.rerank import token_scorer
from aligner_jax.retrieval.token_retrieval import Candidates
from aligner_jax.retrieval.token_retrieval import QueryBatch
from aligner_jax.retrieval.token_retrieval import all_documents
from aligner_jax.retrieval.token_retrieval import candidate_documents
from aligner_jax.retrieval.token_retrieval import refine
from aligner_jax.retrieval.token_retrieval import refine_many
from aligner_jax.retrieval.token_retrieval import retrieve
from aligner_jax.retrieval.token_retrieval import to_run
from aligner_jax.retrieval.token_retrieval import top_documents

__all__ = [
    "BM25", "Candidates", "QueryBatch", "alignment_pair_fn", "all_documents",
    "candidate_documents", "dense_search", "first_stage", "lite_pair_fn", "refine", "refine_many",
    "rerank", "retrieve", "to_run", "token_scorer", "top_documents",
]
