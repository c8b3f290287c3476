"""Which stored rows of an index shard the MIPS backend searches, and their documents.

A shard stores T token rows of N documents (`offsets` [N + 1]) and its backend searches
T_ann of them, numbered 0 … T_ann - 1 ("searched rows"). Usually every stored row is
searched, and searched row r is stored row r. With `refine_tokens="all"` and β^d < 1 only
the kept rows are searched: a bit mask over the stored rows (`ann_keep.npy`, `np.packbits`
order: row i is bit 7 - i % 8 of byte i // 8) says which, and searched row r is the r-th set
bit.

Both maps are answered at query time from small structures, never from a table per token:
the document of a searched row by a binary search in per-document offsets (N + 1 integers),
the stored row of a searched row (masked shards only) by a rank directory over the mask (one
count per 512 rows) and a look-up in the mask itself (one bit per row). So a shard of T
tokens costs O(N + T / 8) bytes here, where a document number per token costs 4 T.
"""

import numpy as np

_BLOCK_BYTES = 64  # 512 rows per entry of the rank directory
_BLOCK_ROWS = 8 * _BLOCK_BYTES
_CHUNK = 1 << 16  # rows mapped per step: bounds the [chunk, 64] temporaries



def _byte_tables() -> tuple[np.ndarray, np.ndarray]:
  """Per byte value: its number of set bits [256] uint8, and the position of its j-th set bit
  [256, 8] int64 (0 = the most significant bit, the byte's first row; 0 past the last)."""
  bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)
  select = np.zeros((256, 8), np.int64)
  for value in range(256):
    where = np.flatnonzero(bits[value])
    select[value, :len(where)] = where
  return bits.sum(1).astype(np.uint8), select


_POPCOUNT, _SELECT = _byte_tables()


class SearchedRows:
  """The searched rows of one shard (see the module docstring).

  Attributes:
    offsets: [N + 1] int64 stored-row offsets of the documents.
    num_rows: T, the number of stored rows.
    size: T_ann, the number of searched rows.
    masked: whether only some stored rows are searched.
  """

  def __init__(self, offsets: np.ndarray, packed: np.ndarray | None = None):
    """`packed`: the [⌈T / 8⌉] uint8 mask of searched rows, or None when all are searched.

    Raises:
      ValueError: when the mask has the wrong length or marks rows past the end.
    """
    self.offsets = np.asarray(offsets, np.int64)
    self.num_rows = int(self.offsets[-1])
    self.masked = packed is not None
    if packed is None:
      self._bits = self._block_rank = None
      self._doc_offsets = self.offsets
      self.size = self.num_rows
      return
    nbytes = (self.num_rows + 7) // 8
    if packed.shape != (nbytes,):
      raise ValueError(f"the mask of searched rows has {packed.shape} bytes, expected "
                       f"({nbytes},) for {self.num_rows} rows")
    # One bit per row in memory, padded to whole blocks of the rank directory; the block of
    # position T (one past the last row) exists too.
    self._bits = np.zeros((self.num_rows // _BLOCK_ROWS + 1) * _BLOCK_BYTES, np.uint8)
    self._bits[:nbytes] = packed
    past_end = self.num_rows % 8 and int(self._bits[nbytes - 1]) & (0xFF >> self.num_rows % 8)
    if past_end:
      raise ValueError(f"the mask of searched rows marks rows past the {self.num_rows} stored")
    counts = _POPCOUNT[self._bits].reshape(-1, _BLOCK_BYTES).sum(1, dtype=np.int64)
    self._block_rank = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self.size = int(self._block_rank[-1])
    self._doc_offsets = self.rank(self.offsets)

  @classmethod
  def from_rows(cls, offsets: np.ndarray, rows: np.ndarray | None) -> "SearchedRows":
    """From the sorted stored rows that are searched (None: all of them)."""
    if rows is None:
      return cls(offsets)
    keep = np.zeros(int(np.asarray(offsets)[-1]), bool)
    keep[np.asarray(rows, np.int64)] = True
    return cls(offsets, np.packbits(keep))

  @property
  def doc_offsets(self) -> np.ndarray:
    """[N + 1] int64: document i's searched rows are doc_offsets[i] … doc_offsets[i + 1] - 1."""
    return self._doc_offsets

  @property
  def nbytes(self) -> int:
    """Bytes held by the maps (offsets, mask, rank directory)."""
    held = [self.offsets, self._bits, self._block_rank,
            None if self._doc_offsets is self.offsets else self._doc_offsets]
    return sum(a.nbytes for a in held if a is not None)

  def packed_mask(self) -> np.ndarray:
    """[⌈T / 8⌉] uint8 mask of the searched rows (what `ann_keep.npy` holds); masked only."""
    if not self.masked:
      raise ValueError("every row is searched: there is no mask")
    return self._bits[:(self.num_rows + 7) // 8].copy()

  def rank(self, stored: np.ndarray) -> np.ndarray:
    """Number of searched rows before each stored row position `stored` [...] (0 … T)."""
    stored = np.asarray(stored, np.int64)
    if not self.masked:
      return stored
    return self._chunked(stored, self._rank)

  def stored_rows(self, searched: np.ndarray) -> np.ndarray:
    """Stored row of each searched row `searched` [...] (0 … T_ann - 1): int64, same shape."""
    searched = np.asarray(searched, np.int64)
    if not self.masked:
      return searched
    return self._chunked(searched, self._select)

  def _rank(self, b: np.ndarray) -> np.ndarray:
    block, within = b // _BLOCK_ROWS, b % _BLOCK_ROWS
    data, before = self._block_bytes(block)
    # Set bits of the whole bytes before the position, then the leading bits of its byte.
    nbyte = within // 8
    byte = np.take_along_axis(data, nbyte[:, None], 1)[:, 0].astype(np.int64)
    lead = _POPCOUNT[byte >> (8 - within % 8)]  # a shift by 8 leaves 0: no partial byte
    return self._block_rank[block] + np.take_along_axis(before, nbyte[:, None], 1)[:, 0] + lead

  def _select(self, r: np.ndarray) -> np.ndarray:
    block = np.searchsorted(self._block_rank, r, side="right") - 1
    k = r - self._block_rank[block]  # r is the k-th set bit of its block
    data, before = self._block_bytes(block)
    nbyte = (before <= k[:, None]).sum(1) - 1  # the last byte starting at or before bit k
    byte = np.take_along_axis(data, nbyte[:, None], 1)[:, 0]
    within = k - np.take_along_axis(before, nbyte[:, None], 1)[:, 0]
    return block * _BLOCK_ROWS + 8 * nbyte + _SELECT[byte, within]

  def _block_bytes(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mask bytes [len(block), 64] uint8 of each block of the rank directory, and the set
    bits before each byte within its block [len(block), 64] int64."""
    data = self._bits[block[:, None] * _BLOCK_BYTES + np.arange(_BLOCK_BYTES)[None, :]]
    counts = _POPCOUNT[data]
    return data, np.cumsum(counts, axis=1, dtype=np.int64) - counts

  @staticmethod
  def _chunked(values: np.ndarray, fn) -> np.ndarray:
    flat = values.reshape(-1)
    out = np.concatenate([fn(flat[s:s + _CHUNK]) for s in range(0, len(flat), _CHUNK)]
                         + [np.zeros(0, np.int64)])
    return out.astype(np.int64).reshape(values.shape)

  def documents(self, searched: np.ndarray) -> np.ndarray:
    """Local document of each searched row `searched` [...]: int64, same shape."""
    return np.searchsorted(self._doc_offsets, searched, side="right") - 1
