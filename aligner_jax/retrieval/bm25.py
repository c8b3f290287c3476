"""BM25 baseline with `bm25s`: lower-cased word tokens, English stop words removed, Snowball
English stemming (PyStemmer), Lucene's BM25 variant.

Defaults k1 = 0.9, b = 0.4 are Anserini's, the BM25 that BEIR reports. Documents are indexed
as the text the encoders read (title + " " + body); query words never seen in the corpus are
ignored.

A document left without words (empty, or only stop words) is not indexed, as in Lucene, whose
document count and average length count only documents holding a term: it never changes the
other documents' scores, scores 0 for every query and so is never retrieved.
"""

from typing import Sequence

import numpy as np


def _stemmer(language: str | None):
  if language is None:
    return None
  try:
    import Stemmer  # pylint: disable=g-import-not-at-top  (PyStemmer)
  except ImportError:
    raise ImportError("BM25 stemming needs the PyStemmer package (pip install PyStemmer); "
                      "pass stemmer=None to index unstemmed words") from None
  return Stemmer.Stemmer(language).stemWord


class BM25:
  """A BM25 index over a corpus; `search` returns each query's top documents."""

  def __init__(self, doc_ids: Sequence[str], texts: Sequence[str], *, k1: float = 0.9,
               b: float = 0.4, stemmer: str | None = "english", stopwords: str | None = "en",
               method: str = "lucene"):
    import bm25s  # pylint: disable=g-import-not-at-top
    if len(doc_ids) != len(texts):
      raise ValueError(f"{len(doc_ids)} document ids but {len(texts)} texts")
    self.doc_ids = list(doc_ids)
    self._tokenizer = bm25s.tokenization.Tokenizer(stopwords=stopwords,
                                                   stemmer=_stemmer(stemmer))
    tokens = self._tokenizer.tokenize(list(texts), update_vocab=True, show_progress=False)
    # bm25s gives a text without words the placeholder token "" instead of no token.
    no_words = [self._tokenizer.word_to_id.get("")]
    # [n] int64: the corpus row of each indexed document.
    self._rows = np.array([i for i, t in enumerate(tokens) if list(t) != no_words], np.int64)
    self._retriever = None
    if len(self._rows):
      self._retriever = bm25s.BM25(k1=k1, b=b, method=method)
      self._retriever.index([tokens[i] for i in self._rows], show_progress=False)

  def search(self, query_texts: Sequence[str],
             top_n: int = 1000) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query (document numbers [≤ top_n] int64, BM25 scores [≤ top_n] float32)."""
    top_n = min(top_n, len(self._rows))
    if self._retriever is None or top_n == 0:
      return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in query_texts]
    tokens = self._tokenizer.tokenize(list(query_texts), update_vocab=False,
                                      show_progress=False)
    docs, scores = self._retriever.retrieve(tokens, k=top_n, show_progress=False)
    out = []
    for d, s in zip(np.asarray(docs), np.asarray(scores, np.float32)):
      # Documents sharing no word with the query score 0: they were not retrieved.
      keep = s > 0
      out.append((self._rows[d[keep]], s[keep]))
    return out
