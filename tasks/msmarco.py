"""MS MARCO passage ranking tasks (directory: $ALIGNER_MSMARCO_DIR, see
`aligner_jax.data.msmarco` for the files).

  msmarco_passage_corpus    split "corpus": collection.tsv with `doc_id`
  msmarco_passage_queries   splits "train", "dev", "dev.small", "eval", ...: queries.<split>.tsv
                            (the judged ones when qrels.<split>.tsv exists, else all)
  msmarco_passage_train     split "train": triples by id (qidpidtriples), one group per
                            (query, positive) with its triples' negatives as the pool
  msmarco_passage_train_hard_negatives   hard-negative JSONL (scores ignored)
  msmarco_passage_train_distill          teacher-score triples, with `teacher_scores`
  msmarco_passage_train_distill_hard_negatives
                            hard-negative JSONL with teacher scores for every document (e.g.
                            a teacher's top documents per query for Menon et al.'s recipes)
"""

import functools

from aligner_jax.data import loaders
from aligner_jax.data import seqio_tasks

QUERY_SPLITS = ("train", "dev", "dev.small", "eval", "eval.small")
TRAIN_TASKS = {
    "msmarco_passage_train": ("triples", False),
    "msmarco_passage_train_hard_negatives": ("hard_negatives", False),
    "msmarco_passage_train_distill": ("teacher_triples", True),
    "msmarco_passage_train_distill_hard_negatives": ("hard_negatives_scored", True),
}


def _corpus(split):
  del split
  return loaders.msmarco_corpus()


def _train(split, *, fmt):
  del split
  return loaders.msmarco_train(fmt)


def _register_all():
  vocabulary = seqio_tasks.default_vocabulary()
  seqio_tasks.register("msmarco_passage_corpus", kind="corpus", splits=("corpus",),
                       vocabulary=vocabulary, loader=_corpus)
  seqio_tasks.register("msmarco_passage_queries", kind="queries", splits=QUERY_SPLITS,
                       vocabulary=vocabulary, loader=loaders.msmarco_queries)
  for name, (fmt, teacher) in TRAIN_TASKS.items():
    seqio_tasks.register(name, kind="train", splits=("train",), vocabulary=vocabulary,
                         teacher_scores=teacher, loader=functools.partial(_train, fmt=fmt))


_register_all()
