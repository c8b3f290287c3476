"""Writing matplotlib figures to PNG files: the Agg backend (files only, never a display), and
an atomic write so a reader never sees half a picture."""

import os
import pathlib
import tempfile
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top


def write_png(fig: Any, path: str | os.PathLike, *, dpi: int = 120) -> pathlib.Path:
  """Saves `fig` to `path` (parents created) through a temporary file and a rename, readable
  by everyone like any other output file; the figure is closed either way."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
  os.close(fd)
  try:
    fig.savefig(tmp, dpi=dpi, format="png")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, path)
  finally:
    plt.close(fig)
    if os.path.exists(tmp):
      os.unlink(tmp)
  return path
