"""The evaluation pipeline and its gin jobs end to end on a tiny BEIR directory and a tiny
random T5 dual encoder: encode -> index (saved, verified, reused) -> retrieve -> metrics,
adaptation, report (also in headless Chromium); BM25 and re-ranking; model loading from trainer
checkpoints."""

import dataclasses
import json
import pathlib
import re
import shutil
import subprocess

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest

from aligner_jax import models
from aligner_jax.eval import evaluators
from aligner_jax.eval import inputs as inputs_lib
from aligner_jax.eval import ir_metrics as metrics_lib
from aligner_jax.eval import retrieval_jobs
from aligner_jax.index import IndexConfig
from aligner_jax.index import IndexFileError
from aligner_jax.retrieval import runs as runs_lib

_PARTS = ("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river mountain "
          "forest ocean desert island valley glacier canyon").split()
WORDS = [a + b for a in _PARTS[:10] for b in _PARTS[10:]]  # 100 distinct words


_INPUT_FIELDS = ("model", "encoded_dir", "doc_length", "query_length", "ignore_identical_ids")
_RUN_FIELDS = ("top_n", "num_pictures", "log")


def run_eval(*, beir_dir, split, output_dir, retriever, **settings):
  """One evaluation from the flat settings the gin job takes (evaluator, inputs, options)."""
  inputs = inputs_lib.EvalInputs(beir_dir, split, **{k: settings.pop(k) for k in _INPUT_FIELDS
                                                     if k in settings})
  options = {k: settings.pop(k) for k in _RUN_FIELDS if k in settings}
  evaluator = evaluators.make_evaluator(retriever, **settings)
  return evaluators.evaluate_beir(evaluator, inputs, output_dir, **options)


def write_beir(root: pathlib.Path, num_docs=40, num_queries=12, seed=0) -> pathlib.Path:
  rng = np.random.default_rng(seed)
  (root / "qrels").mkdir(parents=True)
  docs = []
  with open(root / "corpus.jsonl", "w") as f:
    for i in range(num_docs):
      text = " ".join(rng.choice(WORDS, rng.integers(5, 30)))
      docs.append(text)
      f.write(json.dumps({"_id": f"doc{i}", "title": f"t{i}", "text": text}) + "\n")
  with open(root / "queries.jsonl", "w") as f, open(root / "qrels" / "test.tsv", "w") as g:
    g.write("query-id\tcorpus-id\tscore\n")
    for q in range(num_queries):
      target = int(rng.integers(num_docs))
      words = docs[target].split()
      f.write(json.dumps({"_id": f"q{q}", "text": " ".join(words[:4])}) + "\n")
      g.write(f"q{q}\tdoc{target}\t1\n")
  return root


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
  return write_beir(tmp_path_factory.mktemp("beir") / "tiny")


@pytest.fixture(scope="module")
def tiny_model(t5_tokenizer_json_module):
  module = models.DualEncoder(encoder_config=models.t5_config("tiny"), projection_dim=16,
                              query_salience_ratio=0.5, doc_salience_ratio=0.5)
  params = nn.unbox(models.init_dual_encoder(module, jax.random.key(0), query_length=8,
                                             doc_length=8))
  return module, params


@pytest.fixture(scope="module")
def t5_tokenizer_json_module():
  from conftest import shared_path
  return shared_path("tokenizers", "t5_v1_1", "tokenizer.json")


@pytest.fixture(scope="module")
def encoders(tiny_model):
  return retrieval_jobs.model_encoders(*tiny_model, "t5_1_1", batch_size=16)


def test_token_index_pipeline_end_to_end(beir_dir, encoders, tmp_path):
  out, index_dir = tmp_path / "out", tmp_path / "index"
  logs = []
  result = run_eval(
      beir_dir=str(beir_dir), split="test", output_dir=str(out), retriever="exact",
      model=encoders, index_dir=str(index_dir),
      index_config=IndexConfig(prune_doc_ratio=0.5), alignments=["top_k:1", "top_k:2"],
      num_neighbors=20, prune_query_ratio=0.5, top_n=15, doc_length=64, query_length=16,
      adaptation=True, num_pictures=2, pruning_curve=[1.0, 0.5], log=logs.append)
  names = sorted(p.name for p in out.iterdir())
  assert {"run.trec", "run.top_k-2.trec", "metrics.json", "adaptation.json", "adaptation.md",
          "report.html", "pictures", "pruning.json", "pruning.png"} <= set(names)
  assert len(list((out / "pictures").glob("*.png"))) == 2
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["run"] == "top_k:1" and set(saved["by_alignment"]) == {"top_k:1", "top_k:2"}
  # metrics.json holds what pytrec_eval gives for the written run file.
  qrels = inputs_lib.load_split(str(beir_dir), "test").qrels["test"]
  mean, _ = metrics_lib.evaluate(qrels, runs_lib.read_trec_run(out / "run.trec"))
  for k, v in mean.items():
    assert saved[k] == pytest.approx(v, abs=1e-6)
  run = runs_lib.read_trec_run(out / "run.trec")
  assert len(run) == 12 and all(0 < len(d) <= 15 for d in run.values())
  adaptation = json.loads((out / "adaptation.json").read_text())["reports"][0]
  assert adaptation["num_folds"] == 1 and adaptation["strategies"][0] == "top_k:1"
  assert "Few-shot" in (out / "report.html").read_text()
  # The pruning curve's β^d = 0.5 point is the evaluation's own index; β^d = 1 searches every
  # token and was rebuilt.
  curve = json.loads((out / "pruning.json").read_text())
  assert [p["prune_doc_ratio"] for p in curve["points"]] == [1.0, 0.5]
  assert curve["points"][1]["ndcg@10"] == pytest.approx(saved["ndcg@10"], abs=1e-6)
  assert curve["points"][0]["searched_tokens"] > curve["points"][1]["searched_tokens"]
  assert "pruning.png" in (out / "report.html").read_text()
  assert any("built 1 shard" in line for line in logs)

  # A second run loads the saved index (memory-mapped) and reproduces the run.
  logs.clear()
  again = run_eval(
      beir_dir=str(beir_dir), split="test", output_dir=str(tmp_path / "again"),
      retriever="exact", model=encoders, index_dir=str(index_dir),
      index_config=IndexConfig(prune_doc_ratio=0.5), num_neighbors=20, prune_query_ratio=0.5,
      top_n=15, doc_length=64, query_length=16, log=logs.append)
  assert any("loaded index" in line and "memory-mapped" in line and
             "files checked against manifests" in line for line in logs)
  assert again["ndcg@10"] == result["ndcg@10"]
  assert runs_lib.read_trec_run(tmp_path / "again" / "run.trec") == run

  # Another pruning ratio is refused until REBUILD_INDEX.
  with pytest.raises(ValueError, match="REBUILD_INDEX"):
    run_eval(beir_dir=str(beir_dir), split="test", output_dir=str(tmp_path / "x"),
                           retriever="exact", model=encoders, index_dir=str(index_dir),
                           index_config=IndexConfig(prune_doc_ratio=0.25), doc_length=64,
                           query_length=16, log=logs.append)
  # A corrupted index is refused when VERIFY_INDEX asks for checksums, naming the file.
  vectors = index_dir / "shard-00000" / "vectors.npy"
  data = bytearray(vectors.read_bytes())
  data[-3] ^= 1
  vectors.write_bytes(bytes(data))
  with pytest.raises(IndexFileError, match="vectors.npy: SHA-256"):
    run_eval(beir_dir=str(beir_dir), split="test", output_dir=str(tmp_path / "y"),
             retriever="exact", model=encoders, index_dir=str(index_dir), verify_index=True,
             index_config=IndexConfig(prune_doc_ratio=0.5), doc_length=64,
             query_length=16, log=logs.append)
  assert not (tmp_path / "y").exists()
  # A truncated one even without: sizes are always compared with the manifest.
  vectors.write_bytes(bytes(data[:-64]))
  with pytest.raises(IndexFileError, match="vectors.npy: size"):
    run_eval(beir_dir=str(beir_dir), split="test", output_dir=str(tmp_path / "y"),
             retriever="exact", model=encoders, index_dir=str(index_dir),
             index_config=IndexConfig(prune_doc_ratio=0.5), doc_length=64,
             query_length=16, log=logs.append)
  rebuilt = run_eval(
      beir_dir=str(beir_dir), split="test", output_dir=str(tmp_path / "z"), retriever="exact",
      model=encoders, index_dir=str(index_dir), index_config=IndexConfig(prune_doc_ratio=0.5),
      rebuild_index=True, num_neighbors=20, prune_query_ratio=0.5, top_n=15, doc_length=64,
      query_length=16, log=logs.append)
  assert rebuilt["ndcg@10"] == result["ndcg@10"]


_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")
# Added to a copy of the page: after the load event, each image's source and whether it decoded.
_IMAGE_CHECKER = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images).map(
      i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);
  document.body.setAttribute('data-images', JSON.stringify(images));
});
</script></body>"""


def _headless_chromium(*args: str) -> str:
  """Runs a headless Chromium (skips the test when none is on PATH); returns its stdout."""
  browser = next(filter(None, map(shutil.which, _BROWSERS)), None)
  if browser is None:
    pytest.skip("no Chromium binary on PATH (Debian: apt-get install chromium)")
  return subprocess.run(
      [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
       "--allow-file-access-from-files", "--virtual-time-budget=10000", *args],
      capture_output=True, text=True, timeout=180, check=True).stdout


@pytest.mark.slow
def test_report_loads_with_its_images_in_headless_chromium(beir_dir, encoders, tmp_path):
  out = tmp_path / "out"
  run_eval(beir_dir=str(beir_dir), split="test", output_dir=str(out), retriever="exact",
           model=encoders, index_dir=str(tmp_path / "index"),
           index_config=IndexConfig(prune_doc_ratio=0.5), alignments=["top_k:1", "top_k:2"],
           num_neighbors=20, top_n=15, doc_length=64, query_length=16, adaptation=True,
           num_pictures=2, pruning_curve=[1.0, 0.5])
  page = (out / "report.html").read_text()
  sources = re.findall(r'<img src="([^"]+)"', page)
  assert sources[0] == "pruning.png" and sum(s.startswith("pictures/") for s in sources) == 2
  # The page as Chromium loaded it (a copy beside it, so relative image paths resolve).
  checked = out / "report.checked.html"
  checked.write_text(page.replace("</body>", _IMAGE_CHECKER, 1))
  dom = _headless_chromium("--dump-dom", checked.as_uri())
  found = re.search(r'data-images="([^"]*)"', dom)
  assert found, f"the page did not finish loading:\n{dom[:2000]}"
  images = json.loads(found.group(1).replace("&quot;", '"'))
  assert [src for src, _ in images] == sources
  assert all(decoded for _, decoded in images), f"images that did not decode: {images}"
  # And a screenshot of the page itself.
  shot = tmp_path / "report.png"
  _headless_chromium(f"--screenshot={shot}", "--window-size=1200,2400",
                     (out / "report.html").as_uri())
  assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_best_r_candidates_are_refined_and_the_alignment_still_decides(beir_dir, encoders,
                                                                        tmp_path):
  common = dict(beir_dir=str(beir_dir), split="test", retriever="scann", model=encoders,
                index_dir=str(tmp_path / "index"), num_neighbors=20, top_n=15, doc_length=64,
                query_length=16, num_refine=4, leaves_to_search=3, log=lambda m: None)
  runs = {}
  for spec in ("top_k:1", "top_k:4", "top_p:0.25"):
    result = run_eval(output_dir=str(tmp_path / spec.replace(":", "-")), alignments=[spec],
                      **common)
    assert result["run"] == spec
    assert result["num_refine"] == 4 and result["leaves_to_search"] == 3
    runs[spec] = runs_lib.read_trec_run(tmp_path / spec.replace(":", "-") / "run.trec")
    assert all(0 < len(docs) <= 4 for docs in runs[spec].values())
  # The same R candidates per query, scored by each alignment: the scores differ.
  assert {q: set(d) for q, d in runs["top_k:1"].items()} == {
      q: set(d) for q, d in runs["top_p:0.25"].items()}
  assert runs["top_k:1"] != runs["top_k:4"] and runs["top_k:1"] != runs["top_p:0.25"]
  with pytest.raises(ValueError, match="LEAVES_TO_SEARCH"):
    evaluators.make_evaluator("exact", leaves_to_search=3)
  with pytest.raises(ValueError, match="NUM_REFINE"):
    evaluators.make_evaluator("scann", num_refine=-2)


def test_encoded_dir_replaces_encoding(beir_dir, encoders, tmp_path):
  """Reading the encode job's stores gives the same runs as encoding in the evaluation."""
  from aligner_jax.index.token_store import from_padded
  from aligner_jax.index.token_store_io import save_token_store
  collection = inputs_lib.load_split(str(beir_dir), "test")
  enc = tmp_path / "encoded"
  store = inputs_lib.encode_collection_corpus(encoders, collection, doc_length=64,
                                            log=lambda m: None)
  # Two shards, as two hosts would write them.
  half = store.num_docs // 2
  for i, rows in enumerate((np.arange(half), np.arange(half, store.num_docs))):
    part = store.select_rows(np.arange(store.offsets[rows[0]], store.offsets[rows[-1] + 1]))
    part = dataclasses.replace(
        part, doc_ids=[store.doc_ids[r] for r in rows], offsets=np.concatenate(
            [[0], np.cumsum(store.lengths[rows])]), pooled=store.pooled[rows])
    save_token_store(part, enc / f"corpus-{i:05d}-of-00002", doc_length=64)
  queries = inputs_lib.encode_split_queries(encoders, collection, "test", query_length=16,
                                          log=lambda m: None)
  save_token_store(from_padded(queries.ids, queries.vectors, queries.mask,
                               salience=queries.salience, token_ids=queries.token_ids,
                               pooled=queries.pooled), enc / "queries-test", query_length=16)
  for retriever in ("dense", "exact"):
    kwargs = dict(beir_dir=str(beir_dir), split="test", retriever=retriever, model=encoders,
                  num_neighbors=20, top_n=15, doc_length=64, query_length=16,
                  log=lambda m: None)
    fresh = run_eval(output_dir=str(tmp_path / f"fresh_{retriever}"), **kwargs)
    logs = []
    cached = run_eval(output_dir=str(tmp_path / f"cached_{retriever}"),
                                    encoded_dir=str(enc), **{**kwargs, "log": logs.append})
    assert any("encoded documents from" in m for m in logs), logs
    assert not any(m.startswith("encoding") for m in logs), logs
    for q, values in fresh["per_query"].items():
      assert cached["per_query"][q] == pytest.approx(values, abs=1e-5), q
    ours = runs_lib.read_trec_run(tmp_path / f"cached_{retriever}" / "run.trec")
    theirs = runs_lib.read_trec_run(tmp_path / f"fresh_{retriever}" / "run.trec")
    assert {q: list(d)[:5] for q, d in ours.items()} == {q: list(d)[:5] for q, d in theirs.items()}
  # Stores encoded with other lengths are refused, naming the directory and the fix.
  with pytest.raises(IndexFileError, match="doc_length=64 but this run asks for 32"):
    run_eval(beir_dir=str(beir_dir), split="test", retriever="dense",
                           model=encoders, output_dir=str(tmp_path / "bad"), doc_length=32,
                           query_length=16, encoded_dir=str(enc), log=lambda m: None)
  (enc / "corpus-00001-of-00002" / "manifest.json").unlink()
  with pytest.raises(IndexFileError, match="corpus-00001-of-00002"):
    run_eval(beir_dir=str(beir_dir), split="test", retriever="dense",
                           model=encoders, output_dir=str(tmp_path / "bad2"), doc_length=64,
                           query_length=16, encoded_dir=str(enc), log=lambda m: None)


@pytest.mark.slow
def test_bm25_dense_and_rerank(beir_dir, encoders, tmp_path):
  bm25 = run_eval(beir_dir=str(beir_dir), split="test",
                                output_dir=str(tmp_path / "bm25"), retriever="bm25",
                                log=lambda m: None)
  # Queries are the first words of their document: BM25 finds most of them.
  assert bm25["mrr@10"] > 0.5
  dense = run_eval(beir_dir=str(beir_dir), split="test",
                                 output_dir=str(tmp_path / "dense"), retriever="dense",
                                 model=encoders, doc_length=64, query_length=16,
                                 log=lambda m: None)
  assert dense["run"] == "dense" and 0.0 <= dense["ndcg@10"] <= 1.0
  rr = run_eval(beir_dir=str(beir_dir), split="test",
                              output_dir=str(tmp_path / "rr"), retriever="bm25", model=encoders,
                              rerank_depth=5, doc_length=64, query_length=16,
                              log=lambda m: None)
  run = runs_lib.read_trec_run(tmp_path / "rr" / "run.trec")
  first = runs_lib.read_trec_run(tmp_path / "bm25" / "run.trec")
  for q, docs in run.items():
    assert set(docs) == {d for d, _ in runs_lib.ranked(first[q])[:5]}
  assert rr["first_stage"] == "bm25" and rr["recall@1000"] <= bm25["recall@1000"]
  # The model's own LITE head as the re-ranker (fixed 16 x 64 similarity matrices).
  from aligner_jax.scoring import LiteScorer
  lite_module = models.DualEncoder(encoder_config=models.t5_config("tiny"), projection_dim=16,
                                   lite_scorer=LiteScorer(query_len=16, doc_len=64,
                                                          row_width=4, col_width=4))
  lite_params = nn.unbox(models.init_dual_encoder(lite_module, jax.random.key(2),
                                                  query_length=16, doc_length=64))
  lite = run_eval(
      beir_dir=str(beir_dir), split="test", output_dir=str(tmp_path / "lite"), retriever="bm25",
      model=retrieval_jobs.model_encoders(lite_module, lite_params, "t5_1_1", batch_size=16),
      rerank_depth=5, rerank_with="lite", doc_length=64, query_length=16, log=lambda m: None)
  assert lite["run"] == "lite" and lite["rerank_with"] == "lite"
  run = runs_lib.read_trec_run(tmp_path / "lite" / "run.trec")
  assert all(set(docs) == {d for d, _ in runs_lib.ranked(first[q])[:5]}
             for q, docs in run.items())
  with pytest.raises(ValueError, match="LITE"):
    run_eval(beir_dir=str(beir_dir), split="test", output_dir=str(tmp_path / "l2"),
                           retriever="bm25", model=encoders, rerank_depth=5, rerank_with="lite",
                           doc_length=64, query_length=16, log=lambda m: None)
  with pytest.raises(ValueError, match="needs a model"):
    run_eval(beir_dir=str(beir_dir), split="test", output_dir=str(tmp_path / "e"),
                           retriever="exact", log=lambda m: None)


def test_load_model_from_trainer_checkpoint_and_pretrained(tiny_model, tmp_path):
  import optax

  from aligner_jax.train.checkpoints import Checkpointer
  from aligner_jax.train.state import TrainState
  module, params = tiny_model
  ck = Checkpointer(str(tmp_path / "model" / "checkpoints"), period=1, async_save=False)
  ck.save(7, TrainState.create(params, optax.sgd(0.1)), {"epoch": 0}, force=True)
  ck.close()
  _, restored = retrieval_jobs.load_model(module, model_dir=str(tmp_path / "model"))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), b)
  # A model with heads cannot be evaluated from encoder weights alone.
  models.save_params(tmp_path / "enc", params["encoder"], config=models.t5_config("tiny"))
  with pytest.raises(retrieval_jobs.ModelLoadError, match="lacks"):
    retrieval_jobs.load_model(module, model_dir=str(tmp_path / "none"),
                              checkpoint_path=str(tmp_path / "enc"))
  bare = models.DualEncoder(encoder_config=models.t5_config("tiny"))
  _, p = retrieval_jobs.load_model(bare, model_dir=None, checkpoint_path=str(tmp_path / "enc"))
  assert set(p) == {"encoder"}
  with pytest.raises(retrieval_jobs.ModelLoadError, match="nothing to evaluate"):
    retrieval_jobs.load_model(bare, model_dir=str(tmp_path / "none"))


@pytest.mark.slow
def test_gin_jobs_encode_index_eval(beir_dir, tiny_model, tmp_path):
  module, params = tiny_model
  bare = models.DualEncoder(encoder_config=models.t5_config("tiny"), projection_dim=None)
  models.save_params(tmp_path / "enc", params["encoder"], config=models.t5_config("tiny"))
  common = [f"BEIR_DIR = '{beir_dir}'", "SPLIT = 'test'", "MODEL_DIR = None",
            f"CHECKPOINT_PATH = '{tmp_path / 'enc'}'", "EVAL_DOC_LENGTH = 64",
            "EVAL_QUERY_LENGTH = 16", "EVAL_BATCH_SIZE = 16"]
  root = pathlib.Path(__file__).resolve().parents[1]

  from aligner_jax.main import run as main_run  # registers `run`

  def run(run_file, bindings):
    gin.clear_config()
    try:
      gin.parse_config_files_and_bindings(
          [str(root / "gin/models/t5_1_1_tiny.gin"), str(root / run_file)], bindings,
          finalize_config=False)
      return main_run()
    finally:
      gin.clear_config()

  info = run("gin/runs/encode.gin", common + [f"ENCODED_DIR = '{tmp_path / 'enc_out'}'"])
  assert info["documents"] == 40
  assert (tmp_path / "enc_out" / "corpus-00000-of-00001" / "manifest.json").is_file()
  assert (tmp_path / "enc_out" / "queries-test" / "manifest.json").is_file()
  info = run("gin/runs/index.gin", [f"ENCODED_DIR = '{tmp_path / 'enc_out'}'",
                                    f"INDEX_DIR = '{tmp_path / 'index'}'", "RETRIEVER = 'exact'"])
  assert info["counts"]["documents"] == 40
  result = run("gin/runs/eval_beir.gin", common + [
      f"OUTPUT_DIR = '{tmp_path / 'eval'}'", f"INDEX_DIR = '{tmp_path / 'index'}'",
      "ALIGNMENT = 'top_p:0.25'", "EXTRA_ALIGNMENTS = ['top_k:2']", "RETRIEVER = 'exact'",
      "NUM_NEIGHBORS = 50", "NUM_REFINE = 6"])
  assert result["run"] == "top_p:0.25" and result["index"]["backend"] == "exact"
  assert result["num_refine"] == 6
  assert set(result["by_alignment"]) == {"top_p:0.25", "top_k:2"}
  assert (tmp_path / "eval" / "run.trec").is_file()
  del bare, module


def test_demo_collection_by_name():
  collection = inputs_lib.load_split("demo", "test")
  assert collection.qrels["test"] and len(collection.corpus) > 1000
  with pytest.raises(ValueError, match="no split"):
    inputs_lib.load_split("demo", "nope")


@pytest.mark.slow
def test_product_quantised_index_from_the_evaluation(beir_dir, encoders, tmp_path):
  """`vector_dtype='pq:M'` in the evaluation: the corpus stays float16 until the index build
  trains the codebook, and retrieval with the PQ index finds what float16 finds."""
  from aligner_jax.index import IndexConfig
  results = {}
  for fmt in ("float16", "pq:4"):
    out = tmp_path / fmt.replace(":", "")
    results[fmt] = run_eval(
        beir_dir=str(beir_dir), split="test", retriever="exact", model=encoders,
        index_dir=str(out / "index"),
        index_config=IndexConfig(backend="exact", vector_dtype=fmt),
        num_neighbors=20, top_n=15, doc_length=64, query_length=16, output_dir=str(out),
        log=lambda m: None)
  manifest = json.loads(next((tmp_path / "pq4" / "index").glob("*/manifest.json")).read_text())
  assert manifest["config"]["vector_dtype"] == "pq:4"
  assert "codebook.npy" in manifest["files"]
  assert results["pq:4"]["ndcg@10"] >= results["float16"]["ndcg@10"] - 0.15


@pytest.mark.parametrize("settings,problem", [
    (dict(retriever="bm25", rerank_depth=5, rerank_with="knrm"), "RERANK_WITH"),
    (dict(retriever="dense", adaptation=True), "adaptation needs the token index"),
    (dict(retriever="bm25", rerank_depth=5, adaptation=True), "adaptation needs the token index"),
    (dict(retriever="dense", num_pictures=2), "pictures"),
    (dict(retriever="exact"), "needs a model"),
    (dict(retriever="bm25", rerank_depth=5), "needs a model"),
    (dict(retriever="exact", alignments=[]), "at least one alignment"),
    (dict(retriever="scann", alignments=["top_q:3"]), "top_q"),
    (dict(retriever="faiss"), "RETRIEVER must be one of"),
])
def test_settings_are_checked_before_anything_is_read(tmp_path, settings, problem):
  """Every inconsistent setting is refused before the collection is read or anything written:
  the BEIR directory does not even exist here."""
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=problem):
    run_eval(beir_dir=str(tmp_path / "absent"), split="test", output_dir=str(out), **settings)
  assert not out.exists()


def test_lite_rerank_without_a_lite_head_is_refused_before_reading(encoders, tmp_path):
  with pytest.raises(ValueError, match="LITE"):
    run_eval(beir_dir=str(tmp_path / "absent"), split="test", output_dir=str(tmp_path / "o"),
             retriever="bm25", model=encoders, rerank_depth=5, rerank_with="lite")


def test_ivf_retriever_matches_exact_search_when_every_cell_is_searched(beir_dir, encoders,
                                                                        tmp_path):
  common = dict(beir_dir=str(beir_dir), split="test", model=encoders, num_neighbors=20,
                top_n=15, doc_length=64, query_length=16, log=lambda m: None)
  exact = run_eval(output_dir=str(tmp_path / "exact"), retriever="exact",
                   index_dir=str(tmp_path / "exact_index"), **common)
  ivf = run_eval(output_dir=str(tmp_path / "ivf"), retriever="ivf",
                 index_dir=str(tmp_path / "ivf_index"), leaves_to_search=10**6, **common)
  # Candidates from int8 residual codes, refined with the stored vectors: the same ranking up
  # to the few candidates the quantisation changes.
  assert ivf["ndcg@10"] == pytest.approx(exact["ndcg@10"], abs=0.02)
  index = json.loads((tmp_path / "ivf_index" / "index.json").read_text())
  assert index["config"]["backend"] == "ivf"
  with pytest.raises(ValueError, match="LEAVES_TO_SEARCH"):
    run_eval(output_dir=str(tmp_path / "bad"), retriever="exact", leaves_to_search=4,
             index_dir=str(tmp_path / "bad_index"), **common)
