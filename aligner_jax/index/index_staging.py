"""Where a resumable index build writes, and how the finished index replaces the previous one.

A build of INDEX_DIR writes its shard directories (`shard-<i>`, one per `ShardTask`) into the
staging directory `.<INDEX_DIR name>.staging/` beside it, never into INDEX_DIR itself, so an
index published earlier stays complete and loadable while a new one is built, however the
build ends. `publish_index` writes `index.json` into the staging directory last, from the
shards' manifests, and swaps the whole directory in (`io.publish_dir`): a reader sees the old
index or the new one. The old shards go only after the swap.

A rerun finds the shards a killed run finished in the staging directory and keeps those that
are still current (`shard_tasks.build_task`); `prepare_staging` clears what killed writers
left and seeds missing shards with hard links to the published index's shards of the same
name, so rebuilding an unchanged index only verifies it.
"""

import os
import pathlib
import shutil
from typing import Any, Callable, Sequence

from aligner_jax.index import coarse_level
from aligner_jax.index import files
from aligner_jax.index.token_index import INDEX_JSON
from aligner_jax.index.token_index import INDEX_KIND
from aligner_jax.index.token_index import IndexConfig
from aligner_jax.index.token_index import index_info
from aligner_jax.index.token_index import listing_entry
from aligner_jax.io import atomic_dir
from aligner_jax.io import publish_dir
from aligner_jax.io import remove_leftovers
from aligner_jax.io import write_json

Log = Callable[[str], None]


def staging_dir(index_dir: str | pathlib.Path) -> pathlib.Path:
  index_dir = pathlib.Path(index_dir)
  return index_dir.parent / f".{index_dir.name}.staging"


def _published_listing(index_dir: pathlib.Path) -> list[dict[str, Any]] | None:
  """The shard list of INDEX_DIR's `index.json`; None when there is no INDEX_DIR. Refuses,
  naming it, a directory that holds something other than a token index (it would be
  replaced)."""
  if not index_dir.exists():
    return None
  if not index_dir.is_dir():
    raise files.IndexFileError(index_dir, "exists and is not a directory; refusing to replace "
                               "it with an index (choose another INDEX_DIR)")
  info_path = index_dir / INDEX_JSON
  if not info_path.is_file():
    if any(index_dir.iterdir()):
      raise files.IndexFileError(index_dir, f"holds files but no {INDEX_JSON}: not a token "
                                 "index; refusing to replace it (remove it or choose another "
                                 "INDEX_DIR)")
    return None
  info = files.read_json(info_path)
  if (not isinstance(info, dict) or info.get("kind") != INDEX_KIND or
      not isinstance(info.get("shards"), list)):
    raise files.IndexFileError(info_path, "not a token index listing; refusing to replace "
                               "its directory (remove it or choose another INDEX_DIR)")
  return info["shards"]


def _link_tree(source: pathlib.Path, target: pathlib.Path) -> None:
  """`target` as a copy of `source` made of hard links (plain copies where links fail),
  written atomically. Safe because shards are never changed in place, only replaced."""
  with atomic_dir(target) as tmp:
    for path in sorted(source.rglob("*")):
      dest = tmp / path.relative_to(source)
      if path.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        continue
      dest.parent.mkdir(parents=True, exist_ok=True)
      try:
        os.link(path, dest)
      except OSError:
        shutil.copyfile(path, dest)


def prepare_staging(index_dir: str | pathlib.Path, names: Sequence[str],
                    log: Log = print) -> pathlib.Path:
  """Creates (or resumes) INDEX_DIR's staging directory for shards `names`; returns it."""
  index_dir = pathlib.Path(index_dir)
  listing = _published_listing(index_dir)
  staging = staging_dir(index_dir)
  staging.mkdir(parents=True, exist_ok=True)
  for name in [*names, INDEX_JSON]:
    remove_leftovers(staging / name)  # only the planning process writes these names now
  wanted = set(names)
  seeded = 0
  for entry in listing or []:
    name = entry.get("name") if isinstance(entry, dict) else None
    if name in wanted and not (staging / name).exists() and (index_dir / name).is_dir():
      _link_tree(index_dir / name, staging / name)
      seeded += 1
  done = sum((staging / n).is_dir() for n in names)
  log(f"staging {staging}: {done} of {len(names)} shard directories present ({seeded} linked "
      f"from the published index), each checked before it is kept")
  return staging


def _check_shard(directory: pathlib.Path, config: IndexConfig) -> None:
  manifest_path = directory / files.MANIFEST
  manifest = files.read_json(manifest_path)
  try:
    built_with = IndexConfig.from_json(manifest["config"]["index"])
  except (KeyError, TypeError, ValueError) as e:
    raise files.IndexFileError(manifest_path, f"malformed shard manifest ({e})") from None
  if built_with != config:
    raise files.IndexFileError(manifest_path, f"built with {built_with}, not with this "
                               f"build's {config}: a shard from another build")


def _remove_strays(staging: pathlib.Path, names: Sequence[str], log: Log) -> None:
  keep = {*names, INDEX_JSON}
  for path in sorted(staging.iterdir()):
    if path.name in keep:
      continue
    log(f"removing {path} from the staging directory: not a shard of this index")
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path)
    else:
      path.unlink()


def publish_index(index_dir: str | pathlib.Path, names: Sequence[str], config: IndexConfig,
                  log: Log = print, *, encoder: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
  """Writes `index.json` over the finished shards `names` (in document order) of the staging
  directory and swaps it in as INDEX_DIR; returns `index.json`. `encoder`: the record of the
  model that encoded the documents, kept in `index.json` (`token_index.index_info`)."""
  index_dir = pathlib.Path(index_dir)
  staging = staging_dir(index_dir)
  _published_listing(index_dir)  # still refuses a directory that is not an index
  for name in names:
    _check_shard(staging / name, config)
  _remove_strays(staging, names, log)
  listing = [listing_entry(staging, name) for name in names]
  coarse = coarse_level.write(staging, listing, config.backend)
  info = index_info(staging, listing, config, encoder=encoder, coarse=coarse)
  write_json(staging / INDEX_JSON, info)
  publish_dir(staging, index_dir)
  log(f"published {index_dir}: {len(names)} shards, {info['counts']}")
  return info
