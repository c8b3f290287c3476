"""`from_pretrained` against Hugging Face transformers (torch, tests only) as the reference.

Random-weight T5 v1.1 / T5 / BERT models are saved with `save_pretrained(safe_serialization=
True)` and loaded back with our importer; hidden states must agree within 1e-4 on real
positions. The real all-MiniLM-L6-v2 weights give the same normalised mean-pooled sentence
embeddings as transformers on SciFact abstracts.
"""

import json
import pathlib

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from aligner_jax import models  # noqa: E402
from aligner_jax.models import hf_import  # noqa: E402

ATOL = 1e-4


def _randomise_norms(model) -> None:
  """HF initialises norm scales to 1, which would hide a norm applied in the wrong place."""
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name or "LayerNorm" in name:
        p.copy_(torch.rand(p.shape, generator=gen) + 0.5)


def _inputs(rng: np.random.Generator, batch: int, length: int, vocab: int):
  ids = rng.integers(2, vocab, (batch, length))
  lengths = rng.integers(1, length + 1, batch)
  lengths[0] = length  # one unpadded row
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
  return ids, mask


def _compare(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
  valid = mask.astype(bool)
  assert ours.shape == ref.shape
  return float(np.max(np.abs(ours[valid] - ref[valid])))


def _t5_config(**kw):
  return transformers.T5Config(vocab_size=320, d_model=64, d_kv=16, d_ff=96, num_layers=2,
                               num_heads=4, dropout_rate=0.0, decoder_start_token_id=0, **kw)


@pytest.fixture(scope="module")
def hf_t5_1_1_dir(tmp_path_factory):
  torch.manual_seed(0)
  model = transformers.T5EncoderModel(_t5_config(feed_forward_proj="gated-gelu")).eval()
  _randomise_norms(model)
  path = tmp_path_factory.mktemp("t5_1_1")
  model.save_pretrained(path, safe_serialization=True)
  return path, model


def test_t5_1_1_encoder_matches_hf(hf_t5_1_1_dir):
  path, hf = hf_t5_1_1_dir
  module, params = models.from_pretrained(path)
  assert isinstance(module, models.T5Encoder)
  assert module.config.gated and module.config.activation == "gelu_new"
  # Length 160 > max_distance 128 exercises every bucket, including the log-spaced ones.
  ids, mask = _inputs(np.random.default_rng(0), 3, 160, 320)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
  ours = np.asarray(jax.jit(module.apply)({"params": params}, input_ids=ids, attention_mask=mask))
  assert _compare(ours, ref.numpy(), mask) < ATOL


def test_full_t5_relu_encoder_matches_hf(tmp_path):
  """Original T5 (ReLU, non-gated, tied embeddings) saved as a full encoder-decoder."""
  torch.manual_seed(1)
  hf = transformers.T5ForConditionalGeneration(_t5_config(feed_forward_proj="relu")).eval()
  _randomise_norms(hf)
  hf.save_pretrained(tmp_path, safe_serialization=True)
  module, params = models.from_pretrained(tmp_path)
  assert not module.config.gated and module.config.activation == "relu"
  ids, mask = _inputs(np.random.default_rng(1), 2, 40, 320)
  with torch.no_grad():
    ref = hf.encoder(input_ids=torch.tensor(ids),
                     attention_mask=torch.tensor(mask)).last_hidden_state
  ours = np.asarray(jax.jit(module.apply)({"params": params}, input_ids=ids, attention_mask=mask))
  assert _compare(ours, ref.numpy(), mask) < ATOL


def _bert_config():
  return transformers.BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=96,
                                 max_position_embeddings=80, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def hf_bert_dir(tmp_path_factory):
  torch.manual_seed(2)
  model = transformers.BertModel(_bert_config()).eval()
  _randomise_norms(model)
  path = tmp_path_factory.mktemp("bert")
  model.save_pretrained(path, safe_serialization=True)
  return path, model


def test_bert_matches_hf_with_token_types(hf_bert_dir):
  path, hf = hf_bert_dir
  module, params = models.from_pretrained(path)
  assert isinstance(module, models.BertEncoder)
  rng = np.random.default_rng(2)
  ids, mask = _inputs(rng, 3, 80, 300)
  types = rng.integers(0, 2, ids.shape)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(types)).last_hidden_state
  ours = np.asarray(jax.jit(module.apply)({"params": params}, input_ids=ids, attention_mask=mask,
                                 token_type_ids=types))
  assert _compare(ours, ref.numpy(), mask) < ATOL
  # The pooler is loaded too (BertModel saves it) and matches HF's pooler_output.
  with torch.no_grad():
    ref_pool = hf(input_ids=torch.tensor(ids[:1]), token_type_ids=torch.tensor(types[:1]))
  hidden = jax.jit(module.apply)({"params": params}, input_ids=ids[:1], token_type_ids=types[:1])
  pooled = module.apply({"params": params}, hidden, method=module.pool)
  np.testing.assert_allclose(np.asarray(pooled), ref_pool.pooler_output.numpy(), atol=ATOL)


def test_sharded_safetensors_index(tmp_path, hf_bert_dir):
  _, hf = hf_bert_dir
  hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100KB")
  assert (tmp_path / "model.safetensors.index.json").is_file()
  _, params = models.from_pretrained(tmp_path)
  _, reference = models.from_pretrained(hf_bert_dir[0])
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, reference)


def test_cross_encoder_matches_hf_sequence_classification(tmp_path):
  torch.manual_seed(3)
  cfg = _bert_config()
  cfg.num_labels = 1
  hf = transformers.BertForSequenceClassification(cfg).eval()
  _randomise_norms(hf)
  hf.save_pretrained(tmp_path, safe_serialization=True)
  module, params = models.cross_encoder_from_pretrained(tmp_path)
  rng = np.random.default_rng(3)
  ids, mask = _inputs(rng, 4, 30, 300)
  types = (np.arange(30)[None, :] >= 10).astype(np.int64) * mask
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(types)).logits[:, 0].numpy()
  ours = np.asarray(jax.jit(module.apply)({"params": params}, ids, mask, types))
  np.testing.assert_allclose(ours, ref, atol=ATOL)


def _scifact_texts(scifact_dir: pathlib.Path, n: int) -> list[str]:
  texts = []
  with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as f:
    for line in f:
      doc = json.loads(line)
      texts.append(f"{doc['title']} {doc['text']}".strip())
      if len(texts) == n:
        break
  return texts


def test_minilm_sentence_embeddings_match_transformers(scifact_dir):
  model_dir = models.minilm_model_dir()
  texts = _scifact_texts(scifact_dir, 16)
  tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
  tok.enable_truncation(max_length=256)  # sentence_bert_config.json: max_seq_length 256
  tok.enable_padding(pad_id=0, pad_token="[PAD]")
  batch = tok.encode_batch(texts)
  ids = np.array([e.ids for e in batch])
  mask = np.array([e.attention_mask for e in batch])
  assert mask.sum(1).min() < mask.shape[1]  # the batch really contains padding

  hf = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
  with torch.no_grad():
    states = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
  m = torch.tensor(mask, dtype=torch.float32)[..., None]
  ref = torch.nn.functional.normalize((states * m).sum(1) / m.sum(1), dim=-1).numpy()

  pooling = models.sentence_transformers_pooling(model_dir)
  assert pooling == hf_import.SentencePooling(mode="mean", normalize=True)
  module, params = models.from_pretrained(model_dir)
  hidden = jax.jit(module.apply)({"params": params}, input_ids=ids, attention_mask=mask)
  ours = np.asarray(models.l2_normalize(models.pool(hidden, mask.astype(bool), pooling.mode)))
  np.testing.assert_allclose(ours, ref, atol=ATOL)
  # Real embeddings carry meaning: each abstract is closest to itself, and not all alike.
  sims = ours @ ours.T
  assert np.all(np.argmax(sims, axis=1) == np.arange(len(texts)))
  assert sims[~np.eye(len(texts), dtype=bool)].mean() < 0.5


def test_sentence_transformers_subfolder_layout(tmp_path, hf_bert_dir):
  """modules.json pointing the Transformer module at a subfolder is followed."""
  path, _ = hf_bert_dir
  sub = tmp_path / "0_Transformer"
  sub.mkdir()
  for name in ("config.json", "model.safetensors"):
    (sub / name).write_bytes((path / name).read_bytes())
  (tmp_path / "1_Pooling").mkdir()
  (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
      {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
  (tmp_path / "modules.json").write_text(json.dumps([
      {"idx": 0, "name": "0", "path": "0_Transformer",
       "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
  ]))
  module, _ = models.from_pretrained(tmp_path)
  assert isinstance(module, models.BertEncoder)
  assert models.sentence_transformers_pooling(tmp_path) == hf_import.SentencePooling("first",
                                                                                     False)


# ---- errors name the file and the problem -------------------------------------------------


def _copy_dir(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  dst.mkdir(exist_ok=True)
  for f in src.iterdir():
    (dst / f.name).write_bytes(f.read_bytes())
  return dst


def test_unknown_model_type_names_config(tmp_path, hf_bert_dir):
  d = _copy_dir(hf_bert_dir[0], tmp_path / "m")
  cfg = json.loads((d / "config.json").read_text())
  cfg["model_type"] = "gpt2"
  (d / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(models.CheckpointError, match=r"config\.json: model_type 'gpt2'"):
    models.from_pretrained(d)


def test_missing_tensor_names_file_and_tensor(tmp_path, hf_bert_dir):
  from safetensors.numpy import load_file
  from safetensors.numpy import save_file
  d = _copy_dir(hf_bert_dir[0], tmp_path / "m")
  tensors = load_file(d / "model.safetensors")
  del tensors["encoder.layer.1.output.dense.weight"]
  save_file(tensors, d / "model.safetensors")
  with pytest.raises(models.CheckpointError,
                     match=r"model\.safetensors: tensor 'encoder\.layer\.1\.output\.dense\.weight' "
                           r"is missing"):
    models.from_pretrained(d)


def test_shape_mismatch_names_tensor(tmp_path, hf_t5_1_1_dir):
  d = _copy_dir(hf_t5_1_1_dir[0], tmp_path / "m")
  cfg = json.loads((d / "config.json").read_text())
  cfg["d_ff"] = 128
  (d / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(models.CheckpointError, match=r"tensor 'encoder\.block\.0\.layer\.1\."
                                                   r"DenseReluDense\.wi_0\.weight' has shape"):
    models.from_pretrained(d)


def test_missing_weights_and_bad_json(tmp_path, hf_bert_dir):
  d = _copy_dir(hf_bert_dir[0], tmp_path / "m")
  (d / "model.safetensors").unlink()
  with pytest.raises(models.CheckpointError, match="no model.safetensors"):
    models.from_pretrained(d)
  (d / "config.json").write_text('{"model_type": "bert",\n  "hidden_size": }')
  with pytest.raises(models.CheckpointError, match=r"config\.json:2: invalid JSON"):
    models.from_pretrained(d)
  with pytest.raises(models.CheckpointError, match="no config.json"):
    models.from_pretrained(tmp_path)


def test_config_overrides_dtype(hf_t5_1_1_dir):
  module, params = models.from_pretrained(hf_t5_1_1_dir[0], dtype="bfloat16", dropout_rate=0.0)
  assert module.config.dtype == "bfloat16"
  assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(params))
  ids, mask = _inputs(np.random.default_rng(4), 2, 24, 320)
  out = jax.jit(module.apply)({"params": params}, input_ids=ids, attention_mask=mask)
  assert out.dtype == np.dtype("bfloat16")
  full, _ = models.from_pretrained(hf_t5_1_1_dir[0])
  ref = np.asarray(jax.jit(full.apply)({"params": params}, input_ids=ids, attention_mask=mask))
  assert _compare(np.asarray(out, np.float32), ref, mask) < 0.1 * np.abs(ref).max()
