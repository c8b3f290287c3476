"""aligner_jax.io: content, modes, cleanup on error, concurrent writers and `kill -9`."""

import hashlib
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from aligner_jax import io

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _names(directory: pathlib.Path) -> list[str]:
  return sorted(p.name for p in directory.iterdir())


def test_text_bytes_and_json_round_trip(tmp_path):
  io.atomic_write(tmp_path / "a.txt", "héllo\r\nwörld\n")
  assert (tmp_path / "a.txt").read_bytes() == "héllo\r\nwörld\n".encode()  # no translation
  io.atomic_write(tmp_path / "b.bin", bytes(range(256)))
  assert (tmp_path / "b.bin").read_bytes() == bytes(range(256))
  io.write_json(tmp_path / "c.json", {"b": [1.5, None], "a": "x"})
  text = (tmp_path / "c.json").read_text()
  assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')  # sorted, newline
  assert json.loads(text) == {"a": "x", "b": [1.5, None]}
  io.write_json(tmp_path / "d.json", {"b": 1, "a": 2}, indent=None, sort_keys=False)
  assert (tmp_path / "d.json").read_text() == '{"b": 1, "a": 2}\n'
  assert _names(tmp_path) == ["a.txt", "b.bin", "c.json", "d.json"]  # no temporary left


def test_writers_that_take_a_file_name_get_one_with_the_same_extension(tmp_path):
  with io.atomic_output(tmp_path / "x.npy") as tmp:
    assert tmp.parent == tmp_path and tmp.name.startswith(".x.npy.") and tmp.suffix == ".npy"
    np.save(tmp, np.arange(5))
  np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.arange(5))
  assert _names(tmp_path) == ["x.npy"]


def test_modes_are_0644_and_0755_whatever_the_umask_and_parents_are_created(tmp_path):
  old_umask = os.umask(0o077)
  try:
    io.atomic_write(tmp_path / "deep" / "er" / "f.txt", "x")
    with io.atomic_dir(tmp_path / "new" / "dir") as tmp:
      (tmp / "f").write_text("y")
  finally:
    os.umask(old_umask)
  assert (tmp_path / "deep" / "er" / "f.txt").stat().st_mode & 0o777 == 0o644
  assert (tmp_path / "new" / "dir").stat().st_mode & 0o777 == 0o755
  assert (tmp_path / "new" / "dir" / "f").read_text() == "y"


def test_long_file_names_fit_the_temporary_name(tmp_path):
  name = "é" * 120 + ".json"  # 245 bytes: a temporary name built from all of it would not fit
  io.write_json(tmp_path / name, [1])
  assert _names(tmp_path) == [name]


def test_an_error_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "f.txt"
  io.atomic_write(path, "old")
  with pytest.raises(RuntimeError, match="boom"):
    with io.atomic_output(path) as tmp:
      tmp.write_text("half of the n")
      raise RuntimeError("boom")
  with pytest.raises(ValueError):
    io.write_json(path, {"x": float("nan")})  # refused before anything is written
  with pytest.raises(TypeError):
    io.write_json(path, {"x": object()})
  assert path.read_text() == "old"
  assert _names(tmp_path) == ["f.txt"]


def test_an_error_keeps_the_previous_directory_and_leaves_no_temporary(tmp_path):
  final = tmp_path / "d"
  with io.atomic_dir(final) as tmp:
    (tmp / "v").write_text("1")
  with pytest.raises(KeyError):
    with io.atomic_dir(final) as tmp:
      (tmp / "v").write_text("2")
      raise KeyError("boom")
  assert _names(final) == ["v"] and (final / "v").read_text() == "1"
  assert _names(tmp_path) == ["d"]


def test_atomic_dir_replaces_an_existing_directory_whole(tmp_path):
  final = tmp_path / "d"
  with io.atomic_dir(final) as tmp:
    (tmp / "sub").mkdir()
    (tmp / "sub" / "a").write_text("1")
    (tmp / "b").write_text("1")
  inode = final.stat().st_ino
  with io.atomic_dir(final) as tmp:
    (tmp / "c").write_text("2")
  assert final.stat().st_ino != inode  # a new directory, not the old one refilled
  assert _names(final) == ["c"] and (final / "c").read_text() == "2"
  assert _names(tmp_path) == ["d"]  # the previous version is gone
  (tmp_path / "f").write_text("a file where the directory goes")
  with io.atomic_dir(tmp_path / "f") as tmp:
    (tmp / "c").write_text("3")
  assert _names(tmp_path / "f") == ["c"] and _names(tmp_path) == ["d", "f"]
  with pytest.raises(ValueError, match="local disk"):
    with io.atomic_dir("gs://bucket/d"):
      pass


def test_two_writers_of_one_path_never_share_a_temporary_name(tmp_path):
  path = tmp_path / "f.bin"
  with io.atomic_output(path) as a, io.atomic_output(path) as b:
    assert a != b
    a.write_bytes(b"a")
    b.write_bytes(b"b")
  assert path.read_bytes() == b"a"  # the outer block finished last


def _run_threads(target, count: int) -> None:
  errors = []

  def guarded(i):
    try:
      target(i)
    except Exception as e:  # noqa: BLE001 - reported by the assertion below
      errors.append(e)

  threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename_aside"])
def test_concurrent_writers_leave_one_complete_version(tmp_path, monkeypatch, exchange):
  if not exchange:  # the path taken where the system cannot swap two directories
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
  path, final = tmp_path / "f.bin", tmp_path / "d"
  versions = {i: bytes([i]) * 300_000 for i in range(4)}

  def write(i):
    for _ in range(10):
      io.atomic_write(path, versions[i])
      with io.atomic_dir(final) as tmp:
        (tmp / "a").write_bytes(versions[i])
        (tmp / "b").write_bytes(versions[i][:10])

  _run_threads(write, len(versions))
  assert path.read_bytes() in versions.values()
  a, b = (final / "a").read_bytes(), (final / "b").read_bytes()
  assert a in versions.values() and b == a[:10]  # both files of the same writer
  assert _names(tmp_path) == ["d", "f.bin"]


# The kill -9 test: a child rewrites a 4 MB .npy file and a directory (2 MB of vectors and a
# manifest with their checksum) in a loop with alternating contents, and is killed at random
# moments; every time, both final names must hold one complete version.
_CHILD = r"""
import hashlib, sys
import numpy as np
from aligner_jax import io

out = sys.argv[1]
arrays = [np.full(1 << 20, v, np.float32) for v in (1.0, 2.0)]
i = 0
while True:
  a = arrays[i % 2]
  with io.atomic_output(out + "/data.npy") as tmp:
    np.save(tmp, a)
  with io.atomic_dir(out + "/shard") as tmp:
    np.save(tmp / "vectors.npy", a[: 1 << 19])
    io.write_json(tmp / "manifest.json",
                  {"sha256": hashlib.sha256((tmp / "vectors.npy").read_bytes()).hexdigest()})
  if i == 1:
    print("ready", flush=True)
  i += 1
"""


def _npy_sha256(array: np.ndarray, tmp_path: pathlib.Path) -> str:
  np.save(tmp_path / "ref.npy", array)
  digest = hashlib.sha256((tmp_path / "ref.npy").read_bytes()).hexdigest()
  (tmp_path / "ref.npy").unlink()
  return digest


def test_kill_9_at_random_moments_leaves_one_complete_version(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  arrays = [np.full(1 << 20, v, np.float32) for v in (1.0, 2.0)]
  file_versions = {_npy_sha256(a, tmp_path) for a in arrays}
  shard_versions = {_npy_sha256(a[: 1 << 19], tmp_path) for a in arrays}
  rng = random.Random(0)
  for _ in range(4):
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(out)], cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
      assert child.stdout.readline() == "ready\n"  # two full rounds written
      threading.Event().wait(rng.uniform(0.0, 0.15))
    finally:
      child.send_signal(signal.SIGKILL)
      child.wait()
      child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    data = out / "data.npy"
    assert hashlib.sha256(data.read_bytes()).hexdigest() in file_versions
    assert np.load(data).shape == (1 << 20,)
    vectors = (out / "shard" / "vectors.npy").read_bytes()
    manifest = json.loads((out / "shard" / "manifest.json").read_text())
    assert hashlib.sha256(vectors).hexdigest() == manifest["sha256"]
    assert manifest["sha256"] in shard_versions
    assert _names(out / "shard") == ["manifest.json", "vectors.npy"]
  # A killed writer may leave its hidden temporary siblings, never anything else.
  assert all(n in ("data.npy", "shard") or n.startswith((".data.npy.", ".shard."))
             for n in _names(out))
