"""Tiny implementations that check the harness itself (tests/test_bench_harness.py).

The task: y = x² + 1 elementwise for x [size] float32 (params: size, seed). `right` computes
it, `off_by_eps` adds `params["eps"]` to one element, `wrong_shape` drops an element,
`crashes` raises during set-up, `prints` writes to stdout (which must not break the protocol).
"""

from typing import Any, Callable

import numpy as np


def make_inputs(params: dict[str, Any]) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(params.get("seed", 0))
  return {"x": rng.standard_normal(params["size"]).astype(np.float32)}


def reference(params, inputs) -> Callable[[], np.ndarray]:
  x = inputs["x"].astype(np.float64)
  return lambda: x * x + 1.0


def right(params, inputs):
  x = inputs["x"]
  return lambda: x * x + np.float32(1.0)


def off_by_eps(params, inputs):
  x = inputs["x"]

  def run():
    y = x * x + np.float32(1.0)
    y[len(y) // 2] += np.float32(params["eps"])
    return y

  return run


def wrong_shape(params, inputs):
  x = inputs["x"]
  return lambda: (x * x + np.float32(1.0))[:-1]


def crashes(params, inputs):
  raise RuntimeError("set-up failed on purpose")


def prints(params, inputs):
  x = inputs["x"]

  def run():
    print("a stray line on stdout", flush=True)
    return x * x + np.float32(1.0)

  return run
