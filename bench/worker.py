"""One implementation in one fresh process: `python -m bench.worker SPEC.json` (started by harness).

Protocol (JSON lines on the original stdout; anything the implementation prints goes to stderr):
  worker -> {"event": "ready", "setup_s", "first_call_s", "runtime", "info"}  after the first
            call and the warm-up calls, once the output is in spec["out"] (.npy, written
            atomically); "info" is what set-up measured, if it returned (callable, info);
  parent -> "time" or "stop" (one line on stdin);
  worker -> {"event": "done", "times_s": [...]}  after spec["runs"] timed calls;
  worker -> {"event": "error", "error": "..."}    on any failure (traceback on stderr, exit 1).

The spec holds: name, target and inputs ("module:function"), framework, params, warmup, runs, out.
"""

import gc
import importlib
import json
import os
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np

from aligner_jax.io import atomic_output


def resolve(target: str) -> Callable[..., Any]:
  module, _, name = target.partition(":")
  if not module or not name:
    raise ValueError(f"target {target!r} must be 'module:function'")
  return getattr(importlib.import_module(module), name)


def runtime_info() -> dict[str, Any]:
  """What this process computed with: the loaded frameworks, their versions and thread pools."""
  info: dict[str, Any] = {"numpy": np.__version__}
  try:
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
  except (KeyError, TypeError, ValueError):
    pass
  if "torch" in sys.modules:
    torch = sys.modules["torch"]
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
  if "jax" in sys.modules:
    jax = sys.modules["jax"]
    info["jax"] = jax.__version__
    info["jax_devices"] = [str(d) for d in jax.devices()]
  for name in ("faiss", "scann"):
    if name in sys.modules:
      info[name] = getattr(sys.modules[name], "__version__", "loaded")
  return info


def _save(path: str, out: Any) -> None:
  with atomic_output(path) as tmp, open(tmp, "wb") as f:  # a file object: no ".npy" appended
    np.save(f, np.asarray(out), allow_pickle=False)


def main(argv: list[str]) -> int:
  proto = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # stray prints, also from C code, go to stderr, not into the protocol
  sys.stdout = sys.stderr

  def send(**msg):
    proto.write(json.dumps(msg) + "\n")
    proto.flush()

  try:
    spec = json.loads(open(argv[1]).read())
    t0 = time.perf_counter()
    inputs = resolve(spec["inputs"])(spec["params"])
    fn = resolve(spec["target"])(spec["params"], inputs)
    info = None
    if isinstance(fn, tuple):  # (callable, info): what set-up measured (build time, bytes)
      fn, info = fn
    t1 = time.perf_counter()
    out = fn()
    t2 = time.perf_counter()
    for _ in range(spec["warmup"]):
      out = fn()
    if "torch" in sys.modules and "jax" in sys.modules:
      raise RuntimeError("torch and jax are both loaded in one process; a benchmark "
                         "implementation must use one framework")
    _save(spec["out"], out)
    del out
    send(event="ready", setup_s=t1 - t0, first_call_s=t2 - t1, runtime=runtime_info(),
         info=info)
    if sys.stdin.readline().strip() != "time":
      return 0
    gc.collect()
    gc.disable()  # a collection inside a timed call would be charged to the implementation
    times = []
    for _ in range(spec["runs"]):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    gc.enable()
    send(event="done", times_s=times)
    return 0
  except BaseException as e:  # noqa: BLE001 - every failure is reported to the parent
    traceback.print_exc(file=sys.stderr)
    send(event="error", error=f"{type(e).__name__}: {e}")
    return 1


if __name__ == "__main__":
  sys.exit(main(sys.argv))
