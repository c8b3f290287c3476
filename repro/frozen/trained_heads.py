"""Trained heads kept on disk between runs, keyed by everything that determines them.

A head trained once (e.g. an R4 model with seed 0) is reused by any later job asking for the
same head, training settings, seed and data (`head_key`), so R5's teacher is the very model R4
evaluated. Files: `<dir>/<name>-seed<seed>-<key>.npz` (parameters, flattened with "/") and
`.json` (the training history), both written atomically.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any

from flax import traverse_util
import numpy as np

from aligner_jax.io import atomic_output
from aligner_jax.io import write_json


def head_key(*parts: Any) -> str:
  """A short hash of dataclasses / JSON values."""
  plain = [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts]
  return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:12]


def paths(directory: str | os.PathLike, name: str, seed: int,
          key: str) -> tuple[pathlib.Path, pathlib.Path]:
  stem = pathlib.Path(directory) / f"{name}-seed{seed}-{key}"
  return stem.with_suffix(".npz"), stem.with_suffix(".json")


def save_head(params: Any, history: dict[str, Any], npz: pathlib.Path,
              meta: pathlib.Path) -> None:
  """Writes the parameters to `npz`, then the history to `meta`, each atomically; a head
  killed between the two is trained again, since `load_head` needs both."""
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  with atomic_output(npz) as tmp:  # the temporary name ends in .npz, so np.savez keeps it
    np.savez(tmp, **flat)
  write_json(meta, history)


def load_head(npz: pathlib.Path, meta: pathlib.Path) -> tuple[Any, dict[str, Any]] | None:
  """(params, history), or None when either file is missing."""
  if not (npz.is_file() and meta.is_file()):
    return None
  with np.load(npz) as f:
    flat = {tuple(k.split("/")): f[k] for k in f.files}
  return traverse_util.unflatten_dict(flat), json.loads(meta.read_text())
