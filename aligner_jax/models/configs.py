"""Encoder configs by name, and the one dispatcher from a config to its Flax module.

Gin binds these functions (see `gin_registry.py`); library code calls them directly.
"""

from typing import Any

import flax.linen as nn

from aligner_jax.models import bert as bert_lib
from aligner_jax.models import t5 as t5_lib

EncoderConfig = t5_lib.T5Config | bert_lib.BertConfig


def t5_config(size: str = "base", *, version: str = "1.1", **overrides: Any) -> t5_lib.T5Config:
  """A T5 encoder config: T5 v1.1 sizes, or `version="1.0"` for the original T5's ReLU,
  non-gated feed-forward at the same size (original T5's own sizes differ; load those with
  `from_pretrained`, which reads them from config.json)."""
  if version == "1.1":
    return t5_lib.t5_1_1_config(size, **overrides)
  if version == "1.0":
    return t5_lib.t5_1_1_config(size, **{"activation": "relu", "gated": False, **overrides})
  raise ValueError(f"unknown T5 version {version!r}; use '1.1' or '1.0'")


def bert_config(size: str = "minilm_l6", **overrides: Any) -> bert_lib.BertConfig:
  """A BERT encoder config by size name (tiny/minilm_l6/base/large)."""
  return bert_lib.bert_config(size, **overrides)


def build_encoder(config: EncoderConfig, *, name: str | None = None) -> nn.Module:
  """The encoder module for a config: T5Config -> T5Encoder, BertConfig -> BertEncoder.

  `name` names the submodule when called inside another module's setup / compact method.
  """
  if isinstance(config, t5_lib.T5Config):
    return t5_lib.T5Encoder(config, name=name)
  if isinstance(config, bert_lib.BertConfig):
    return bert_lib.BertEncoder(config, name=name)
  raise TypeError(f"not an encoder config: {type(config).__name__} (expected T5Config or "
                  "BertConfig)")


def hidden_size(config: EncoderConfig) -> int:
  return config.d_model if isinstance(config, t5_lib.T5Config) else config.hidden_size
