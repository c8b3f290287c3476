"""A published index that changes: add, delete and compact, each as a new generation.

A built index is generation 0. Every change publishes generation g + 1 by rewriting
INDEX_DIR's `index.json` (atomically: a reader sees the old listing or the new one), after
every file the new listing names has been written in full:

  add_documents     the new documents (already encoded) become new shards `shard-g<g>-<i>`,
                    built and saved by the same `build_shard` / `save_shard` as a full build
                    (split by the index's `max_shard_tokens`, pruned, quantised and indexed with
                    its `IndexConfig`); a document whose id is already live is an update: the
                    old version is deleted in the same generation.
  delete_documents  deleted documents are marked in a per-shard bit set (`tombstones.py`),
                    written as a new file for the new generation; shards are never rewritten.
  compact           shards with deleted documents, and runs of small shards (fewer live
                    searched tokens than half of `max_shard_tokens`, or of the largest shard),
                    are rewritten without the deleted rows, consecutive ones merged, into new
                    shards; the others stay as they are.

Files are never changed in place. A shard directory, tombstone file or IVF coarse level
(`coarse_level.py`) stays on disk while the current or the previous generation lists it
(`index.json`'s "retained"), and is removed by the first writer after that, once its own
generation is published. So:
  * a reader that loaded any generation keeps working: shard arrays are memory-mapped and
    ScaNN's structures are in its memory, and Linux keeps an unlinked file's pages for the
    maps that hold it;
  * a reader still loading generation g finds all its files until generation g + 2 is
    published; `load_index` then starts again from the newer listing.

A writer takes an exclusive lock (`.<INDEX_DIR name>.lock` beside INDEX_DIR, `flock`); a
second writer fails at once with `IndexBusyError`, it does not wait. Before changing anything
a writer removes what a killed writer left: hidden temporary files, and shard directories or
tombstone files that no generation lists. A `kill -9` at any moment therefore leaves the
previous generation intact and loadable (the new one if `index.json` was already replaced),
and the same change run again writes the same files.

A full rebuild of INDEX_DIR (`index_staging.publish_index`) replaces the directory as a whole
and starts again at generation 0.
"""

import contextlib
import dataclasses
import fcntl
import pathlib
import shutil
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from aligner_jax.index import coarse_level
from aligner_jax.index import files
from aligner_jax.index import tombstones
from aligner_jax.index.searched_rows import SearchedRows
from aligner_jax.index.token_index import INDEX_JSON
from aligner_jax.index.token_index import Listing
from aligner_jax.index.token_index import build_shard
from aligner_jax.index.token_index import index_info
from aligner_jax.index.token_index import index_rows
from aligner_jax.index.token_index import listing_entry
from aligner_jax.index.token_index import open_shard_rows
from aligner_jax.index.token_index import read_encoder
from aligner_jax.index.token_index import read_listing
from aligner_jax.index.token_index import save_shard
from aligner_jax.index.token_index import segment_dir_name
from aligner_jax.index.token_index import split_documents
from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store import concatenate
from aligner_jax.index.token_store import document_rows
from aligner_jax.io import write_json

Log = Callable[[str], None]
MISSING = ("error", "ignore")
_SHOWN_IDS = 10


class IndexBusyError(ValueError):
  """Another process is changing the index."""


class UnknownDocumentsError(ValueError):
  """Ids that name no live document of the index (`ids` lists them all)."""

  def __init__(self, index_dir: pathlib.Path, ids: Sequence[str]):
    self.ids = list(ids)
    shown = ", ".join(repr(i) for i in self.ids[:_SHOWN_IDS])
    more = f" and {len(self.ids) - _SHOWN_IDS} more" if len(self.ids) > _SHOWN_IDS else ""
    super().__init__(f"{index_dir}: {len(self.ids)} id(s) name no live document of the index: "
                     f"{shown}{more}; nothing was changed")


def lock_path(index_dir: str | pathlib.Path) -> pathlib.Path:
  index_dir = pathlib.Path(index_dir)
  return index_dir.parent / f".{index_dir.name}.lock"


def current_generation(index_dir: str | pathlib.Path) -> int:
  """The generation `index.json` lists (0 for an index that was never changed)."""
  return read_listing(index_dir).generation


def _hidden_leftovers(index_dir: pathlib.Path) -> list[pathlib.Path]:
  """Temporary siblings of killed writers of shard directories, coarse levels, tombstones and
  index.json."""
  return [*index_dir.glob(".shard-*"), *index_dir.glob(f".{coarse_level.PREFIX}*"),
          *index_dir.glob(f".{INDEX_JSON}.*"), *(index_dir / tombstones.DIRECTORY).glob(".*")]


def _remove(path: pathlib.Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  else:
    path.unlink(missing_ok=True)


def _remove_unlisted(index_dir: pathlib.Path, keep: set[str]) -> list[str]:
  """Removes shard directories, coarse levels and tombstone files not in `keep` (and hidden
  leftovers); returns the names removed."""
  removed = []
  candidates = [*index_dir.glob("shard-*"), *index_dir.glob(f"{coarse_level.PREFIX}*"),
                *(index_dir / tombstones.DIRECTORY).glob("*")]
  for path in sorted(candidates):
    name = path.relative_to(index_dir).as_posix()
    if name not in keep and not path.name.startswith("."):
      _remove(path)
      removed.append(name)
  for path in _hidden_leftovers(index_dir):
    _remove(path)
  return removed


@contextlib.contextmanager
def _writer(index_dir: pathlib.Path, log: Log) -> Iterator[Listing]:
  """Holds the index's writer lock; yields the current listing after clearing leftovers."""
  listing = read_listing(index_dir)  # a clear error for a directory that is no index
  path = lock_path(index_dir)
  with open(path, "a", encoding="utf-8") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise IndexBusyError(f"{index_dir}: another process is changing this index (it holds "
                           f"{path}); try again when it has finished") from None
    listing = read_listing(index_dir)  # as the previous writer left it
    removed = _remove_unlisted(index_dir, listing.files() | set(listing.retained))
    if removed:
      log(f"{index_dir}: removed {len(removed)} file(s) an interrupted change left: "
          f"{', '.join(removed[:5])}{' …' if len(removed) > 5 else ''}")
    yield listing


def _publish(index_dir: pathlib.Path, previous: Listing, entries: list[dict[str, Any]],
             log: Log, what: str) -> int:
  """Writes `index.json` of the next generation over `entries` (the commit point), then
  removes what neither it nor `previous` lists; returns the new generation."""
  generation = previous.generation + 1
  # The coarse level of the new shard list: the same directory when the shards are the same
  # (a deletion), otherwise a new one, written before index.json names it.
  coarse = coarse_level.write(index_dir, entries, previous.config.backend)
  new = Listing(previous.config, entries, generation, coarse=coarse)
  retained = previous.files() - new.files()
  keep = new.files() | retained
  removed = (previous.files() | set(previous.retained)) - keep
  # The encoder record never changes: every generation carries the first one's.
  info = index_info(index_dir, entries, previous.config, generation=generation,
                    retained=retained, removed=removed, encoder=read_encoder(index_dir),
                    coarse=coarse)
  write_json(index_dir / INDEX_JSON, info)
  _remove_unlisted(index_dir, keep)
  log(f"{index_dir}: published generation {generation} ({what}): {len(entries)} shards, "
      f"{info['counts']['documents'] - info['deleted_documents']} live documents")
  return generation


def _deleted(index_dir: pathlib.Path, entry: dict[str, Any]) -> np.ndarray:
  return tombstones.read(index_dir, entry.get("tombstones"), int(entry["documents"]))


def _live_documents(index_dir: pathlib.Path,
                    listing: Listing) -> dict[str, tuple[int, int]]:
  """{document id: (shard position, local document)} of every live document."""
  live = {}
  for position, entry in enumerate(listing.shards):
    ids = files.read_json(index_dir / entry["name"] / "doc_ids.json")
    deleted = _deleted(index_dir, entry)
    if not isinstance(ids, list) or len(ids) != len(deleted):
      raise files.IndexFileError(index_dir / entry["name"] / "doc_ids.json",
                                 f"expected {len(deleted)} ids as index.json says")
    for local in np.flatnonzero(~deleted):
      live[ids[local]] = (position, int(local))
  return live


def _with_deletions(index_dir: pathlib.Path, listing: Listing,
                    doomed: Iterable[tuple[int, int]], generation: int) -> list[dict[str, Any]]:
  """The shard entries with documents `doomed` (shard position, local document) deleted:
  a new tombstone file of `generation` for each shard that changes."""
  by_shard: dict[int, list[int]] = {}
  for position, local in doomed:
    by_shard.setdefault(position, []).append(local)
  entries = []
  for position, entry in enumerate(listing.shards):
    entry = dict(entry)
    if position in by_shard:
      deleted = _deleted(index_dir, entry)
      deleted[by_shard[position]] = True
      entry["tombstones"] = tombstones.write(index_dir, entry["name"], generation, deleted)
    entries.append(entry)
  return entries


def _check_ids(store: TokenStore) -> None:
  seen, repeated = set(), []
  for doc_id in store.doc_ids:
    if not isinstance(doc_id, str) or not doc_id:
      raise ValueError(f"document ids must be non-empty strings, got {doc_id!r}")
    if doc_id in seen:
      repeated.append(doc_id)
    seen.add(doc_id)
  if repeated:
    raise ValueError(f"the new documents repeat ids {sorted(set(repeated))[:_SHOWN_IDS]}: each "
                     "id may be added once per call")


def _layout(index_dir: pathlib.Path, entry: dict[str, Any]) -> dict[str, Any]:
  """What a shard holds besides its documents, from its manifest."""
  manifest = files.read_json(index_dir / entry["name"] / files.MANIFEST)
  config, counts = manifest["config"], manifest["counts"]
  return {"dimension": counts["dim"], "pooled dimension": counts.get("pooled_dim", 0),
          "vector format": config["vector_dtype"],
          "saliences": bool(config.get("has_salience")),
          "token ids": bool(config.get("has_token_ids"))}


def _shard_layout(shard: Any) -> dict[str, Any]:
  s = shard.store
  return {"dimension": s.dim, "pooled dimension": 0 if s.pooled is None else s.pooled.shape[1],
          "vector format": s.vector_dtype,
          "saliences": s.salience is not None, "token ids": s.token_ids is not None}


def _check_layout(index_dir: pathlib.Path, listing: Listing, shard: Any) -> None:
  want = _layout(index_dir, listing.shards[0])
  got = _shard_layout(shard)
  differ = [f"{k}: {got[k]} (index: {want[k]})" for k in want if got[k] != want[k]]
  if differ:
    raise ValueError(f"{index_dir}: the new documents do not fit the index ({'; '.join(differ)})"
                     "; encode them with the model and settings the index was built with")


def add_documents(index_dir: str | pathlib.Path, store: TokenStore,
                  metadata: Sequence[dict[str, Any]] | None = None, *,
                  log: Log = print) -> int:
  """Adds already encoded documents to a published index as a new generation.

  Args:
    index_dir: the index (holding `index.json`).
    store: the new documents' token vectors (and saliences, token ids, pooled vectors as the
      index's encoder wrote them). An id that is live in the index replaces that document.
    metadata: one JSON object per document (default: `store.metadata`; none when both are
      None), kept with the documents for filtered search.
    log: progress lines.

  Returns:
    The published generation.

  Raises:
    ValueError: for repeated ids, metadata of another length, or documents another model or
      setting encoded (dimension, vector format, stored fields); the index is unchanged.
    IndexBusyError: when another process is changing the index.
    IndexFileError: when INDEX_DIR holds no readable index.
  """
  index_dir = pathlib.Path(index_dir)
  if metadata is not None:
    if len(metadata) != store.num_docs:
      raise ValueError(f"metadata has {len(metadata)} entries for {store.num_docs} documents")
    store = dataclasses.replace(store, metadata=list(metadata))
  if store.num_docs == 0:
    raise ValueError("no documents to add")
  _check_ids(store)
  with _writer(index_dir, log) as listing:
    generation = listing.generation + 1
    config = listing.config
    index_dim = _layout(index_dir, listing.shards[0])["dimension"]
    if store.dim != index_dim:
      raise ValueError(f"{index_dir}: the new documents have {store.dim}-dimensional vectors, "
                       f"the index {index_dim}-dimensional ones (encoded by another model?)")
    live = _live_documents(index_dir, listing)
    replaced = [live[d] for d in store.doc_ids if d in live]
    new_entries = []
    parts = split_documents(store, config.max_shard_tokens, config.prune_doc_ratio)
    for position, part in enumerate(parts):
      shard = build_shard(part, config)
      _check_layout(index_dir, listing, shard)
      name = segment_dir_name(generation, position)
      save_shard(shard, index_dir / name, config)
      new_entries.append(listing_entry(index_dir, name))
      log(f"built {name}: {part.num_docs} documents")
    entries = _with_deletions(index_dir, listing, replaced, generation) + new_entries
    return _publish(index_dir, listing, entries, log,
                    f"added {store.num_docs} documents, {len(replaced)} of them updates")


def delete_documents(index_dir: str | pathlib.Path, doc_ids: Iterable[str], *,
                     missing: str = "error", log: Log = print) -> int:
  """Deletes documents by id as a new generation (their shards get new tombstone files).

  Args:
    index_dir: the index.
    doc_ids: ids of live documents.
    missing: what an id that names no live document (never added, or deleted already) does:
      "error" raises `UnknownDocumentsError` listing them and changes nothing; "ignore"
      deletes the others.
    log: progress lines.

  Returns:
    The published generation (the current one, unchanged, when nothing was deleted).
  """
  if missing not in MISSING:
    raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
  index_dir = pathlib.Path(index_dir)
  ids = list(dict.fromkeys(doc_ids))
  if not ids:
    raise ValueError("no document ids to delete")
  with _writer(index_dir, log) as listing:
    live = _live_documents(index_dir, listing)
    unknown = [d for d in ids if d not in live]
    if unknown and missing == "error":
      raise UnknownDocumentsError(index_dir, unknown)
    doomed = [live[d] for d in ids if d in live]
    if not doomed:
      log(f"{index_dir}: none of the {len(ids)} ids is a live document; nothing to delete")
      return listing.generation
    entries = _with_deletions(index_dir, listing, doomed, listing.generation + 1)
    return _publish(index_dir, listing, entries, log,
                    f"deleted {len(doomed)} documents"
                    + (f", {len(unknown)} unknown ids ignored" if unknown else ""))


@dataclasses.dataclass
class _Part:
  """One listed shard as compaction sees it."""
  entry: dict[str, Any]
  live: np.ndarray  # [N] bool
  live_tokens: int  # searched tokens of its live documents

  @property
  def dirty(self) -> bool:
    return not self.live.all()


def _compaction_groups(parts: list[_Part], target: int, pq_format: bool) -> list[list[int]]:
  """Consecutive runs of shard positions to rewrite together: shards with deleted documents
  and small ones (< target / 2 live searched tokens), merged while they fit `target`
  (product-quantised shards each keep their own codebook: never merged)."""
  groups: list[list[int]] = []
  current: list[int] = []
  tokens = 0
  for position, part in enumerate(parts):
    wanted = part.dirty or part.live_tokens < target / 2
    fits = current and not pq_format and tokens + part.live_tokens <= target
    if not wanted or not fits:
      if current:
        groups.append(current)
      current, tokens = [], 0
    if wanted:
      current.append(position)
      tokens += part.live_tokens
  if current:
    groups.append(current)
  # A clean shard alone in its group is left as it is.
  return [g for g in groups if len(g) > 1 or parts[g[0]].dirty]


def _compacted_shard(index_dir: pathlib.Path, listing: Listing, parts: list[_Part]) -> Any:
  """One shard over the live documents of `parts`, indexed anew (None when none is live)."""
  stores, masks, original = [], [], 0
  for part in parts:
    store, searched, original_tokens = open_shard_rows(index_dir / part.entry["name"],
                                                       listing.config)
    docs = np.flatnonzero(part.live)
    if not len(docs):
      continue
    rows = document_rows(store.offsets, docs)
    keep = np.ones(store.num_tokens, bool) if not searched.masked else np.unpackbits(
        searched.packed_mask(), count=store.num_tokens).astype(bool)
    stores.append(store.select_documents(docs))
    masks.append(keep[rows])
    # Tokens before pruning are counted per shard only: kept in proportion to the rows kept.
    original += round(original_tokens * len(rows) / max(store.num_tokens, 1))
  if not stores:
    return None
  merged = concatenate(stores)
  mask = np.concatenate(masks)
  searched = SearchedRows.from_rows(merged.offsets, None if mask.all() else np.flatnonzero(mask))
  return index_rows(merged, searched, listing.config, original_tokens=original)


def compact(index_dir: str | pathlib.Path, *, max_shard_tokens: int | None = None,
            log: Log = print) -> int:
  """Rewrites shards with deleted documents and merges small ones, as a new generation.

  Args:
    index_dir: the index.
    max_shard_tokens: searched tokens a merged shard may hold (default: the index's
      `max_shard_tokens`, else its largest shard's); shards with fewer than half of it are
      small.
    log: progress lines.

  Returns:
    The published generation (the current one, unchanged, when there is nothing to do).

  Raises:
    ValueError: when every document of the index is deleted (nothing would remain: build a
      new index instead); the index is unchanged.
  """
  index_dir = pathlib.Path(index_dir)
  with _writer(index_dir, log) as listing:
    parts = []
    for entry in listing.shards:
      live = ~_deleted(index_dir, entry)
      _, searched, _ = open_shard_rows(index_dir / entry["name"], listing.config)
      lengths = np.diff(searched.doc_offsets)
      parts.append(_Part(entry, live, int(lengths[live].sum())))
    if not any(p.live.any() for p in parts):
      raise ValueError(f"{index_dir}: every document is deleted; compaction would leave no "
                       "shard (build a new index instead); nothing was changed")
    target = (max_shard_tokens or listing.config.max_shard_tokens or
              max(int(e["ann_tokens"]) for e in listing.shards))
    groups = _compaction_groups(parts, target, listing.config.vector_dtype.startswith("pq:"))
    if not groups:
      log(f"{index_dir}: nothing to compact")
      return listing.generation
    generation = listing.generation + 1
    replacement: dict[int, dict[str, Any] | None] = {}
    for number, group in enumerate(groups):
      shard = _compacted_shard(index_dir, listing, [parts[p] for p in group])
      entry = None
      if shard is not None:
        name = segment_dir_name(generation, number)
        save_shard(shard, index_dir / name, listing.config)
        entry = listing_entry(index_dir, name)
        log(f"compacted shards {[parts[p].entry['name'] for p in group]} into {name}: "
            f"{shard.store.num_docs} live documents")
      replacement[group[0]] = entry
      replacement.update({p: None for p in group[1:]})
    entries = []
    for position, part in enumerate(parts):
      if position not in replacement:
        entries.append(part.entry)
      elif replacement[position] is not None:
        entries.append(replacement[position])
    if not entries:
      raise AssertionError("compaction kept no shard although documents are live")
    return _publish(index_dir, listing, entries, log,
                    f"compacted {sum(len(g) for g in groups)} shards into "
                    f"{sum(v is not None for v in replacement.values())}")
