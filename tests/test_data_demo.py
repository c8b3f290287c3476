"""The demo collection: reproducible bytes, requested size, and a design in which the papers'
ideas matter (checked with ideal "oracle" token embeddings built from the generator's lexicon)."""

import filecmp
import json

import numpy as np
import pytest

from aligner_jax.data import beir
from aligner_jax.data import demo_collection as demo_lib

FILES = ["corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/dev.tsv", "qrels/test.tsv",
         demo_lib.HARD_NEGATIVES_FILE, demo_lib.LEXICON_FILE]


@pytest.fixture(scope="module")
def seed0(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo") / "seed0"
  assert demo_lib.main(["--out", str(out), "--seed", "0"]) == 0
  return out


def test_same_seed_gives_identical_bytes_other_seed_differs(seed0, tmp_path):
  demo_lib.main(["--out", str(tmp_path / "again"), "--seed", "0"])
  demo_lib.main(["--out", str(tmp_path / "other"), "--seed", "1"])
  for name in FILES:
    assert filecmp.cmp(seed0 / name, tmp_path / "again" / name, shallow=False), name
    assert not filecmp.cmp(seed0 / name, tmp_path / "other" / name, shallow=False), name


def test_rewriting_replaces_the_files(seed0, tmp_path):
  out = tmp_path / "demo"
  demo_lib.main(["--out", str(out), "--seed", "1"])
  demo_lib.main(["--out", str(out), "--seed", "0"])
  for name in FILES:
    assert filecmp.cmp(seed0 / name, out / name, shallow=False), name
  assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging left behind


def test_a_directory_holding_other_files_is_refused_not_replaced(tmp_path):
  out = tmp_path / "data"
  (out / "qrels").mkdir(parents=True)
  (out / "qrels" / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match=r"data: holds qrels/notes.txt, which are not demo"):
    demo_lib.write(demo_lib.generate(0), out)
  assert sorted(p.name for p in out.rglob("*")) == ["notes.txt", "qrels"]
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="file: exists and is not a directory"):
    demo_lib.write(demo_lib.generate(0), tmp_path / "file")


def test_size_families_and_consistency(seed0):
  c = demo_lib.read_demo(seed0)  # the same checks as any BEIR directory
  assert len(c.corpus) >= 1000
  words = {w for t in c.corpus.texts for w in t.split() if w != "."}
  assert len(words) >= 600  # 288 concept surfaces, 60 attribute surfaces, 300 entities, filler
  families = [m["family"] for m in c.queries.metadata]
  assert families.count("factoid") == 900 and families.count("broad") == 600
  counts = c.counts()
  assert (counts["qrels/train"]["queries"], counts["qrels/dev"]["queries"],
          counts["qrels/test"]["queries"]) == (900, 150, 450)
  lexicon = json.loads((seed0 / demo_lib.LEXICON_FILE).read_text())
  filler = set(lexicon["filler"])
  for split, qrels in c.qrels.items():
    for qid, docs in qrels.items():
      meta = c.queries.metadata[c.queries.index[qid]]
      assert meta["split"] == split and len(docs) == 1
      doc = c.corpus.text(c.corpus.index[next(iter(docs))])
      query_words = c.queries.texts[c.queries.index[qid]].split()
      if meta["family"] == "factoid":
        entity = [w for w in query_words if w[0].isupper()]
        assert len(entity) == 1 and entity[0] in doc.split()
  # Filler is about 40 % of the document words.
  doc_words = [w for t in c.corpus.texts for w in t.split() if w != "."]
  share = sum(w in filler for w in doc_words) / len(doc_words)
  assert 0.3 < share < 0.5
  train = c.training["train"]
  assert len(train) == 900 and all(len(train.pool(g)) == demo_lib.NEGATIVES_PER_QUERY
                                   for g in range(len(train)))


def test_command_prints_what_it_wrote(tmp_path, capsys):
  assert demo_lib.main(["--out", str(tmp_path / "d"), "--seed", "3"]) == 0
  out = capsys.readouterr().out
  assert out.startswith(f"wrote {tmp_path / 'd'}: 1500 documents, ")
  assert "1500 queries (broad 600, factoid 900)" in out


def test_files_and_in_memory_collection_agree(seed0):
  files = demo_lib.read_demo(seed0)
  memory = demo_lib.generate_collection(0)
  assert files.corpus.ids == memory.corpus.ids and files.corpus.texts == memory.corpus.texts
  assert files.queries.texts == memory.queries.texts
  assert files.queries.metadata == memory.queries.metadata
  assert files.qrels == memory.qrels
  for field in ("query", "positive", "offsets", "negatives"):
    np.testing.assert_array_equal(getattr(files.training["train"], field),
                                  getattr(memory.training["train"], field))


def test_documents_fit_the_default_document_length(seed0, t5_tokenizer_json):
  from aligner_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  c = beir.read_beir(seed0)
  vocab = vocab_lib.get_vocabulary(t5_tokenizer_json)
  # The longest texts in characters (tokenising all of them is slow on a loaded machine).
  longest = lambda texts: sorted(texts, key=len)[-60:]
  docs = longest([c.corpus.text(i) for i in range(len(c.corpus))])
  assert max(len(ids) for ids in vocab.encode_batch(docs)) < 256
  assert max(len(ids) for ids in vocab.encode_batch(longest(c.queries.texts))) < 64


# -- the design, with ideal embeddings ---------------------------------------------------------


class _Oracle:
  """Each concept a unit vector (plus a shared theme direction, so related concepts are
  moderately similar); synonyms share their concept's vector; entities and attributes are
  orthogonal; filler words are random directions. Scores are ALIGNER-style: mean over query
  tokens of the mean of the top-k similarities with the document's tokens."""

  def __init__(self, lexicon, beta=0.5, seed=0):
    rng = np.random.default_rng(seed)
    unit_of, units = {}, 0
    self.theme_of = []
    for t, concepts in enumerate(lexicon["themes"]):
      for surfaces in concepts:
        for s in surfaces:
          unit_of[s] = units
        self.theme_of.append(t)
        units += 1
    for group in lexicon["attributes"] + [[e] for e in lexicon["entities"]]:
      for s in group:
        unit_of[s] = units
      self.theme_of.append(-1)
      units += 1
    self.filler = set(lexicon["filler"])
    for f in lexicon["filler"]:
      unit_of[f] = units
      self.theme_of.append(-2)
      units += 1
    themes = len(lexicon["themes"])
    vectors = np.zeros((units, units + themes))
    vectors[np.arange(units), np.arange(units)] = 1.0
    for u, t in enumerate(self.theme_of):
      if t >= 0:
        vectors[u, units + t] = beta
      elif t == -2:
        vectors[u] = rng.normal(size=units + themes)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    self.gram = vectors @ vectors.T
    self.unit_of = unit_of
    self.word_id: dict[str, int] = {}

  def _ids(self, text, drop_filler, exact):
    words = [w for w in text.split() if w != "." and not (drop_filler and w in self.filler)]
    if exact:
      return [self.word_id.setdefault(w, len(self.word_id)) for w in words]
    return [self.unit_of[w] for w in words]

  def mrr(self, collection, split, k, *, drop_filler=False, exact=False):
    docs = [self._ids(collection.corpus.text(i), drop_filler, exact)
            for i in range(len(collection.corpus))]
    width = max(len(d) for d in docs)
    padded = np.full((len(docs), width), -1)
    for i, d in enumerate(docs):
      padded[i, :len(d)] = d
    result = {"factoid": [], "broad": []}
    for qid, judged in collection.qrels[split].items():
      row = collection.queries.index[qid]
      q = np.asarray(self._ids(collection.queries.texts[row], drop_filler, exact))
      if exact:
        sims = (q[:, None, None] == padded[None]).astype(np.float64)
      else:
        sims = self.gram[q][:, np.maximum(padded, 0)]  # [n, D, L]
      sims = np.where(padded[None] >= 0, sims, -np.inf)
      top = -np.sort(-sims, axis=-1)[..., :k]
      scores = np.where(np.isfinite(top), top, 0.0).mean(-1).mean(0)  # [D]
      target = collection.corpus.index[next(iter(judged))]
      # Ties count half, so a scorer that cannot separate documents gets no credit for order.
      rank = 1 + np.sum(scores > scores[target]) + 0.5 * (np.sum(scores == scores[target]) - 1)
      result[collection.queries.metadata[row]["family"]].append(1.0 / rank)
    return {f: float(np.mean(v)) for f, v in result.items()}


def test_the_papers_ideas_matter_on_the_demo_collection(seed0):
  c = demo_lib.read_demo(seed0)
  oracle = _Oracle(json.loads((seed0 / demo_lib.LEXICON_FILE).read_text()))
  top1 = oracle.mrr(c, "test", 1, drop_filler=True)
  top4 = oracle.mrr(c, "test", 4, drop_filler=True)
  # Factoid: one fact decides -- top-1 alignment wins, aggregating more alignments hurts.
  assert top1["factoid"] > 0.85 and top1["factoid"] > top4["factoid"] + 0.25
  # Broad: many aspects in depth -- larger top-k wins.
  assert top4["broad"] > 0.9 and top4["broad"] > top1["broad"] + 0.25
  # Filler tokens blur everything: pruning them (salience) matters.
  with_filler = oracle.mrr(c, "test", 1)
  assert with_filler["factoid"] < top1["factoid"] - 0.2
  # Exact term matching cannot bridge the paraphrases (factoid). On broad queries one exact
  # match per query term cannot see depth (the survey a focused document leads names each
  # query word once, the document twice), counting several can.
  exact = oracle.mrr(c, "test", 1, drop_filler=True, exact=True)
  exact4 = oracle.mrr(c, "test", 4, drop_filler=True, exact=True)
  assert exact["factoid"] < top1["factoid"] - 0.4
  assert exact["broad"] < 0.7 and exact4["broad"] > exact["broad"] + 0.25
