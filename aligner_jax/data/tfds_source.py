"""BEIR from a prepared TensorFlow Datasets directory (TFDS's `beir/<config>` builder).

TFDS has a `beir` builder (configs such as `scifact`, `trec_covid`, `cqadupstack.android`) with
splits `query` and `passage` and one split per qrels file (`train`, `validation`, `test`). This
machine cannot download, so only a directory prepared elsewhere
(`tfds build beir/scifact --data_dir=DIR`) can be read; pointing a BEIR data key at
`tfds:DIR` (e.g. `ALIGNER_BEIR_SCIFACT_DIR=tfds:/data/tensorflow_datasets`) makes the BEIR
tasks read it. The result is the same `Collection` the file reader builds (TFDS's
`validation` split is called `dev`, as in BEIR's files), with the same checks.

TFDS stores documents as `passage` plus a JSON `passage_metadata` whose `title` is the title;
queries as `query`; qrels rows carry `query_id`, `passage_id` and a float `score`.
"""

import json
import os

from aligner_jax.data.collection import Collection
from aligner_jax.data.collection import admit_empty_document
from aligner_jax.data.collection import new_corpus
from aligner_jax.data.collection import new_queries
from aligner_jax.data.errors import DEFAULT_MAX_PROBLEMS
from aligner_jax.data.errors import ProblemLog
from aligner_jax.data.errors import fail
from aligner_jax.data.errors import strict_mode

PREFIX = "tfds:"
_SPLIT_NAMES = {"validation": "dev"}


def tfds_config(name: str) -> str:
  """TFDS config of a BEIR task name part ("cqadupstack_android" -> "cqadupstack.android")."""
  if name.startswith("cqadupstack_"):
    return "cqadupstack." + name[len("cqadupstack_"):]
  return name.replace("-", "_").replace("/", ".")


class TfdsBeirSource:
  """Reads one BEIR config from a prepared TFDS data directory."""

  def __init__(self, config: str, data_dir: str | os.PathLike):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    self.config = config
    self.data_dir = os.fspath(data_dir)
    try:
      self.builder = tfds.builder(f"beir/{config}", data_dir=self.data_dir)
    except Exception as e:  # TFDS raises several types for an unknown config
      raise fail(self.data_dir, None, f"TFDS has no BEIR config {config!r}: {e}") from e

  @property
  def prepared(self) -> bool:
    return self.builder.is_prepared()

  def read(self, *, name: str | None = None, max_problems: int = DEFAULT_MAX_PROBLEMS,
           strict: bool | None = None) -> Collection:
    """The collection; raises `DataError` when the directory holds no prepared data. A
    document with neither title nor text is kept with a warning unless `strict` (None: the
    `ALIGNER_STRICT_DATA` environment variable) refuses it, as in `beir.read_beir`."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    if not self.prepared:
      raise fail(self.builder.data_dir, None,
                 f"TFDS dataset beir/{self.config} is not prepared here (prepare it where "
                 f"there is internet: tfds build beir/{self.config} --data_dir={self.data_dir})")
    where = f"{self.builder.data_dir} (TFDS beir/{self.config})"
    strict = strict_mode(strict)
    log = ProblemLog(max_problems)
    corpus, queries = new_corpus(), new_queries()
    text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
    for i, ex in enumerate(tfds.as_numpy(self.builder.as_dataset(split="passage"))):
      pid, body = text(ex["passage_id"]), text(ex["passage"])
      title = json.loads(text(ex["passage_metadata"]) or "{}").get("title", "")
      if pid in corpus.index:
        log.add(f"{where} passage", i + 1, f"duplicate document id {pid!r}")
      elif (body.strip() or title.strip()) or admit_empty_document(
          log, f"{where} passage", i + 1, pid, strict=strict):
        corpus.add(pid, body, title=title)
      else:
        corpus.refused.setdefault(pid, f"passage {i + 1}")
    for i, ex in enumerate(tfds.as_numpy(self.builder.as_dataset(split="query"))):
      qid, body = text(ex["query_id"]), text(ex["query"])
      metadata = json.loads(text(ex["query_metadata"]) or "{}")
      if qid in queries.index:
        log.add(f"{where} query", i + 1, f"duplicate query id {qid!r}")
      elif not body.strip():
        log.add(f"{where} query", i + 1, f"empty text (query {qid!r})")
      else:
        queries.add(qid, body, metadata=metadata if isinstance(metadata, dict) else {})
    collection = Collection(name=name or self.config, corpus=corpus, queries=queries)
    for split in self.builder.info.splits:
      if split in ("passage", "query"):
        continue
      qrels: dict[str, dict[str, int]] = {}
      for i, ex in enumerate(tfds.as_numpy(self.builder.as_dataset(split=split))):
        qid, pid = text(ex["query_id"]), text(ex["passage_id"])
        if pid in corpus.refused:
          log.add(f"{where} {split}", i + 1, f"judgement names document {pid!r}, refused at "
                  f"{corpus.refused[pid]} (see the problem reported there)")
          continue
        if qid not in queries.index or pid not in corpus.index:
          log.add(f"{where} {split}", i + 1, f"judgement names an unknown query {qid!r} or "
                  f"document {pid!r}")
          continue
        qrels.setdefault(qid, {})[pid] = int(round(float(ex["score"])))
      collection.qrels[_SPLIT_NAMES.get(split, split)] = qrels
    log.raise_if_any()
    collection.warnings = log.warnings()
    return collection
