"""A multi-vector DualEncoder written in the sentence-transformers / PyLate ColBERT layout
(pylate_layout.py), so that PyLate's `models.ColBERT(path)` loads it and gives the project's
token vectors.

`export_colbert(out_dir, module, params, tokenizer_dir=..., ...)` writes the whole directory
at once (`atomic_dir`: a killed export leaves the previous directory, or none). Weights go
through `safetensors.numpy` (no torch). What is written:
  * the BERT backbone as Hugging Face `BertModel` (config.json, model.safetensors);
  * the token projection as PyLate's Dense module (a model without one gets an identity
    projection, since PyLate adds a random one to a directory without);
  * each side's framing as PyLate's settings: marker token -> query_prefix / document_prefix
    (its token string; "" for none), framing length or the given length -> query_length /
    document_length, query expansion -> do_query_expansion / attend_to_expansion_tokens,
    the documents' skip list -> skiplist_words (the tokens' strings; [] for none);
  * the tokenizer files of `tokenizer_dir` (the directory of the model's tokenizer.json).
Refused with `ExportError`, naming the part: two towers, a LITE head, salience heads (unless
`drop_salience`: the token vectors do not depend on them), vectors not L2-normalised (PyLate
always normalises), a T5 backbone, and framings PyLate cannot express (an expansion token
other than the tokenizer's mask token, expansion of documents, a skip list for queries).
"""

import dataclasses
import os
import pathlib
import shutil
from typing import Any

import flax
import numpy as np
from safetensors.numpy import save_file

from aligner_jax.io import atomic_dir
from aligner_jax.io import write_json
from aligner_jax.models import bert as bert_lib
from aligner_jax.models import configs
from aligner_jax.models import pylate_layout
from aligner_jax.models.framing import Framing

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")
TORCH_ACTIVATIONS = {name: cls for cls, name in pylate_layout.ACTIVATION_CLASSES.items()}


class ExportError(ValueError):
  """The model holds something the PyLate layout cannot express."""


@dataclasses.dataclass(frozen=True)
class SideSettings:
  """One side's PyLate settings: prefix token, length, expansion, skip list."""
  prefix: str
  length: int
  expansion: bool = False
  attend: bool = False
  skip_words: tuple[str, ...] = ()


def _check_module(module: Any, params: Any, drop_salience: bool) -> None:
  if not module.shared_encoder:
    raise ExportError("two towers (shared_encoder=False): a PyLate model has one encoder")
  if module.lite_scorer is not None:
    raise ExportError("a LITE head: PyLate scores by MaxSim only")
  if not module.normalize_vectors:
    raise ExportError("normalize_vectors=False: PyLate always L2-normalises token vectors")
  if not isinstance(module.encoder_config, bert_lib.BertConfig):
    raise ExportError(f"{type(module.encoder_config).__name__} backbone: only BERT encoders "
                      "are exported")
  salience = [k for k in ("query_salience", "doc_salience") if k in params]
  if salience and not drop_salience:
    raise ExportError(f"salience heads {salience}: PyLate has none (drop_salience=True exports "
                      "the token vectors without them)")


def _token(tokenizer: Any, token_id: int, what: str) -> str:
  """The string PyLate converts back to `token_id`: an added token's own content (the
  library's `id_to_token` gives a normalised, e.g. lower-cased, form of it), else the
  vocabulary entry."""
  added = tokenizer.get_added_tokens_decoder().get(int(token_id))
  token = added.content if added is not None else tokenizer.id_to_token(int(token_id))
  if token is None:
    raise ExportError(f"{what} id {token_id} is not a token of the tokenizer")
  return token


def side_settings(framing: Framing | None, length: int | None, tokenizer: Any, side: str,
                  mask_id: int | None) -> SideSettings:
  """PyLate's settings of one side ("query" | "doc") from its framing (or none + length)."""
  if framing is None:
    if length is None:
      raise ExportError(f"the {side} side has no framing: give its {side}_length")
    return SideSettings(prefix="", length=int(length))
  if framing.expansion_id is not None and side == "doc":
    raise ExportError("document expansion: PyLate expands queries only")
  if framing.skip_ids and side == "query":
    raise ExportError("a query skip list: PyLate skips document tokens only")
  if framing.expansion_id is not None and framing.expansion_id != mask_id:
    raise ExportError(f"query expansion token {framing.expansion_id} is not the tokenizer's "
                      f"mask token ({mask_id}), which PyLate pads with")
  prefix = "" if framing.marker_id is None else _token(tokenizer, framing.marker_id, "marker")
  words = tuple(_token(tokenizer, i, "skip-list token") for i in framing.skip_ids)
  return SideSettings(prefix=prefix, length=framing.max_length,
                      expansion=framing.expansion_id is not None,
                      attend=framing.attend_to_expansion, skip_words=words)


def colbert_config(query: SideSettings, doc: SideSettings) -> dict[str, Any]:
  """config_sentence_transformers.json."""
  return {"prompts": {}, "default_prompt_name": None,
          "similarity_fn_name": pylate_layout.MAXSIM, "query_prefix": query.prefix,
          "document_prefix": doc.prefix, "query_length": query.length,
          "document_length": doc.length, "do_query_expansion": query.expansion,
          "attend_to_expansion_tokens": query.attend, "skiplist_words": list(doc.skip_words)}


def bert_hf_config(cfg: bert_lib.BertConfig) -> dict[str, Any]:
  """Hugging Face config.json of a BertModel with `cfg`'s sizes."""
  return {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": cfg.vocab_size,
          "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
          "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.intermediate_size,
          "hidden_act": cfg.activation, "hidden_dropout_prob": cfg.dropout_rate,
          "attention_probs_dropout_prob": cfg.attention_dropout_rate,
          "max_position_embeddings": cfg.max_position_embeddings,
          "type_vocab_size": cfg.type_vocab_size, "initializer_range": cfg.initializer_range,
          "layer_norm_eps": cfg.layer_norm_epsilon, "pad_token_id": cfg.pad_token_id,
          "position_embedding_type": "absolute"}


def _f32(x: Any) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, np.float32))


def _dense_tensors(name: str, p: dict[str, Any]) -> dict[str, np.ndarray]:
  """A kernel [*in, *out] and bias [*out] as torch Linear `name.weight` [out, in] and
  `name.bias` [out]: the inverse of hf_import's `_linear`."""
  bias = np.reshape(np.asarray(p["bias"], np.float32), -1)
  kernel = np.asarray(p["kernel"], np.float32).reshape(-1, bias.size)
  return {f"{name}.weight": _f32(kernel.T), f"{name}.bias": _f32(bias)}


def _layer_norm_tensors(name: str, p: dict[str, Any]) -> dict[str, np.ndarray]:
  return {f"{name}.weight": _f32(p["scale"]), f"{name}.bias": _f32(p["bias"])}


def bert_tensors(params: dict[str, Any], cfg: bert_lib.BertConfig) -> dict[str, np.ndarray]:
  """Hugging Face BertModel tensors of BertEncoder params (inverse of `bert_params_from_hf`)."""
  tensors = {
      "embeddings.word_embeddings.weight": _f32(params["token_embedder"]["embedding"]),
      "embeddings.position_embeddings.weight": _f32(params["position_embedder"]["embedding"]),
      "embeddings.token_type_embeddings.weight": _f32(params["type_embedder"]["embedding"]),
      **_layer_norm_tensors("embeddings.LayerNorm", params["embedding_layer_norm"]),
  }
  for i in range(cfg.num_layers):
    p, layer = f"encoder.layer.{i}", params[f"layers_{i}"]
    attention = layer["attention"]
    tensors.update({
        **_dense_tensors(f"{p}.attention.self.query", attention["query"]),
        **_dense_tensors(f"{p}.attention.self.key", attention["key"]),
        **_dense_tensors(f"{p}.attention.self.value", attention["value"]),
        **_dense_tensors(f"{p}.attention.output.dense", attention["out"]),
        **_layer_norm_tensors(f"{p}.attention.output.LayerNorm",
                              layer["attention_layer_norm"]),
        **_dense_tensors(f"{p}.intermediate.dense", layer["wi"]),
        **_dense_tensors(f"{p}.output.dense", layer["wo"]),
        **_layer_norm_tensors(f"{p}.output.LayerNorm", layer["mlp_layer_norm"]),
    })
  if "pooler" in params:
    tensors.update(_dense_tensors("pooler.dense", params["pooler"]))
  return tensors


def dense_module(params: dict[str, Any], module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """(1_Dense/config.json, its tensors) of the token projection (identity when none)."""
  width = configs.hidden_size(module.encoder_config)
  projection = params.get("token_projection")
  if projection is None:
    kernel, bias, activation = np.eye(width, dtype=np.float32), None, "identity"
  else:
    kernel, bias = np.asarray(projection["kernel"], np.float32), projection.get("bias")
    activation = module.projection_activation
  tensors = {"linear.weight": _f32(kernel.T)}
  if bias is not None:
    tensors["linear.bias"] = _f32(bias)
  config = {"in_features": int(kernel.shape[0]), "out_features": int(kernel.shape[1]),
            "bias": bias is not None, "activation_function": TORCH_ACTIVATIONS[activation],
            "use_residual": False}
  return config, tensors


def _copy_tokenizer(tokenizer_dir: pathlib.Path, out: pathlib.Path) -> None:
  if not (tokenizer_dir / "tokenizer.json").is_file():
    raise ExportError(f"{tokenizer_dir}: no tokenizer.json")
  for name in TOKENIZER_FILES:
    if (tokenizer_dir / name).is_file():
      shutil.copyfile(tokenizer_dir / name, out / name)


def _modules() -> list[dict[str, Any]]:
  return [{"idx": 0, "name": "0", "path": "", "type": pylate_layout.TRANSFORMER_TYPE},
          {"idx": 1, "name": "1", "path": pylate_layout.DENSE_DIR,
           "type": pylate_layout.DENSE_TYPE}]


def export_colbert(out_dir: str | os.PathLike, module: Any, params: Any, *,
                   tokenizer_dir: str | os.PathLike, query_length: int | None = None,
                   doc_length: int | None = None, drop_salience: bool = False) -> pathlib.Path:
  """Writes `module` (a DualEncoder) with `params` as a PyLate ColBERT directory.

  Args:
    out_dir: the directory to write (replaced whole if it exists).
    module, params: the model (params boxed or not, NumPy or jax arrays).
    tokenizer_dir: the directory holding the model's tokenizer.json (and its companions).
    query_length, doc_length: PyLate's query_length / document_length for a side without a
      framing (the lengths the model was trained with); a framing's own length wins.
    drop_salience: export a model with salience heads without them.
  Returns:
    The directory written.
  """
  params = flax.core.unfreeze(flax.linen.unbox(params))
  _check_module(module, params, drop_salience)
  tokenizer_dir = pathlib.Path(tokenizer_dir)
  tokenizer = pylate_layout.tokenizer_of(tokenizer_dir)
  mask_id = pylate_layout.special_token_id(tokenizer, tokenizer_dir, "mask_token")
  query = side_settings(module.query_framing, query_length, tokenizer, "query", mask_id)
  doc = side_settings(module.doc_framing, doc_length, tokenizer, "doc", mask_id)
  dense_config, dense_tensors = dense_module(params, module)
  cfg = module.encoder_config
  with atomic_dir(out_dir) as tmp:
    write_json(tmp / "config.json", bert_hf_config(cfg))
    save_file(bert_tensors(params["encoder"], cfg), str(tmp / "model.safetensors"))
    _copy_tokenizer(tokenizer_dir, tmp)
    write_json(tmp / pylate_layout.MODULES_FILE, _modules(), sort_keys=False)
    write_json(tmp / pylate_layout.SBERT_CONFIG_FILE,
               {"max_seq_length": doc.length, "do_lower_case": False})
    write_json(tmp / pylate_layout.MODEL_CONFIG_FILE, colbert_config(query, doc))
    (tmp / pylate_layout.DENSE_DIR).mkdir()
    write_json(tmp / pylate_layout.DENSE_DIR / "config.json", dense_config)
    save_file(dense_tensors, str(tmp / pylate_layout.DENSE_DIR / "model.safetensors"))
  return pathlib.Path(out_dir)
