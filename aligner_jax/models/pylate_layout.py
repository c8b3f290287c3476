"""Late-interaction (ColBERT) models in the sentence-transformers / PyLate directory layout:
reading one into a `DualEncoder` (`load_colbert`), and the names both directions share
(export.py writes the layout).

The layout, as PyLate's `ColBERT.save` writes it:
  modules.json                       [Transformer (path ""), Dense ("1_Dense")]
  config.json, model.safetensors     the backbone (Hugging Face BERT, or a T5 encoder)
  tokenizer.json, tokenizer_config.json, special_tokens_map.json (vocab.txt)
  sentence_bert_config.json          {"max_seq_length", "do_lower_case"}
  config_sentence_transformers.json  query_prefix, document_prefix, query_length,
                                     document_length, do_query_expansion,
                                     attend_to_expansion_tokens, skiplist_words,
                                     similarity_fn_name ("MaxSim"), prompts
  1_Dense/config.json                in_features, out_features, bias, activation_function,
                                     use_residual
  1_Dense/model.safetensors          linear.weight [out, in], linear.bias [out]

What PyLate does with it, and so the imported model (PyLate 1.6 `ColBERT.tokenize` /
`encode`): the prefix token is inserted after the first token of the text truncated one
token shorter; queries are padded to query_length with [MASK] (the tokenizer's mask token,
else its end-of-sequence token), not attended to unless attend_to_expansion_tokens, and all
query_length vectors are kept; documents are cut at document_length and the vectors of the
skip-list words (each converted to one id; unknown words become [UNK], as Hugging Face's
convert_tokens_to_ids does) are dropped; every vector goes through the Dense layer and is
L2-normalised. Scores are MaxSim (the project's `top_k:1` alignment: the same ranking, divided
by the number of query vectors). A prefix that is not already a token of tokenizer.json is an
error: PyLate would add it with a freshly drawn embedding that the directory does not hold.
"""

import dataclasses
import pathlib
import string
from typing import Any

import numpy as np

from aligner_jax.models import configs
from aligner_jax.models import dual_encoder
from aligner_jax.models import hf_import
from aligner_jax.models.framing import Framing
from aligner_jax.models.hf_import import CheckpointError

MODULES_FILE = "modules.json"
MODEL_CONFIG_FILE = "config_sentence_transformers.json"
SBERT_CONFIG_FILE = "sentence_bert_config.json"
DENSE_DIR = "1_Dense"
TRANSFORMER_TYPE = "sentence_transformers.models.Transformer"
DENSE_TYPE = "pylate.models.Dense.Dense"
MAXSIM = "MaxSim"
MAXSIM_ALIGNMENT = "top_k:1"
# sentence-transformers' Dense `activation_function` (a torch class path) <-> DualEncoder's
# `projection_activation`.
ACTIVATION_CLASSES = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.activation.SiLU": "silu",
}
# PyLate's defaults for settings its config file does not hold.
DEFAULT_SETTINGS = {
    "query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 32,
    "document_length": 180, "do_query_expansion": True, "attend_to_expansion_tokens": False,
    "skiplist_words": list(string.punctuation), "similarity_fn_name": MAXSIM,
}


@dataclasses.dataclass(frozen=True)
class ColbertSettings:
  """config_sentence_transformers.json of a ColBERT directory, PyLate's defaults filled in."""
  query_prefix: str
  document_prefix: str
  query_length: int
  document_length: int
  do_query_expansion: bool
  attend_to_expansion_tokens: bool
  skiplist_words: tuple[str, ...]
  similarity_fn_name: str


@dataclasses.dataclass(frozen=True)
class DenseLayer:
  """One sentence-transformers Dense module: y = activation(x W^T + b)."""
  path: pathlib.Path
  in_features: int
  out_features: int
  bias: bool
  activation: str  # a DualEncoder projection_activation


@dataclasses.dataclass(frozen=True)
class ColbertModel:
  """An imported ColBERT: the module, its parameters and what the pipeline needs around it.

  Attributes:
    module: the DualEncoder (token projection, framings of both sides).
    params: {"encoder": ..., "token_projection": {"kernel" [H, h], "bias" [h]?}} (NumPy).
    vocabulary: path of the tokenizer.json (for `get_vocabulary` / the VOCABULARY macro).
    query_length, doc_length: PyLate's query_length / document_length.
    alignment: the project's alignment spec of the model's similarity ("top_k:1").
  """
  module: Any
  params: dict[str, Any]
  vocabulary: str
  query_length: int
  doc_length: int
  alignment: str = MAXSIM_ALIGNMENT


def _modules(root: pathlib.Path) -> list[dict[str, Any]]:
  path = root / MODULES_FILE
  if not path.is_file():
    raise CheckpointError(f"{root}: no {MODULES_FILE} (not a sentence-transformers directory)")
  modules = hf_import.read_json(path)
  if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
    raise CheckpointError(f"{path}: expected a list of module objects")
  return modules


def is_colbert_dir(path: Any) -> bool:
  """Whether `path` is a sentence-transformers directory with a Dense module and a late-
  interaction configuration (PyLate's keys or MaxSim)."""
  root = pathlib.Path(path)
  if not (root / MODULES_FILE).is_file() or not (root / MODEL_CONFIG_FILE).is_file():
    return False
  config = hf_import.read_json(root / MODEL_CONFIG_FILE)
  has_dense = any(str(m.get("type", "")).endswith("Dense") for m in _modules(root))
  return has_dense and (config.get("similarity_fn_name") == MAXSIM or "query_prefix" in config)


def read_settings(root: pathlib.Path) -> ColbertSettings:
  """The late-interaction settings of `root`, with the checks PyLate's loader implies."""
  path = root / MODEL_CONFIG_FILE
  config = hf_import.read_json(path) if path.is_file() else {}
  values = {k: config.get(k, default) for k, default in DEFAULT_SETTINGS.items()}
  values = {k: DEFAULT_SETTINGS[k] if v is None else v for k, v in values.items()}
  if values["similarity_fn_name"] != MAXSIM:
    raise CheckpointError(f"{path}: similarity_fn_name {values['similarity_fn_name']!r} is not "
                          f"{MAXSIM!r} (not a late-interaction model)")
  prompt_name = config.get("default_prompt_name")
  if prompt_name and (config.get("prompts") or {}).get(prompt_name):
    raise CheckpointError(f"{path}: default_prompt_name {prompt_name!r} prepends a prompt "
                          "text; prompts are not supported")
  for key in ("query_length", "document_length"):
    if not isinstance(values[key], int) or values[key] < 2:
      raise CheckpointError(f"{path}: {key} must be an integer >= 2, got {values[key]!r}")
  sbert = root / SBERT_CONFIG_FILE
  if sbert.is_file() and hf_import.read_json(sbert).get("do_lower_case"):
    raise CheckpointError(f"{sbert}: do_lower_case true (sentence-transformers lower-cases "
                          "texts before the tokenizer) is not supported")
  values["skiplist_words"] = tuple(values["skiplist_words"])
  return ColbertSettings(**values)


def _dense_layer(root: pathlib.Path, module: dict[str, Any]) -> DenseLayer:
  path = root / module.get("path", "")
  config_path = path / "config.json"
  config = hf_import.read_json(config_path)
  activation = config.get("activation_function", "torch.nn.modules.linear.Identity")
  if activation not in ACTIVATION_CLASSES:
    raise CheckpointError(f"{config_path}: activation_function {activation!r} is not one of "
                          f"{sorted(ACTIVATION_CLASSES)}")
  if config.get("use_residual"):
    raise CheckpointError(f"{config_path}: use_residual true is not supported")
  try:
    return DenseLayer(path, int(config["in_features"]), int(config["out_features"]),
                      bool(config.get("bias", True)), ACTIVATION_CLASSES[activation])
  except KeyError as e:
    raise CheckpointError(f"{config_path}: missing key {e.args[0]!r}") from e


def read_dense(root: pathlib.Path) -> DenseLayer:
  """The one Dense module of `root` (PyLate keeps only Transformer and Dense modules)."""
  dense = [m for m in _modules(root) if str(m.get("type", "")).endswith("Dense")]
  if len(dense) != 1:
    raise CheckpointError(f"{root / MODULES_FILE}: {len(dense)} Dense modules; exactly one "
                          "token projection is supported (PyLate would add a randomly "
                          "initialised one to a directory without)")
  return _dense_layer(root, dense[0])


def dense_params(layer: DenseLayer) -> dict[str, np.ndarray]:
  """{"kernel": [in, out], "bias": [out] if the layer has one} from 1_Dense's safetensors."""
  reader = hf_import.SafetensorsReader(layer.path)
  weight = reader.get("linear.weight")
  if weight.shape != (layer.out_features, layer.in_features):
    raise CheckpointError(f"{reader.description}: tensor 'linear.weight' has shape "
                          f"{weight.shape}, expected {(layer.out_features, layer.in_features)} "
                          "from config.json")
  params = {"kernel": np.ascontiguousarray(weight.T)}
  if layer.bias:
    bias = reader.get("linear.bias")
    if bias.shape != (layer.out_features,):
      raise CheckpointError(f"{reader.description}: tensor 'linear.bias' has shape "
                            f"{bias.shape}, expected {(layer.out_features,)}")
    params["bias"] = bias
  return params


def _special_token(model_dir: pathlib.Path, name: str) -> str | None:
  """A special token's text from tokenizer_config.json or special_tokens_map.json."""
  for file in ("tokenizer_config.json", "special_tokens_map.json"):
    path = model_dir / file
    value = hf_import.read_json(path).get(name) if path.is_file() else None
    if isinstance(value, dict):
      value = value.get("content")
    if value:
      return value
  return None


def special_token_id(tokenizer: Any, model_dir: pathlib.Path, name: str) -> int | None:
  """The id of special token `name` ("mask_token", "unk_token", ...), None if it has none."""
  token = _special_token(model_dir, name)
  return None if token is None else tokenizer.token_to_id(token)


def tokenizer_of(model_dir: pathlib.Path) -> Any:
  """The `tokenizers.Tokenizer` of `model_dir/tokenizer.json`."""
  import tokenizers  # pylint: disable=import-outside-toplevel  # only needed here

  path = pathlib.Path(model_dir) / "tokenizer.json"
  if not path.is_file():
    raise CheckpointError(f"{model_dir}: no tokenizer.json (a fast tokenizer file is needed)")
  return tokenizers.Tokenizer.from_file(str(path))


def _prefix_id(tokenizer: Any, prefix: str, key: str, source: pathlib.Path) -> int | None:
  if not prefix:
    return None
  token_id = tokenizer.token_to_id(prefix)
  if token_id is None:
    raise CheckpointError(f"{source}: {key} {prefix!r} is not a token of tokenizer.json (PyLate "
                          "would add it with a new random embedding); save the model with "
                          "PyLate first")
  return token_id


def _expansion_id(tokenizer: Any, model_dir: pathlib.Path) -> int:
  for name in ("mask_token", "eos_token"):
    token_id = special_token_id(tokenizer, model_dir, name)
    if token_id is not None:
      return token_id
  raise CheckpointError(f"{model_dir}: query expansion needs a mask or end-of-sequence token "
                        "(tokenizer_config.json names neither)")


def _word_id(tokenizer: Any, word: str, unk_id: int | None, source: pathlib.Path) -> int:
  token_id = tokenizer.token_to_id(word)
  if token_id is None:
    token_id = unk_id
  if token_id is None:
    raise CheckpointError(f"{source}: skip-list word {word!r} is not a token and the tokenizer "
                          "has no unknown token")
  return token_id


def framings(root: pathlib.Path, model_dir: pathlib.Path, settings: ColbertSettings
             ) -> tuple[Framing, Framing]:
  """(query framing, document framing) of the settings, with ids from tokenizer.json."""
  tokenizer = tokenizer_of(model_dir)
  source = root / MODEL_CONFIG_FILE
  unk_id = special_token_id(tokenizer, model_dir, "unk_token")
  expansion = _expansion_id(tokenizer, model_dir) if settings.do_query_expansion else None
  query = Framing(settings.query_length,
                  marker_id=_prefix_id(tokenizer, settings.query_prefix, "query_prefix", source),
                  expansion_id=expansion,
                  attend_to_expansion=bool(expansion is not None
                                           and settings.attend_to_expansion_tokens))
  skip = tuple(sorted({_word_id(tokenizer, w, unk_id, source) for w in settings.skiplist_words}))
  doc = Framing(settings.document_length,
                marker_id=_prefix_id(tokenizer, settings.document_prefix, "document_prefix",
                                     source),
                skip_ids=skip)
  return query, doc


def _check_lengths(settings: ColbertSettings, config: Any, root: pathlib.Path) -> None:
  limit = getattr(config, "max_position_embeddings", None)
  longest = max(settings.query_length, settings.document_length)
  if limit is not None and longest > limit:
    raise CheckpointError(f"{root / MODEL_CONFIG_FILE}: length {longest} exceeds the encoder's "
                          f"max_position_embeddings {limit}")


def colbert_module(path: Any, **config_overrides: Any) -> tuple[Any, ColbertSettings]:
  """(DualEncoder, settings) of a ColBERT directory, without reading its weights.

  Args:
    path: the directory (see the module docstring).
    **config_overrides: encoder config fields to change (e.g. `dtype="bfloat16"`).
  """
  root = pathlib.Path(path)
  settings = read_settings(root)
  layer = read_dense(root)
  model_dir = hf_import.resolve_model_dir(root)
  config = hf_import.encoder_config(model_dir, **config_overrides)
  _check_lengths(settings, config, root)
  if layer.in_features != configs.hidden_size(config):
    raise CheckpointError(f"{layer.path / 'config.json'}: in_features {layer.in_features} != "
                          f"the encoder's hidden size {configs.hidden_size(config)}")
  query, doc = framings(root, model_dir, settings)
  module = dual_encoder.DualEncoder(
      config, projection_dim=layer.out_features, projection_bias=layer.bias,
      projection_activation=layer.activation, normalize_vectors=True, query_framing=query,
      doc_framing=doc)
  return module, settings


def colbert_params(path: Any) -> dict[str, Any]:
  """{"encoder": ..., "token_projection": ...}: a ColBERT directory's weights in the
  DualEncoder layout (`colbert_module`'s)."""
  root = pathlib.Path(path)
  config = hf_import.encoder_config(root)
  return {"encoder": hf_import.encoder_params(root, config),
          "token_projection": dense_params(read_dense(root))}


def colbert_dual_encoder(path: Any, **config_overrides: Any) -> Any:
  """The DualEncoder of a ColBERT directory (gin: `ColbertDualEncoder`)."""
  return colbert_module(path, **config_overrides)[0]


def colbert_vocabulary(path: Any) -> str:
  """The tokenizer.json of a ColBERT directory (gin: the VOCABULARY macro)."""
  return str(hf_import.resolve_model_dir(path) / "tokenizer.json")


def colbert_length(path: Any, side: str) -> int:
  """query_length ("query") or document_length ("doc") of a ColBERT directory."""
  if side not in ("query", "doc"):
    raise ValueError(f"side must be 'query' or 'doc', got {side!r}")
  settings = read_settings(pathlib.Path(path))
  return settings.query_length if side == "query" else settings.document_length


def load_colbert(path: Any, **config_overrides: Any) -> ColbertModel:
  """Reads a sentence-transformers / PyLate ColBERT directory (see the module docstring)."""
  root = pathlib.Path(path)
  module, settings = colbert_module(root, **config_overrides)
  return ColbertModel(module=module, params=colbert_params(root),
                      vocabulary=colbert_vocabulary(root),
                      query_length=settings.query_length, doc_length=settings.document_length)
