"""One collection's frozen-encoder inputs, loaded lazily: qrels, cached corpus and queries,
BM25 training examples split into train / dev, and BM25 first-stage runs.

`FrozenData` is what every frozen-encoder job receives (configured in gin). The dev queries
are a seeded held-out part of the *training* split; nothing is ever selected on `test_split`.
"""

import dataclasses
import functools
import hashlib
import json
import pathlib
from typing import Any, Callable

from repro.frozen import batches as batches_lib
from repro.frozen import cache
from repro.frozen import head_eval


@dataclasses.dataclass
class FrozenData:
  """Attributes:
    name: collection name for reports ("scifact").
    beir_dir: the BEIR directory (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).
    cache_dir: the encode job's cache of this collection (see `cache`).
    work_dir: where mined negatives and trained heads are kept between runs.
    train_split: judged split to train on (None: evaluation only, e.g. zero-shot transfer).
    test_split: judged split to evaluate on.
    max_query_tokens: query tokens kept (queries are cut; SciFact's are shorter).
    doc_length: the cache's document token limit (documents are padded to it).
    negatives_depth: BM25 negatives mined per training query.
    dev_fraction, split_seed: the held-out part of the training queries.
    encoder_fn: () -> (module, params) of the frozen encoder, only needed to encode a missing
      `queries-<train_split>/` (e.g. gin `@load_model`); vocabulary / encode_query_length: its
      vocabulary and the token limit the cache's queries were encoded with.
  """
  name: str
  beir_dir: str
  cache_dir: str
  work_dir: str
  train_split: str | None = "train"
  test_split: str = "test"
  max_query_tokens: int = 64
  doc_length: int = 256
  negatives_depth: int = 30
  dev_fraction: float = 0.2
  split_seed: int = 0
  encoder_fn: Callable[[], Any] | None = None
  vocabulary: str = "minilm"
  encode_query_length: int = 256

  def splits(self) -> list[str]:
    return [s for s in (self.train_split, self.test_split) if s]

  @functools.cached_property
  def collection(self):
    from aligner_jax.data.beir import read_beir  # pylint: disable=g-import-not-at-top
    return read_beir(self.beir_dir, splits=self.splits())

  @functools.cached_property
  def corpus(self):
    return cache.load_corpus(self.cache_dir)

  @functools.lru_cache(maxsize=None)  # noqa: B019 (one instance per experiment run)
  def queries(self, split: str):
    if not (cache.query_dir(self.cache_dir, split) / "manifest.json").is_file():
      self._encode_queries(split)
    return cache.load_queries(self.cache_dir, split, max_length=self.max_query_tokens)

  def _encode_queries(self, split: str) -> None:
    if self.encoder_fn is None:
      raise FileNotFoundError(f"{cache.query_dir(self.cache_dir, split)}: missing, and no "
                              "encoder_fn is configured to encode it")
    from aligner_jax.eval import retrieval_jobs  # pylint: disable=g-import-not-at-top
    module, params = self.encoder_fn()
    encoders = retrieval_jobs.model_encoders(module, params, self.vocabulary)
    cache.encode_query_split(encoders=encoders,
                             collection=self.collection, split=split, cache_dir=self.cache_dir,
                             query_length=self.encode_query_length)

  @functools.cached_property
  def examples(self) -> tuple[batches_lib.Examples, batches_lib.Examples]:
    """(train, dev) examples of the training split."""
    if not self.train_split:
      raise ValueError(f"{self.name}: no training split configured")
    negatives_dir = pathlib.Path(self.work_dir) / "negatives"
    examples = batches_lib.build_examples(
        self.collection, self.train_split, self.queries(self.train_split), self.corpus,
        depth=self.negatives_depth, cache_dir=str(negatives_dir))
    return batches_lib.split_dev(examples, dev_fraction=self.dev_fraction, seed=self.split_seed)

  @functools.lru_cache(maxsize=None)  # noqa: B019 (one instance per experiment run)
  def bm25(self, split: str, top_n: int = 100) -> head_eval.Run:
    """BM25's top `top_n` for the judged queries of `split`."""
    return head_eval.bm25_run(self.collection, self.collection.split_queries(split),
                              top_n=top_n)

  def qrels(self, split: str):
    return self.collection.qrels[split]

  def fingerprint(self) -> str:
    """A hash of what the training data depends on (for reusing trained heads)."""
    fields = {k: v for k, v in dataclasses.asdict(self).items()
              if k not in ("encoder_fn", "work_dir")}
    # The encoded corpus and query splits, through their checksummed manifests.
    fields["cache"] = [p.read_text() for p in
                       sorted(pathlib.Path(self.cache_dir).glob("*/manifest.json"))]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

  def __hash__(self) -> int:  # lru_cache on methods
    return id(self)
