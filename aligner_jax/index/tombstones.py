"""Deleted documents of an index shard: one bit set per shard and generation.

A shard's documents are never rewritten to delete one: the deleted (or replaced) documents are
marked in a bit set of N bits, `np.packbits` order (document i is bit 7 - i % 8 of byte i // 8),
saved as `tombstones/<shard name>.g<generation>.npy` ([⌈N / 8⌉] uint8) inside INDEX_DIR. A
generation that changes a shard's set writes a new file under a new name; files are never
changed in place, so a reader of an earlier generation keeps reading the set it was given.

`index.json` lists the file in the shard's entry, with its SHA-256 and its number of set bits:
  "tombstones": {"file": "tombstones/shard-00000.g000003.npy", "sha256": "…", "deleted": 12}
Loading checks the array's header (size, dtype, shape), that no bit lies past the shard's
documents and that the count matches; verification also compares the SHA-256.
"""

import pathlib
from typing import Any

import numpy as np

from aligner_jax.index import files
from aligner_jax.io import atomic_output

DIRECTORY = "tombstones"


def file_name(shard: str, generation: int) -> str:
  """The relative path of `shard`'s bit set written by `generation`."""
  return f"{DIRECTORY}/{shard}.g{generation:06d}.npy"


def write(index_dir: pathlib.Path, shard: str, generation: int,
          deleted: np.ndarray) -> dict[str, Any]:
  """Saves `deleted` [N] bool atomically; returns the shard entry's "tombstones" value."""
  relative = file_name(shard, generation)
  with atomic_output(index_dir / relative) as tmp:
    np.save(tmp, np.packbits(np.asarray(deleted, bool)), allow_pickle=False)
  return {"file": relative, "sha256": files.sha256_file(index_dir / relative),
          "deleted": int(np.count_nonzero(deleted))}


def check_entry(info_path: pathlib.Path, shard: str, entry: Any) -> None:
  """Refuses a malformed "tombstones" value of `index.json` (naming it)."""
  if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and
          isinstance(entry.get("sha256"), str) and isinstance(entry.get("deleted"), int)):
    raise files.IndexFileError(info_path, f"malformed tombstones of {shard}: {entry!r:.200} "
                               "(expected file, sha256 and deleted)")
  path = pathlib.PurePosixPath(entry["file"])
  if path.parent.as_posix() != DIRECTORY or ".." in path.parts:
    raise files.IndexFileError(info_path, f"tombstones of {shard} must lie in {DIRECTORY}/, "
                               f"not at {entry['file']!r}")


def read(index_dir: pathlib.Path, entry: dict[str, Any] | None, num_docs: int, *,
         verify: bool = False) -> np.ndarray:
  """[N] bool deleted documents of a shard of `num_docs` documents (all False without
  `entry`), after the checks of the module docstring.

  Raises:
    IndexFileError: naming the file, when it is missing, truncated, of another shape, marks
      documents past the shard's end, disagrees with its count or (with `verify`) with its
      SHA-256.
  """
  if entry is None:
    return np.zeros(num_docs, bool)
  path = index_dir / entry["file"]
  packed = files.load_array(path.parent, path.name, dtype=np.uint8,
                            shape=((num_docs + 7) // 8,), mmap=False)
  if verify and files.sha256_file(path) != entry["sha256"]:
    raise files.IndexFileError(path, "SHA-256 differs from the one index.json lists (the file "
                               "is corrupted)")
  bits = np.unpackbits(packed, count=None)
  if bits[num_docs:].any():
    raise files.IndexFileError(path, f"marks documents past the shard's {num_docs}")
  deleted = bits[:num_docs].astype(bool)
  if int(deleted.sum()) != entry["deleted"]:
    raise files.IndexFileError(path, f"marks {int(deleted.sum())} deleted documents but "
                               f"index.json says {entry['deleted']}")
  return deleted
