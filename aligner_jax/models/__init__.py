"""Encoders (T5 v1.1 / T5, BERT), checkpoint import, and the retrieval models built on them.

Public API:
  T5Config, T5Encoder, t5_1_1_config, BertConfig, BertEncoder, bert_config  -- encoders
  build_encoder(config)                       -- config -> Flax module
  from_pretrained(path) -> (module, params)   -- Hugging Face directory (T5 / BERT)
  cross_encoder_from_pretrained(path)         -- HF BertForSequenceClassification (1 label)
  load_t5x(path) -> (config, params)          -- T5X checkpoint (tensorstore) or T5X-named dict
  load_encoder(path) -> (config, params)      -- HF, T5X or orbax (saved with a config)
  save_params / load_params / load_initial_params  -- the project's orbax format
  DualEncoder, Encoded, CrossEncoder, pack_pair, insert_encoder_params, init_dual_encoder
"""

from aligner_jax.models.bert import BertConfig, BertEncoder, bert_config
from aligner_jax.models.configs import EncoderConfig, build_encoder, hidden_size, t5_config
from aligner_jax.models.dual_encoder import (CrossEncoder, DualEncoder, DualEncoderOutput,
                                             Encoded, init_dual_encoder, insert_encoder_params,
                                             l2_normalize, mean_pool, pack_pair, pool)
from aligner_jax.models.hf_import import (CheckpointError, cross_encoder_from_pretrained,
                                          from_pretrained, minilm_model_dir,
                                          sentence_transformers_pooling)
from aligner_jax.models.params_io import (load_encoder, load_initial_params, load_params,
                                          save_params)
from aligner_jax.models.t5 import T5Config, T5Encoder, t5_1_1_config
from aligner_jax.models.t5x_import import load_t5x
