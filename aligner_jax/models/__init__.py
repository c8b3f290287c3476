"""Encoders (T5 v1.1 / T5, BERT), checkpoint import, and the retrieval models built on them.

Public API:
  T5Config, T5Encoder, t5_1_1_config, BertConfig, BertEncoder, bert_config  -- encoders
  build_encoder(config)                       -- config -> Flax module
  from_pretrained(path) -> (module, params)   -- Hugging Face directory (T5 / BERT)
  cross_encoder_from_pretrained(path)         -- HF BertForSequenceClassification (1 label)
  load_t5x(path) -> (config, params)          -- T5X checkpoint (tensorstore) or T5X-named dict
  load_encoder(path) -> (config, params)      -- HF, T5X or orbax (saved with a config)
  save_params / load_params / load_initial_params  -- the project's orbax format
  load_pretrained_params(path)                -- {"encoder", "token_projection" of a ColBERT}
  DualEncoder, Encoded, CrossEncoder, pack_pair, insert_encoder_params, init_dual_encoder,
  insert_pretrained_params
  Framing                                     -- ColBERT markers, query expansion, skip list
  load_colbert(path) -> ColbertModel          -- sentence-transformers / PyLate ColBERT dir
  export_colbert(dir, module, params, ...)    -- the same layout written (PyLate loads it)
"""

from aligner_jax.models.bert import BertConfig
from aligner_jax.models.bert import BertEncoder
from aligner_jax.models.bert import bert_config
from aligner_jax.models.configs import EncoderConfig
from aligner_jax.models.configs import build_encoder
from aligner_jax.models.configs import hidden_size
from aligner_jax.models.configs import t5_config
from aligner_jax.models.dual_encoder import CrossEncoder
from aligner_jax.models.dual_encoder import DualEncoder
from aligner_jax.models.dual_encoder import DualEncoderOutput
from aligner_jax.models.dual_encoder import Encoded
from aligner_jax.models.dual_encoder import init_dual_encoder
from aligner_jax.models.dual_encoder import insert_encoder_params
from aligner_jax.models.dual_encoder import insert_pretrained_params
from aligner_jax.models.dual_encoder import l2_normalize
from aligner_jax.models.dual_encoder import mean_pool
from aligner_jax.models.dual_encoder import pack_pair
from aligner_jax.models.dual_encoder import pool
from aligner_jax.models.export import ExportError
from aligner_jax.models.export import export_colbert
from aligner_jax.models.framing import Framing
from aligner_jax.models.hf_import import CheckpointError
from aligner_jax.models.hf_import import cross_encoder_from_pretrained
from aligner_jax.models.hf_import import from_pretrained
from aligner_jax.models.hf_import import minilm_model_dir
from aligner_jax.models.hf_import import sentence_transformers_pooling
from aligner_jax.models.params_io import load_encoder
from aligner_jax.models.params_io import load_initial_params
from aligner_jax.models.params_io import load_params
from aligner_jax.models.params_io import load_pretrained_params
from aligner_jax.models.params_io import save_params
from aligner_jax.models.pylate_layout import ColbertModel
from aligner_jax.models.pylate_layout import load_colbert
from aligner_jax.models.t5 import T5Config
from aligner_jax.models.t5 import T5Encoder
from aligner_jax.models.t5 import t5_1_1_config
from aligner_jax.models.t5x_import import load_t5x
