"""Natural Questions tasks in DPR's formats (directory: $ALIGNER_NQ_DIR, see
`aligner_jax.data.nq` for the files).

  nq_corpus    split "corpus": psgs_w100.tsv, or the contexts of the DPR JSON files
  nq_queries   splits "train", "dev", "test": the questions (ids `<split>-<index>`)
  nq_train     split "train": biencoder-nq-train.json, first positive + hard negatives
"""

from aligner_jax.data import loaders
from aligner_jax.data import seqio_tasks


def _corpus(split):
  del split
  return loaders.nq_corpus()


def _register_all():
  vocabulary = seqio_tasks.default_vocabulary()
  seqio_tasks.register("nq_corpus", kind="corpus", splits=("corpus",), vocabulary=vocabulary,
                       loader=_corpus)
  seqio_tasks.register("nq_queries", kind="queries", splits=("train", "dev", "test"),
                       vocabulary=vocabulary, loader=loaders.nq_queries)
  seqio_tasks.register("nq_train", kind="train", splits=("train",), vocabulary=vocabulary,
                       loader=loaders.nq_train)


_register_all()
