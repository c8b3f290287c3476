"""Tasks on the built-in demo collection (`aligner_jax.data.demo_collection`).

  demo_corpus    split "corpus": every document with `doc_id`
  demo_queries   splits "train", "dev", "test": judged queries (metadata carries the family)
  demo_train     split "train": each training query's positive with its hard-negative pool

Directory: $ALIGNER_DEMO_DIR (written by `python -m aligner_jax.data.demo_collection`); when it
is not set the collection of seed 0 is generated in memory on first use (a few seconds).
"""

from aligner_jax.data import loaders
from aligner_jax.data import seqio_tasks


def _corpus(split):
  del split
  return loaders.demo_corpus()


def _register_all():
  vocabulary = seqio_tasks.default_vocabulary()
  seqio_tasks.register("demo_corpus", kind="corpus", splits=("corpus",), vocabulary=vocabulary,
                       loader=_corpus)
  seqio_tasks.register("demo_queries", kind="queries", splits=("train", "dev", "test"),
                       vocabulary=vocabulary, loader=loaders.demo_queries)
  seqio_tasks.register("demo_train", kind="train", splits=("train",), vocabulary=vocabulary,
                       loader=loaders.demo_train)


_register_all()
