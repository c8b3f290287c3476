"""Writing matplotlib figures to PNG files: the Agg backend (files only, never a display), and
an atomic write (`aligner_jax.io`) so a reader never sees half a picture."""

import os
import pathlib
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

from aligner_jax.io import atomic_output  # noqa: E402  pylint: disable=g-import-not-at-top


def write_png(fig: Any, path: str | os.PathLike, *, dpi: int = 120) -> pathlib.Path:
  """Saves `fig` to `path` (parents created) atomically, readable by everyone like any other
  output file; the figure is closed either way."""
  try:
    with atomic_output(path) as tmp:
      fig.savefig(tmp, dpi=dpi, format="png")
  finally:
    plt.close(fig)
  return pathlib.Path(path)
