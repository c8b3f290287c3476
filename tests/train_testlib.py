"""Helpers shared by the trainer's end-to-end tests: running the entry point and fixtures.

`run_main` parses gin exactly as `python -m aligner_jax.main` does and runs the selected job
in this process (8 fake devices from conftest); `main_command` is the same as a subprocess.
`write_msmarco_fixture` writes a small MS MARCO directory in the official layout, with every
training-file format the experiment files use (triples, teacher-score triples, hard negatives
with teacher scores), from generated pseudo-words.
"""

import json
import os
import pathlib
import subprocess
import sys

import gin
import numpy as np
import orbax.checkpoint as ocp

from aligner_jax import main as main_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Dropout off: its random bits dominate XLA's compile time on CPU (~15 of ~23 CPU seconds for
# the tiny model's train step), and the step tests cover dropout keys separately.
NO_DROPOUT_T5 = ("T5Config.dropout_rate = 0.0",)
NO_DROPOUT_BERT = ("BertConfig.dropout_rate = 0.0", "BertConfig.attention_dropout_rate = 0.0")

# A tiny, fast configuration for the demo task (2 layers, d_model 64, short sequences).
TINY_DEMO_BINDINGS = (
    *NO_DROPOUT_T5,
    "TRAIN_STEPS = 4",
    "BATCH_SIZE = 8",
    "TASK_FEATURE_LENGTHS = {'query_tokens': 16, 'doc_tokens': (2, 32)}",
    "CHECKPOINT_PERIOD = 2",
    "DualEncoder.projection_dim = 16",
    "train.log_period = 1",
)


def run_main(gin_files, bindings):
  """Parses gin like the entry point and runs `run.job`; returns the job's result."""
  gin.clear_config()
  try:
    main_lib.parse_gin(list(gin_files), list(bindings))
    return main_lib.run()
  finally:
    gin.clear_config()


def read_metrics(model_dir):
  with open(os.path.join(model_dir, "train_metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def final_params(model_dir, step):
  """The parameters saved in the checkpoint of `step` (NumPy arrays)."""
  path = os.path.join(model_dir, "checkpoints", str(step), "state")
  return ocp.PyTreeCheckpointer().restore(path)["params"]


def main_command(gin_files, bindings):
  """The subprocess command line of `python -m aligner_jax.main`."""
  cmd = [sys.executable, "-m", "aligner_jax.main"]
  cmd += [f"--gin_file={f}" for f in gin_files]
  cmd += [f"--gin_bindings={b}" for b in bindings]
  return cmd


def subprocess_env(num_devices, **extra):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
  env.update(extra)
  return env


def run_subprocess(cmd, env, timeout=600):
  result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
  if result.returncode != 0:
    raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
  return result


def _words(rng, vocab, n):
  return " ".join(vocab[i] for i in rng.integers(0, len(vocab), n))


def write_msmarco_fixture(path, *, num_passages=48, num_queries=16, negatives=6, seed=0):
  """A small MS MARCO directory; returns its path."""
  rng = np.random.default_rng(seed)
  syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pa"]
  vocab = sorted({a + b + c for a in syllables for b in syllables for c in syllables})
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  pids = [str(1000 + i) for i in range(num_passages)]
  qids = [str(i) for i in range(num_queries)]
  with open(path / "collection.tsv", "w", encoding="utf-8") as f:
    for pid in pids:
      f.write(f"{pid}\t{_words(rng, vocab, int(rng.integers(8, 30)))}\n")
  with open(path / "queries.train.tsv", "w", encoding="utf-8") as f:
    for qid in qids:
      f.write(f"{qid}\t{_words(rng, vocab, int(rng.integers(3, 8)))}\n")
  triples, teacher, hard = [], [], []
  for qid in qids:
    chosen = rng.choice(num_passages, 1 + negatives, replace=False)
    pos, negs = pids[chosen[0]], [pids[i] for i in chosen[1:]]
    scores = {pos: float(rng.normal(5.0, 1.0))}
    scores.update({n: float(rng.normal(0.0, 2.0)) for n in negs})
    for n in negs:
      triples.append(f"{qid}\t{pos}\t{n}\n")
      teacher.append(f"{scores[pos]:.4f}\t{scores[n]:.4f}\t{qid}\t{pos}\t{n}\n")
    hard.append(json.dumps({"qid": qid, "pos": [pos], "neg": negs, "scores": scores}) + "\n")
  (path / "triples.train.ids.tsv").write_text("".join(triples), encoding="utf-8")
  (path / "teacher_triples.train.tsv").write_text("".join(teacher), encoding="utf-8")
  (path / "hard_negatives.train.jsonl").write_text("".join(hard), encoding="utf-8")
  return path
