"""Atomic writes: the one way every file and directory of the project goes to disk.

A reader (or a rerun after `kill -9`) sees either the previous complete content or the new
complete content, never half of it: data goes to a uniquely named hidden sibling
(`.NAME.<random>.tmp…`, so two writers never collide), is flushed and fsynced, gets an
explicit mode (0644 for files, 0755 for directories, like any ordinary output) and is renamed
over the final name; the parent directory is fsynced so the rename itself is durable.

Paths with a scheme (`gs://…`) are written as one object upload, which object stores make
atomic on their own.
"""

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterator

FILE_MODE = 0o644
DIR_MODE = 0o755


def is_local(path: str | os.PathLike) -> bool:
  return "://" not in os.fspath(path)


def _fsync_dir(directory: pathlib.Path) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _temp_sibling(path: pathlib.Path, *, directory: bool = False) -> pathlib.Path:
  """A fresh hidden name beside `path`; it keeps the suffix, since writers such as np.save
  and matplotlib pick the format from it."""
  prefix, suffix = f".{path.name}.", f".tmp{path.suffix}"
  if directory:
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
  fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
  os.close(fd)
  return pathlib.Path(tmp)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a temporary path to write `path`'s content to (for writers that take a file name:
  `np.save`, `savefig`, `tf.io`); when the block succeeds it replaces `path`.

  Parents are created. On an exception the temporary file is removed and `path` is untouched.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = _temp_sibling(path)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600
    os.replace(tmp, path)
    _fsync_dir(path.parent)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes the whole of `data` (text as UTF-8) to `path` atomically."""
  if not is_local(path):
    from etils import epath  # pylint: disable=g-import-not-at-top  # only for remote paths
    target = epath.Path(path)
    target.write_bytes(data) if isinstance(data, bytes) else target.write_text(data)
    return
  with atomic_output(path) as tmp:
    if isinstance(data, bytes):
      tmp.write_bytes(data)
    else:
      tmp.write_text(data, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> None:
  """Writes `obj` as JSON (sorted keys, no NaN, a final newline) atomically."""
  text = json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False)
  atomic_write(path, text + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields an empty temporary directory that replaces `final` when the block succeeds.

  An existing `final` is moved aside first and deleted only after the new one is in place, so
  at every instant one complete version exists under `final` or under the hidden `.old` name.
  On an exception the temporary directory is removed and `final` is left untouched.
  """
  final = pathlib.Path(final)
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = _temp_sibling(final, directory=True)
  try:
    yield tmp
    for file in tmp.rglob("*"):
      if file.is_file():
        with open(file, "rb+") as f:
          os.fsync(f.fileno())
    os.chmod(tmp, DIR_MODE)  # mkdtemp creates 0700
    old = None
    if final.exists():
      old = _temp_sibling(final, directory=True)
      os.rmdir(old)  # only its fresh name is wanted: os.replace needs it free
      os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
