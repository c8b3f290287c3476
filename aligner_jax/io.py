"""Atomic writes: the one way every file and directory of the project goes to disk.

A reader (or a rerun after `kill -9`) sees either the previous complete content or the new
complete content, never half of it: data goes to a uniquely named hidden sibling
(`.NAME.<random>.tmp…`, so two writers never collide), is flushed and fsynced, gets an
explicit mode (0644 for files, 0755 for directories, like any ordinary output) and is renamed
over the final name; the parent directory is fsynced so the rename itself is durable.

A directory is put in place by swapping it with the old one in a single rename
(`renameat2(RENAME_EXCHANGE)` on Linux), so its final name never stops existing; where that
call is missing, the old directory is renamed aside first and there is a moment without one.
`publish_dir` swaps in a directory the caller filled itself (a resumable job's staging area).

A writer killed mid-way leaves its hidden temporary sibling behind; the final name is never
affected. `remove_leftovers(path)` clears such siblings where the caller knows that no other
writer of `path` is running (a resumed job rewriting an output it alone owns).

Paths with a scheme (`gs://…`) are written as one object upload, which object stores make
atomic on their own; `atomic_dir` needs a local path.
"""

import contextlib
import ctypes
import errno
import functools
import json
import os
import pathlib
import shutil
import stat
import tempfile
from typing import Any, Iterator

FILE_MODE = 0o644
DIR_MODE = 0o755
# Temporary names must stay within NAME_MAX (255 bytes) after the random part and suffix.
_MAX_NAME_BYTES = 120
_MAX_SUFFIX_CHARS = 16


def is_local(path: str | os.PathLike) -> bool:
  return "://" not in os.fspath(path)


def _fsync_path(path: str | os.PathLike) -> None:
  fd = os.open(path, os.O_RDONLY)  # fsync needs no write access, so read-only files work too
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _temp_name(path: pathlib.Path) -> tuple[str, str]:
  """The prefix and suffix of `path`'s temporary siblings; the suffix keeps the file's
  extension, since writers such as np.save and matplotlib pick the format from it."""
  name = os.fsdecode(os.fsencode(path.name)[:_MAX_NAME_BYTES])
  ext = path.suffix if len(path.suffix) <= _MAX_SUFFIX_CHARS else ""
  return f".{name}.", f".tmp{ext}"


def _temp_file(path: pathlib.Path) -> pathlib.Path:
  prefix, suffix = _temp_name(path)
  fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
  os.close(fd)
  return pathlib.Path(tmp)


def _temp_dir(path: pathlib.Path) -> pathlib.Path:
  prefix, suffix = _temp_name(path)
  return pathlib.Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a temporary path to write `path`'s content to (for writers that take a file name:
  `np.save`, `savefig`, `tf.io`); when the block succeeds it replaces `path`.

  Parents are created. On an exception the temporary file is removed and `path` is untouched.
  The temporary path ends with `path`'s extension (np.save appends ".npy" to any other name,
  so give it an open file object or a path ending in ".npy"). For a remote `path` the
  temporary file is local and is uploaded in one piece when the block succeeds.
  """
  if not is_local(path):
    with tempfile.TemporaryDirectory(prefix="aligner_jax_upload_") as local:
      tmp = pathlib.Path(local) / f"upload{pathlib.PurePosixPath(os.fspath(path)).suffix}"
      tmp.touch()
      yield tmp
      atomic_write(path, tmp.read_bytes())
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = _temp_file(path)
  try:
    yield tmp
    _fsync_path(tmp)
    os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
  _fsync_path(path.parent)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes the whole of `data` (text as UTF-8, newlines untranslated) to `path` atomically."""
  data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
  if not is_local(path):
    from etils import epath  # pylint: disable=g-import-not-at-top  # only for remote paths
    epath.Path(path).write_bytes(data)
    return
  with atomic_output(path) as tmp:
    tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1,
               sort_keys: bool = True) -> None:
  """Writes `obj` as JSON (sorted keys unless told, no NaN, a final newline) atomically.

  A value JSON cannot hold (NaN, an unknown type) raises before anything is written.
  """
  text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False)
  atomic_write(path, text + "\n")


def _fsync_tree(root: pathlib.Path) -> None:
  """Flushes every file and directory below `root` (directories hold the names)."""
  for directory, _, names in os.walk(root):
    for name in names:
      file = os.path.join(directory, name)
      if stat.S_ISREG(os.lstat(file).st_mode):  # not links, nor FIFOs (opening one blocks)
        _fsync_path(file)
    _fsync_path(directory)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_ATTEMPTS = 20


@functools.cache
def _renameat2() -> Any:
  """glibc's renameat2 (2.28 and later), or None on other C libraries and systems."""
  try:
    fn = ctypes.CDLL(None, use_errno=True).renameat2
  except (AttributeError, OSError):
    return None
  fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
  return fn


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
  """Swaps the entries `a` and `b` in one step (Linux renameat2). False when the system or
  the file system cannot; FileNotFoundError when one of them does not exist."""
  renameat2 = _renameat2()
  if renameat2 is None:
    return False
  if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
    return False
  raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def _move_in(tmp: pathlib.Path, final: pathlib.Path) -> pathlib.Path | None:
  """Puts directory `tmp` at `final`; returns where the previous `final` now is, if any."""
  for _ in range(_ATTEMPTS):  # another writer may create or replace `final` meanwhile
    try:
      if _exchange(tmp, final):
        return tmp  # the swap left the previous version under the temporary name
    except FileNotFoundError:
      if not tmp.is_dir():
        raise
    old = None  # no previous version, or no exchange: the previous one is moved aside first
    try:
      if final.exists():
        old = _temp_dir(final)
        os.rmdir(old)  # only its fresh name is wanted: the rename needs it free
        os.rename(final, old)
      os.rename(tmp, final)  # refuses to overwrite a non-empty directory
      return old
    except OSError as e:
      if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT) or not tmp.is_dir():
        if old is not None and not final.exists():
          os.rename(old, final)
        raise
      if old is not None:  # another writer moved in meanwhile: its version is newer
        shutil.rmtree(old, ignore_errors=True)
  raise OSError(errno.EBUSY, f"{final}: replaced by other writers {_ATTEMPTS} times in a row")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields an empty temporary directory that replaces `final` when the block succeeds.

  Every file in it is fsynced, the directory gets mode 0755 and is swapped with the previous
  `final` (see the module docstring), which is then deleted. On an exception the temporary
  directory is removed and `final` is left untouched.
  """
  if not is_local(final):
    raise ValueError(f"{final}: a directory can only be written atomically on a local disk")
  final = pathlib.Path(final)
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = _temp_dir(final)
  try:
    yield tmp
    old = _swap_in(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  _remove_old(final, old)


def _swap_in(directory: pathlib.Path, final: pathlib.Path) -> pathlib.Path | None:
  """Flushes `directory` and puts it at `final`; returns where the previous `final` now is."""
  _fsync_tree(directory)
  os.chmod(directory, DIR_MODE)  # mkdtemp creates 0700
  return _move_in(directory, final)


def _remove_old(final: pathlib.Path, old: pathlib.Path | None) -> None:
  _fsync_path(final.parent)
  if old is not None and old.is_dir() and not old.is_symlink():
    shutil.rmtree(old, ignore_errors=True)
  elif old is not None:  # `final` was a file or a link
    old.unlink(missing_ok=True)


def publish_dir(directory: str | os.PathLike, final: str | os.PathLike) -> None:
  """Puts the finished directory `directory` (a sibling of `final`, e.g. a staging area that
  a resumable job filled over several runs) at `final` as `atomic_dir` does: flushed, swapped
  in whole, the previous `final` deleted afterwards. A `kill -9` before the swap leaves the
  previous `final` as it was; one after it leaves the previous version under `directory`'s
  name, never a mixture."""
  directory, final = pathlib.Path(directory), pathlib.Path(final)
  if not is_local(final) or directory.parent.resolve() != final.parent.resolve():
    raise ValueError(f"{directory}: can only be published as a sibling on a local disk, not "
                     f"at {final}")
  _remove_old(final, _swap_in(directory, final))


def remove_leftovers(path: str | os.PathLike) -> list[pathlib.Path]:
  """Removes the hidden temporary siblings that writers of `path` killed mid-way left behind;
  returns them. Call it only where no other writer of `path` can be running (e.g. the one
  process that owns that output, before it writes it again)."""
  path = pathlib.Path(path)
  prefix, suffix = _temp_name(path)
  found = sorted(p for p in path.parent.glob("*") if p.name.startswith(prefix)
                 and p.name.endswith(suffix) and p.name != path.name)
  for leftover in found:
    if leftover.is_dir() and not leftover.is_symlink():
      shutil.rmtree(leftover, ignore_errors=True)
    else:
      leftover.unlink(missing_ok=True)
  return found
