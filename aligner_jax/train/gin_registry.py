"""Gin names for training (`import aligner_jax.train.gin_registry` in gin/runs/train.gin).

The training library stays gin-free; this module registers, under the gin module
`aligner_jax.train`:
  train            the train job (`run.job = @train`), `aligner_jax.train.train_job.train`
  train_pipeline   the seqio/NumPy input pipeline it reads (`train.dataset_fn = @train_pipeline`)
  RetrievalModel, LiteModel   what is trained (`aligner_jax.train.model_fns`)
  CrossEncoderModel           a cross-encoder re-ranker / teacher (`cross_encoder.py`)
  score_candidates, load_cross_encoder   the teacher-scoring job (`teacher_job.py`,
                              `run.job = @score_candidates`) and its teacher
  export_colbert              the PyLate-layout export job (`export_job.py`)
  make_optimizer, warmup_rsqrt_decay, warmup_linear_decay, warmup_constant,
  constant_learning_rate (`optim.constant`)
and `LiteScorer` / `KnrmScorer` (under `aligner_jax.scoring`) for `DualEncoder.lite_scorer`.
"""

import gin

from aligner_jax.scoring import knrm
from aligner_jax.scoring import lite
from aligner_jax.train import cross_encoder
from aligner_jax.train import export_job
from aligner_jax.train import model_fns
from aligner_jax.train import optim
from aligner_jax.train import teacher_job
from aligner_jax.train import train_job

_MODULE = "aligner_jax.train"

gin.external_configurable(train_job.train, name="train", module=_MODULE)
gin.external_configurable(train_job.train_pipeline, name="train_pipeline", module=_MODULE)
gin.external_configurable(model_fns.RetrievalModel, name="RetrievalModel", module=_MODULE)
gin.external_configurable(model_fns.LiteModel, name="LiteModel", module=_MODULE)
gin.external_configurable(cross_encoder.CrossEncoderModel, name="CrossEncoderModel",
                          module=_MODULE)
gin.external_configurable(teacher_job.score_candidates, name="score_candidates",
                          module=_MODULE)
gin.external_configurable(teacher_job.load_cross_encoder, name="load_cross_encoder",
                          module=_MODULE)
gin.external_configurable(optim.make_optimizer, name="make_optimizer", module=_MODULE)
for _schedule in (optim.warmup_rsqrt_decay, optim.warmup_linear_decay, optim.warmup_constant):
  gin.external_configurable(_schedule, module=_MODULE)
# `constant` alone would clash with gin's own `gin.constant`.
gin.external_configurable(optim.constant, name="constant_learning_rate", module=_MODULE)
gin.external_configurable(lite.LiteScorer, name="LiteScorer", module="aligner_jax.scoring")
gin.external_configurable(knrm.KnrmScorer, name="KnrmScorer", module="aligner_jax.scoring")
gin.external_configurable(export_job.export_colbert, name="export_colbert", module=_MODULE)
