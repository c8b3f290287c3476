"""The IVF coarse level of a saved index, computed when the index is published, not at load.

An index whose IVF shards hold more than `ivf.COARSE_MIN` cells in all chooses cells through a
coarse level: the k-means grouping of all the cells' centroids (`ivf.coarse_groups`, O(C^1.5)
in the number of cells C). It depends only on the shards' centroids in listing order, so every
writer of an `index.json` (`token_index.save_index`, `index_staging.publish_index`,
`generations.py`) stores it beside the shards, in INDEX_DIR/`coarse-<key>`:

  manifest.json   kind "ivf_coarse_level", config {"key": key, "code_scale": the step of the
                  members' int8 codes}, counts {cells, groups}, and the bytes and SHA-256 of
                  each file (`files.py`)
  centres.npy     [G, h] float32 unit-norm group centres
  assign.npy      [C] int32 the group of each cell, cells in listing order

and `index.json` names it ("coarse": {name, key, manifest_sha256}). The key is the SHA-256 of
the listed shards' manifest digests in order, so a generation that only deletes documents
keeps the same directory, and one that adds or compacts shards writes a new one (the old one
is retained and removed like a shard). `load_index` maps the two arrays instead of
regrouping; an index listed without a coarse level (fewer cells, or written before) groups
its cells at load as before.
"""

import pathlib
from typing import Any, Sequence

import numpy as np

from aligner_jax.index import files
from aligner_jax.index import ivf
from aligner_jax.io import atomic_dir

PREFIX = "coarse-"
KIND = "ivf_coarse_level"
VERSION = 1
_KEY_CHARS = 16  # of the key's hex digest, in the directory name


def key(entries: Sequence[dict[str, Any]]) -> str:
  """What the coarse level of the listed shards `entries` depends on: their manifests, in
  order (a manifest holds the SHA-256 of the shard's centroids)."""
  return files.json_sha256([e["manifest_sha256"] for e in entries])


def _centroids_dir(directory: pathlib.Path, entry: dict[str, Any]) -> pathlib.Path:
  return directory / entry["name"] / ivf.SUBDIR


def listed_cells(directory: pathlib.Path, entries: Sequence[dict[str, Any]]) -> tuple[int, int]:
  """(C, h): the cells of every listed IVF shard and their dimension, from the centroids'
  `.npy` headers alone (no data read)."""
  shapes = [files.read_npy_header(_centroids_dir(directory, e) / "centroids.npy")[1]
            for e in entries]
  return sum(shape[0] for shape in shapes), shapes[0][1]


def _centroids(directory: pathlib.Path, entries: Sequence[dict[str, Any]]) -> np.ndarray:
  """[C, h] float32 the centroids of every listed IVF shard, in listing order."""
  return np.concatenate([
      files.load_array(_centroids_dir(directory, e), "centroids.npy", dtype=np.float32,
                       shape=(None, None), mmap=False) for e in entries])


def _check(target: pathlib.Path, entry_key: str, *, checksums: bool) -> dict[str, Any]:
  """The manifest of the coarse level in `target`, checked to be the one for `entry_key`."""
  manifest = files.verify_dir(target, kind=KIND, version=VERSION, checksums=checksums)
  if manifest["config"].get("key") != entry_key:
    raise files.IndexFileError(target / files.MANIFEST, "coarse level of other shards (its "
                               "key differs from the listing's)")
  return manifest


def write(directory: pathlib.Path, entries: Sequence[dict[str, Any]], backend: str,
          grouping: ivf.CoarseGrouping | None = None) -> dict[str, Any] | None:
  """Stores the coarse level of the listed shards `entries` (saved in `directory`) unless it
  is already there; returns its `index.json` entry, or None when the index needs none (not
  IVF, or at most `ivf.COARSE_MIN` cells). `grouping`: `ivf.coarse_groups` of those shards'
  centroids when the caller holds it already (an index built in memory); computed otherwise.
  Written atomically: a killed writer leaves only a hidden temporary directory, and a rerun
  writes the same bytes."""
  if backend != "ivf":
    return None
  num_cells, _ = listed_cells(directory, entries)
  if num_cells <= ivf.COARSE_MIN:
    return None
  entry_key = key(entries)
  name = PREFIX + entry_key[:_KEY_CHARS]
  target = directory / name
  try:
    _check(target, entry_key, checksums=True)
  except files.IndexFileError:
    with atomic_dir(target) as tmp:
      if grouping is None:  # the centroids are read only here: a kept level needs none
        grouping = ivf.coarse_groups(_centroids(directory, entries))
      files.save_array(tmp, "centres.npy", grouping.centres)
      files.save_array(tmp, "assign.npy", grouping.assign)
      files.write_manifest(tmp, kind=KIND, version=VERSION,
                           config={"key": entry_key, "code_scale": grouping.code_scale},
                           counts={"cells": num_cells, "groups": len(grouping.centres)})
  return {"name": name, "key": entry_key,
          "manifest_sha256": files.sha256_file(target / files.MANIFEST)}


def check_entry(info_path: pathlib.Path, entry: Any) -> None:
  """Refuses, naming `index.json`, a malformed "coarse" entry."""
  if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str)
                                          for k in ("name", "key", "manifest_sha256"))
          and entry["name"].startswith(PREFIX) and "/" not in entry["name"]):
    raise files.IndexFileError(info_path, f"malformed index listing: coarse entry {entry} "
                               f"must name a {PREFIX}* directory, its key and manifest_sha256")


def load(directory: pathlib.Path, entry: dict[str, Any], entries: Sequence[dict[str, Any]],
         num_cells: int, dim: int, *, verify: bool = False) -> ivf.CoarseGrouping:
  """The stored grouping of the listed shards `entries`, as `ivf.coarse_groups` returns it,
  checked against the listing, the manifest (SHA-256 too with `verify`) and the index's
  `num_cells` and `dim`.

  Raises:
    IndexFileError: naming the file, when it is missing, of other shards, or malformed.
  """
  target = directory / entry["name"]
  if entry["key"] != key(entries):
    raise files.IndexFileError(target, "the listing keys this coarse level to other shards "
                               "than the ones it lists (an edited or mixed index.json)")
  files.check_listed_manifest(directory, entry)
  manifest = _check(target, entry["key"], checksums=verify)
  scale = manifest["config"].get("code_scale")
  if not isinstance(scale, float) or not np.isfinite(scale) or scale <= 0:
    raise files.IndexFileError(target / files.MANIFEST, f"code_scale must be a positive "
                               f"number, got {scale!r}")
  centres = files.load_array(target, "centres.npy", dtype=np.float32, shape=(None, dim),
                             mmap=False)
  assign = files.load_array(target, "assign.npy", dtype=np.int32, shape=(num_cells,),
                            mmap=False)
  if len(centres) < 2 or assign.min() < 0 or assign.max() >= len(centres):
    raise files.IndexFileError(target / "assign.npy", f"cell groups must lie in [0, "
                               f"{len(centres)}) over at least 2 groups")
  return ivf.CoarseGrouping(centres, assign, scale)
