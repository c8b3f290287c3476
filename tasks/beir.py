"""BEIR tasks, for every dataset of the benchmark (plus CISI, which ships in BEIR layout).

  beir_<name>_corpus   split "corpus": every document, with `doc_id`
  beir_<name>_queries  splits "train", "dev", "test": the queries judged in qrels/<split>.tsv
  beir_<name>_train    split "train" (datasets with a train split): each judged pair with a
                       pool of BM25 hard negatives mined from the corpus (cached in
                       $ALIGNER_CACHE_DIR when set)
  beir_<name>_train_teacher   split "train": the teacher-scoring job's teacher_scores.jsonl
                       (a cross-encoder's scores of each training query's candidates) from
                       $ALIGNER_TEACHER_<NAME>_DIR (or the data key "teacher/<name>"), with
                       `teacher_scores`, for distillation

Directory: $ALIGNER_BEIR_<NAME>_DIR, or $ALIGNER_BEIR_DIR/<directory name> (e.g.
ALIGNER_BEIR_DIR=/data/beir reads /data/beir/scifact/{corpus.jsonl,queries.jsonl,qrels/}).
"""

import functools

from aligner_jax.data import loaders
from aligner_jax.data import seqio_tasks

# task name part -> (directory name under ALIGNER_BEIR_DIR, has a train split)
DATASETS = {
    "msmarco": ("msmarco", True),
    "trec_covid": ("trec-covid", False),
    "nfcorpus": ("nfcorpus", True),
    "nq": ("nq", False),
    "hotpotqa": ("hotpotqa", True),
    "fiqa": ("fiqa", True),
    "arguana": ("arguana", False),
    "webis_touche2020": ("webis-touche2020", False),
    "quora": ("quora", False),
    "dbpedia_entity": ("dbpedia-entity", False),
    "scidocs": ("scidocs", False),
    "fever": ("fever", True),
    "climate_fever": ("climate-fever", False),
    "scifact": ("scifact", True),
    "cisi": ("cisi", False),
    **{f"cqadupstack_{sub}": (f"cqadupstack/{sub}", False) for sub in (
        "android", "english", "gaming", "gis", "mathematica", "physics", "programmers",
        "stats", "tex", "unix", "webmasters", "wordpress")},
}
QUERY_SPLITS = ("train", "dev", "test")


def _corpus(split, *, key):
  del split
  return loaders.beir_corpus(key)


def _register_all():
  vocabulary = seqio_tasks.default_vocabulary()
  for name, (directory, has_train) in DATASETS.items():
    key = f"beir/{directory}"
    seqio_tasks.register(
        f"beir_{name}_corpus", kind="corpus", splits=("corpus",), vocabulary=vocabulary,
        loader=functools.partial(_corpus, key=key))
    seqio_tasks.register(
        f"beir_{name}_queries", kind="queries", splits=QUERY_SPLITS, vocabulary=vocabulary,
        loader=functools.partial(loaders.beir_queries, key))
    if has_train:
      seqio_tasks.register(
          f"beir_{name}_train", kind="train", splits=("train",), vocabulary=vocabulary,
          loader=functools.partial(loaders.beir_bm25_train, key))
      seqio_tasks.register(
          f"beir_{name}_train_teacher", kind="train", splits=("train",), vocabulary=vocabulary,
          teacher_scores=True, loader=functools.partial(loaders.beir_teacher_train, key))


_register_all()
