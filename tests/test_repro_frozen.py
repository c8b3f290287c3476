"""Frozen-encoder heads (repro/frozen): batching, head wiring, training, and 2-step runs
of the R2-R5 gin jobs on a tiny collection with a token cache made here."""

import json
import pathlib

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aligner_jax.index.token_store import from_padded
from aligner_jax.index.token_store_io import save_token_store
from repro.frozen import batches as batches_lib
from repro.frozen import cache
from repro.frozen import experiments
from repro.frozen import head_training as train_lib
from repro.frozen import heads
from repro.frozen import trained_heads
from repro.frozen.frozen_data import FrozenData

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = [f"{a}{b}" for a in ("alpha", "beta", "gamma", "delta", "omega", "sigma")
         for b in ("river", "stone", "cloud", "field", "light", "metal", "glass")]
H, DOC_LEN = 16, 24  # cached vector width and the cache's document token limit


def _write_collection(root: pathlib.Path, rng) -> dict[str, dict[str, int]]:
  """40 documents, 30 train and 10 test queries (1-2 relevant documents each)."""
  (root / "qrels").mkdir(parents=True)
  docs = [" ".join(rng.choice(WORDS, rng.integers(6, 20))) for _ in range(40)]
  with open(root / "corpus.jsonl", "w") as f:
    for i, text in enumerate(docs):
      f.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n")
  qrels = {"train": {}, "test": {}}
  with open(root / "queries.jsonl", "w") as f:
    for q in range(40):
      split = "train" if q < 30 else "test"
      rel = sorted({int(rng.integers(40)) for _ in range(int(rng.integers(1, 3)))})
      f.write(json.dumps({"_id": f"q{q}", "text": " ".join(docs[rel[0]].split()[:3])}) + "\n")
      qrels[split][f"q{q}"] = {f"d{r}": 1 for r in rel}
  for split, table in qrels.items():
    with open(root / "qrels" / f"{split}.tsv", "w") as g:
      g.write("query-id\tcorpus-id\tscore\n")
      for q, docs_ in table.items():
        for d in docs_:
          g.write(f"{q}\t{d}\t1\n")
  return qrels


def _write_cache(cache_dir: pathlib.Path, qrels, rng) -> None:
  """Random unit token vectors standing in for an encoder's (what the encode job writes)."""
  def unit(shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  lengths = rng.integers(3, DOC_LEN + 1, size=40)
  mask = np.arange(DOC_LEN)[None, :] < lengths[:, None]
  save_token_store(from_padded([f"d{i}" for i in range(40)], unit((40, DOC_LEN, H)), mask,
                               vector_dtype="float16"), cache_dir / "corpus-00000-of-00001")
  for split, table in qrels.items():
    ids = list(table)
    qmask = np.arange(6)[None, :] < rng.integers(2, 7, size=len(ids))[:, None]
    save_token_store(from_padded(ids, unit((len(ids), 6, H)), qmask,
                                 pooled=unit((len(ids), H))), cache.query_dir(cache_dir, split))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("frozen")
  rng = np.random.default_rng(0)
  qrels = _write_collection(root / "beir", rng)
  _write_cache(root / "cache", qrels, rng)
  return root


def _data(tiny, **kw) -> FrozenData:
  return FrozenData(name="tiny", beir_dir=str(tiny / "beir"), cache_dir=str(tiny / "cache"),
                    work_dir=str(tiny / "work"), max_query_tokens=8, doc_length=DOC_LEN,
                    negatives_depth=10, dev_fraction=0.2, **kw)


def test_cache_loading(tiny):
  data = _data(tiny)
  assert data.corpus.num_docs == 40 and data.corpus.dim == H
  q = data.queries("test")
  assert q.vectors.shape[0] == 10 and q.vectors.shape[2] == H
  np.testing.assert_array_equal(q.vectors[~q.mask], 0.0)
  with pytest.raises(FileNotFoundError, match="queries-dev"):
    cache.load_queries(tiny / "cache", "dev")


def test_examples_split_and_batches(tiny):
  data = _data(tiny)
  train, dev = data.examples
  assert not set(train.query_ids) & set(dev.query_ids)
  assert len(train) + len(dev) == 30 and len(dev) == 6
  queries = data.queries("train")
  make = lambda: batches_lib.sample_batches(  # noqa: E731
      train, queries, data.corpus, batch_size=4, num_negatives=3, negative_depth=10,
      doc_length=DOC_LEN, seed=7)
  first, again = next(make()), next(make())
  for k in first:
    np.testing.assert_array_equal(first[k], again[k])  # deterministic given the seed
  assert first["query"].shape == (4, 6, H) and first["docs"].shape == (4, 4, DOC_LEN, H)
  assert first["in_batch_labels"].shape == (4, 16)
  # Slot 0 is a relevant document, the negatives are not; in-batch labels agree with labels.
  np.testing.assert_array_equal(first["labels"][:, 0], 1.0)
  np.testing.assert_array_equal(first["labels"][:, 1:], 0.0)
  for b in range(4):
    np.testing.assert_array_equal(first["in_batch_labels"][b, 4 * b:4 * b + 4],
                                  first["labels"][b])
  # The gathered vectors are the cached ones (float16 in the store, float32 here).
  for b in range(4):
    got = first["docs"][b, 0][first["doc_mask"][b, 0]]
    assert any(got.shape == data.corpus.dequantize(data.corpus.doc_tokens(int(r))).shape and
               np.array_equal(got, data.corpus.dequantize(data.corpus.doc_tokens(int(r))))
               for r in np.concatenate(train.positives))
  cands = batches_lib.candidate_rows(train, num_candidates=5)
  for i in range(len(train)):
    np.testing.assert_array_equal(cands[i, :len(train.positives[i])], train.positives[i][:5])


def _toy_batch(rng, b=3, k=4, n=5, m=7):
  def unit(shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
  q_mask = np.arange(n)[None] < rng.integers(1, n + 1, size=b)[:, None]
  d_mask = np.arange(m)[None, None] < rng.integers(1, m + 1, size=(b, k))[..., None]
  return unit((b, n, H)) * q_mask[..., None], q_mask, unit((b, k, m, H)) * d_mask[..., None], d_mask


def _toy_head(kind, **settings):
  """(config, module, params) of a small head over H-dim cached vectors, 5 x 7 tokens."""
  head = heads.HeadConfig(kind=kind, projection_dim=8, query_len=5, doc_len=7, **settings)
  module = heads.build_module(head)
  return head, module, heads.init_params(module, head, hidden_dim=H, rng=jax.random.key(0))


@pytest.mark.parametrize("kind", ["colbert", "de", "maxsim"])
def test_pair_scores_numpy_reference(kind):
  rng = np.random.default_rng(1)
  q, qm, d, dm = _toy_batch(rng)
  head, module, params = _toy_head(kind)
  got = np.asarray(heads.pair_scores(module, head, params, q, qm, d, dm))
  norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa
  want = np.zeros(got.shape)
  for b in range(q.shape[0]):
    for c in range(d.shape[1]):
      qq, dd = q[b][qm[b]], d[b, c][dm[b, c]]
      if kind == "de":
        w = params["pooled_projection"]["kernel"]
        want[b, c] = norm(qq.mean(0) @ w) @ norm(dd.mean(0) @ w)
      else:
        if kind == "colbert":
          w = params["token_projection"]["kernel"]
          qq, dd = norm(qq @ w), norm(dd @ w)
        want[b, c] = (qq @ dd.T).max(axis=1).mean()  # MaxSim, averaged over query tokens
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["aligner", "colbert", "de"])
def test_in_batch_scores_agree_with_pair_scores(kind):
  rng = np.random.default_rng(2)
  q, qm, d, dm = _toy_batch(rng)
  head, module, params = _toy_head(kind)
  pairs = np.asarray(heads.pair_scores(module, head, params, q, qm, d, dm))
  all_pairs = np.asarray(heads.in_batch_scores(module, head, params, q, qm,
                                               d.reshape(-1, 7, H), dm.reshape(-1, 7)))
  for b in range(3):
    np.testing.assert_allclose(all_pairs[b, 4 * b:4 * b + 4], pairs[b], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind,objective", [("aligner", "in_batch"), ("lite", "group"),
                                            ("knrm", "group"), ("de", "distill:m3se")])
def test_gradients_reach_every_head_parameter_and_nothing_else(kind, objective):
  rng = np.random.default_rng(3)
  q, qm, d, dm = _toy_batch(rng)
  head, module, params = _toy_head(kind, lite_row_width=6, lite_col_width=4)
  assert not any("encoder" in k for k in params)  # only heads exist: the encoder is frozen
  labels = np.zeros((3, 4), np.float32)
  labels[:, 0] = 1
  batch = {"query": q, "query_mask": qm, "docs": d, "doc_mask": dm,
           "cand_mask": np.ones((3, 4), bool), "labels": labels,
           "in_batch_labels": np.kron(np.eye(3), np.array([1, 0, 0, 0]))[:, :12].astype(
               np.float32), "teacher": rng.normal(size=(3, 4)).astype(np.float32)}
  cfg = train_lib.TrainConfig(objective=objective, temperature=0.1)
  loss_fn = train_lib.make_loss_fn(module, head, cfg)
  grads = jax.grad(loss_fn)(params, {k: jnp.asarray(v) for k, v in batch.items()})
  flat = jax.tree_util.tree_leaves_with_path(grads)
  assert flat
  for path, g in flat:
    assert np.all(np.isfinite(g)), path
  # Every head receives a gradient (KNRM's weights start at zero but get one).
  moved = [np.any(np.asarray(g) != 0) for _, g in flat]
  assert np.mean(moved) > 0.5, [jax.tree_util.keystr(p) for p, _ in flat]
  # The loss is differentiated with respect to the head parameters only.
  assert set(grads) == set(params)


def test_training_lowers_loss_and_store_roundtrip(tiny, tmp_path):
  data = _data(tiny)
  head = heads.HeadConfig(kind="colbert", projection_dim=8)
  cfg = train_lib.TrainConfig(steps=30, batch_size=4, num_negatives=3, negative_depth=10,
                              learning_rate=3e-3, eval_every=15, objective="group",
                              temperature=0.1)
  module, params, history = experiments.train_or_load(data, "colbert", head, cfg, 0,
                                                      log=lambda m: None)
  losses = history["loss"]
  assert np.mean(losses[-10:]) < np.mean(losses[:10])
  assert [s for s, _ in history["dev"]] == [15, 30]
  assert history["best_step"] in (15, 30)
  again = experiments.train_or_load(data, "colbert", head, cfg, 0, log=lambda m: None)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again[1])):
    np.testing.assert_array_equal(a, b)  # read back from the head store, bit for bit
  key = trained_heads.head_key("x", head)
  assert key != trained_heads.head_key("x", heads.HeadConfig(kind="colbert", projection_dim=4))


def test_drop_tokens_hides_real_tokens_only_and_keeps_one():
  rng = np.random.default_rng(5)
  lengths = rng.integers(1, 31, size=400)
  mask = np.arange(30)[None] < lengths[:, None]
  out = np.asarray(train_lib.drop_tokens(jnp.asarray(mask), jax.random.key(0), 0.5))
  assert out.dtype == bool and out.shape == mask.shape
  assert not np.any(out & ~mask)  # padding stays padding
  assert np.all(out[:, 0])  # the first real token is always kept: no empty document
  kept = out[:, 1:].sum() / mask[:, 1:].sum()
  assert 0.45 < kept < 0.55, kept
  again = np.asarray(train_lib.drop_tokens(jnp.asarray(mask), jax.random.key(0), 0.5))
  other = np.asarray(train_lib.drop_tokens(jnp.asarray(mask), jax.random.key(1), 0.5))
  np.testing.assert_array_equal(out, again)
  assert np.any(out != other)
  np.testing.assert_array_equal(
      np.asarray(train_lib.drop_tokens(jnp.asarray(mask), jax.random.key(0), 0.0)), mask)
  # Rows whose first real token is not at position 0 (left padding) keep that one.
  shifted = np.zeros((50, 10), bool)
  shifted[:, 4:] = True
  low = np.asarray(train_lib.drop_tokens(jnp.asarray(shifted), jax.random.key(2), 0.95))
  assert np.all(low[:, 4]) and not np.any(low[:, :4])
  with pytest.raises(ValueError, match="doc_token_dropout"):
    train_lib.TrainConfig(doc_token_dropout=1.0)


def test_doc_token_dropout_changes_training_and_is_seeded():
  rng = np.random.default_rng(4)
  head, module, params = _toy_head("lite", lite_row_width=6, lite_col_width=4)
  labels = np.zeros((3, 4), np.float32)
  labels[:, 0] = 1
  batches = []
  for _ in range(6):
    q, qm, d, dm = _toy_batch(rng)
    batches.append({"query": q, "query_mask": qm, "docs": d, "doc_mask": dm,
                    "cand_mask": np.ones((3, 4), bool), "labels": labels})

  def run(rate, key):
    cfg = train_lib.TrainConfig(steps=6, learning_rate=1e-2, warmup_steps=0, objective="group",
                                temperature=1.0, eval_every=0, doc_token_dropout=rate)
    return train_lib.train_head(module, head, params, iter(batches), cfg, log=lambda m: None,
                                rng=jax.random.key(key))

  plain, plain_h = run(0.0, 0)
  plain_other_key, _ = run(0.0, 1)
  dropped, dropped_h = run(0.5, 0)
  dropped_again, _ = run(0.5, 0)
  dropped_other, _ = run(0.5, 1)
  leaves = lambda p: [np.asarray(x) for x in jax.tree_util.tree_leaves(p)]  # noqa: E731
  for a, b in zip(leaves(plain), leaves(plain_other_key)):
    np.testing.assert_array_equal(a, b)  # without dropout the key plays no part
  for a, b in zip(leaves(dropped), leaves(dropped_again)):
    np.testing.assert_array_equal(a, b)  # the same key gives the same run
  assert plain_h["loss"][0] != dropped_h["loss"][0]  # dropout acts from the first step
  assert any(not np.array_equal(a, b) for a, b in zip(leaves(dropped), leaves(dropped_other)))


def test_sweep_configs_and_select_on_dev(tiny):
  base = train_lib.TrainConfig(steps=6, batch_size=4, num_negatives=3, negative_depth=10,
                               eval_every=3, objective="group", temperature=0.1)
  configs = experiments.sweep_configs(base, {"learning_rate": [1e-3, 3e-3],
                                             "doc_token_dropout": [0.0, 0.2]})
  assert [(c.learning_rate, c.doc_token_dropout) for c in configs] == [
      (1e-3, 0.0), (1e-3, 0.2), (3e-3, 0.0), (3e-3, 0.2)]
  assert all(c.steps == 6 for c in configs)
  assert experiments.sweep_configs(base, {}) == [base]
  with pytest.raises(ValueError, match="unknown"):
    experiments.sweep_configs(base, {"lr": [1e-3]})
  data = _data(tiny)
  head = heads.HeadConfig(kind="colbert", projection_dim=8)
  sweep = {"learning_rate": [1e-6, 3e-2], "doc_token_dropout": [0.0, 0.3]}
  chosen, rows = experiments.select_on_dev(data, "colbert-sweep", head, base, sweep, 0,
                                           log=lambda m: None)
  assert len(rows) == 4
  assert [(r["learning_rate"], r["doc_token_dropout"]) for r in rows] == [
      (c.learning_rate, c.doc_token_dropout) for c in experiments.sweep_configs(base, sweep)]
  best = max(rows, key=lambda r: r["dev_ndcg@10"])
  assert (chosen.learning_rate, chosen.doc_token_dropout) == (best["learning_rate"],
                                                               best["doc_token_dropout"])
  assert len({r["dev_ndcg@10"] for r in rows}) > 1  # the settings really trained differently
  # The chosen head is the stored one: its dev value is the row's, read back, not retrained.
  _, _, history = experiments.train_or_load(data, "colbert-sweep", head, chosen, 0,
                                            log=lambda m: None)
  assert history["dev_ndcg@10"] == best["dev_ndcg@10"]


@pytest.mark.parametrize("claim, job", [("r2_pruning", "repro_r2_pruning"),
                                         ("r3_gates", "repro_r3_gates"),
                                         ("r4_rerank", "repro_r4_rerank"),
                                         ("r5_distill", "repro_r5_distill")])
def test_experiment_gin_files_parse(claim, job):
  """Each claim's gin file imports its jobs from repro/ and binds every argument it names
  (unknown names are errors), with the job as run.job."""
  from aligner_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    main_lib.parse_gin([f"gin/experiments/repro_{claim}.gin"], [])
    assert gin.query_parameter("run.job").selector == job
    assert gin.query_parameter(f"{job}.data").scoped_selector == "scifact/FrozenData"
  finally:
    gin.clear_config()


def _run_job(gin_file: str, bindings: list[str]):
  from aligner_jax.main import run as main_run  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([str(ROOT / gin_file)], bindings,
                                        finalize_config=False)
    return main_run()
  finally:
    gin.clear_config()


def _tiny_bindings(tiny, out: pathlib.Path) -> list[str]:
  return [f"SCIFACT_DIR = '{tiny / 'beir'}'", f"FROZEN_CACHE = '{tiny / 'cache'}'",
          f"FROZEN_WORK_DIR = '{out / 'work'}'", "TRAIN_SEEDS = [0]", "FROZEN_NEIGHBORS = 8",
          "scifact/FrozenData.doc_length = 24", "scifact/FrozenData.max_query_tokens = 8",
          "scifact/FrozenData.negatives_depth = 10", "FrozenTrain.steps = 2",
          "FrozenTrain.eval_every = 2", "FrozenTrain.batch_size = 4",
          "FrozenTrain.negative_depth = 10"]


@pytest.mark.slow
def test_gin_jobs_two_steps(tiny, tmp_path):
  common = _tiny_bindings(tiny, tmp_path)
  r2 = _run_job("gin/experiments/repro_r2_pruning.gin", common + [
      f"R2_OUTPUT = '{tmp_path / 'r2.json'}'", f"R2_FIGURE = '{tmp_path / 'r2.png'}'"])
  cells = r2["results"]["lp"]["seeds"][0]["cells"]
  assert len(cells) == 8 and all(0 <= c["ndcg@10"] <= 1 for c in cells)
  full = next(c for c in cells if c["doc_ratio"] == 1.0)
  tenth = next(c for c in cells if c["doc_ratio"] == 0.1)
  assert tenth["indexed_tokens"] < full["indexed_tokens"]
  assert (tmp_path / "r2.png").stat().st_size > 0
  assert json.loads((tmp_path / "r2.json").read_text())["paper"]["source"].startswith("ALIGNER")
  r3 = _run_job("gin/experiments/repro_r3_gates.gin", common + [
      f"R3_OUTPUT = '{tmp_path / 'r3.json'}'", f"R3_FIGURE = '{tmp_path / 'r3.png'}'"])
  assert set(r3["results"]) == {"lp", "lp_iters3", "lp_iters5", "lp_iters10", "relu", "hard_topk"}
  r4 = _run_job("gin/experiments/repro_r4_rerank.gin", common + [
      f"R4_OUTPUT = '{tmp_path / 'r4.json'}'", f"R4_FIGURE = '{tmp_path / 'r4.png'}'",
      "lite/FrozenHead.query_len = 8", "lite/FrozenHead.doc_len = 24",
      "lite50/FrozenHead.query_len = 8", "lite50/FrozenHead.doc_len = 24",
      "lite50/FrozenHead.lite_doc_tokens = 5"])
  assert {"bm25", "maxsim", "colbert", "de", "knrm", "lite", "lite50"} <= set(r4["results"])
  lite = r4["results"]["lite"]
  assert len(lite["sweep"]) == 4 and set(lite["chosen"]) == {"learning_rate", "doc_token_dropout"}
  assert lite["dev_ndcg@10"]["mean"] == max(r["dev_ndcg@10"] for r in lite["sweep"])
  r5 = _run_job("gin/experiments/repro_r5_distill.gin", common + [
      f"R5_OUTPUT = '{tmp_path / 'r5.json'}'", f"R5_FIGURE = '{tmp_path / 'r5.png'}'",
      "lite/FrozenHead.query_len = 8", "lite/FrozenHead.doc_len = 24",
      "R5_NUM_CANDIDATES = 6", "R5_SEEDS = [0]", "R5_STEPS = 4", "R5_EVAL_EVERY = 2",
      "R5_SWEEP = {'learning_rate': [1e-3, 1e-2]}"])
  students = r5["results"]["students"]
  assert set(students) == {"one_hot_ce", "mse", "margin_mse", "m3se", "softmax_ce",
                           "rankdistil_b"}
  for entry in students.values():
    assert 0 <= entry["summary"]["ndcg@10"]["mean"] <= 1
    assert [r["learning_rate"] for r in entry["sweep"]] == [1e-3, 1e-2]
  # The teacher is R4's ColBERT with the setting R4 chose on dev, read back from the store.
  assert r5["results"]["teacher"]["chosen"] == r4["results"]["colbert"]["chosen"]
