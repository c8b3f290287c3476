"""Pictures of what a multi-vector model aligns and finds salient (ALIGNER Tables 4-5).

For one query and one document, `alignment_view` computes the similarity matrix S, the pairwise
alignment Ã of a strategy (any `Alignment` spec; "top_k:4" gives Table 5's top-1..4 marks) and
the saliences. `save_png` draws S as a heat map with the aligned cells numbered by rank and the
saliences as bars; `render_html` / `save_html` write the text view of Table 4: the top
`query_ratio` query tokens and `doc_ratio` document tokens by salience are highlighted, the
`num_colored` most salient query tokens get a colour each, and every document token aligned to
them carries that colour and its rank as a superscript (1 = most similar).

Token strings are displayed as given, except that WordPiece continuations ("##ing") join the
previous token and SentencePiece's "▁" marks a word start. A document with no tokens at all
(an empty document stored without framing tokens) is drawn as such: score 0, no matrix.
"""

import dataclasses
import html
import os

import matplotlib.pyplot as plt
import numpy as np

from aligner_jax.index import pruning
from aligner_jax.io import atomic_write
from aligner_jax.plots import write_png
from aligner_jax.scoring import Alignment
from aligner_jax.scoring.alignment import alignment_matrix

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
          "#17becf")


@dataclasses.dataclass
class AlignmentView:
  """Everything a picture shows; arrays cover valid tokens only.

  Attributes:
    q_tokens, d_tokens: token strings, n and m of them.
    similarity: [n, m] float32 S.
    ranks: [n, m] int32, the rank (1 = most similar) of each aligned pair in its query row,
      0 where Ã_ij = 0.
    q_salience, d_salience: [n], [m] float32 (ones when the model has none).
    q_highlight, d_highlight: [n], [m] bool, the top query_ratio / doc_ratio by salience.
    colored: positions of the query tokens that get a colour, most salient first (without
      saliences: those with the largest best-match similarity).
    alignment: the strategy's spec.
    score: the alignment score Σ S ⊙ A / Σ A with A = Ã ⊙ (u^q ⊗ u^d).
  """
  q_tokens: list[str]
  d_tokens: list[str]
  similarity: np.ndarray
  ranks: np.ndarray
  q_salience: np.ndarray
  d_salience: np.ndarray
  q_highlight: np.ndarray
  d_highlight: np.ndarray
  colored: list[int]
  alignment: str
  score: float


def alignment_view(q_tokens: list[str], d_tokens: list[str], q_vectors: np.ndarray,
                   d_vectors: np.ndarray, *, alignment: Alignment | str = "top_k:1",
                   q_salience: np.ndarray | None = None, d_salience: np.ndarray | None = None,
                   query_ratio: float = 0.5, doc_ratio: float = 0.2,
                   num_colored: int = 3) -> AlignmentView:
  """Computes an `AlignmentView` (see the module docstring).

  Args:
    q_tokens: n query token strings (valid tokens only).
    d_tokens: m document token strings.
    q_vectors: [n, h] float query token vectors.
    d_vectors: [m, h] float document token vectors.
    alignment: the pairwise alignment strategy drawn.
    q_salience: [n] float or None; d_salience: [m] float or None.
    query_ratio, doc_ratio: fractions of tokens highlighted by salience (Table 4: 50 %, 20 %).
    num_colored: how many of the most salient query tokens get a colour.
  """
  alignment = Alignment.parse(alignment)
  q = np.asarray(q_vectors, np.float32)
  d = np.asarray(d_vectors, np.float32)
  n, m = len(q_tokens), len(d_tokens)
  if q.shape[0] != n or d.shape[0] != m or q.shape[1] != d.shape[1]:
    raise ValueError(f"{n} query tokens with vectors {q.shape}, {m} document tokens with "
                     f"vectors {d.shape}: counts or dimensions disagree")
  if alignment.needs_token_ids:
    raise ValueError(f"alignment {alignment} needs token ids; draw a top_k or top_p alignment")
  s = q @ d.T
  q_mask, d_mask = np.ones(n, bool), np.ones(m, bool)
  a_tilde = np.asarray(alignment_matrix(s, q_mask, d_mask, alignment))
  ranks = np.zeros((n, m), np.int32)
  for i in range(n):
    cols = np.flatnonzero(a_tilde[i] > 0)
    order = cols[np.lexsort((cols, -s[i, cols]))]
    ranks[i, order] = np.arange(1, len(order) + 1)
  u_q = np.ones(n, np.float32) if q_salience is None else np.asarray(q_salience, np.float32)
  u_d = np.ones(m, np.float32) if d_salience is None else np.asarray(d_salience, np.float32)
  if u_q.shape != (n,) or u_d.shape != (m,):
    raise ValueError(f"saliences must have shapes ({n},) and ({m},), got {u_q.shape}, "
                     f"{u_d.shape}")
  a = a_tilde * u_q[:, None] * u_d[None, :]
  total = float(a.sum())
  score = float((s * a).sum() / total) if total > 0 else 0.0
  num_colored = min(num_colored, len(COLORS), n)
  if q_salience is None:
    # Without saliences nothing is highlighted, and the colours go to the query tokens with
    # the most confident (largest) best match.
    q_high = np.zeros(n, bool)
    key = -s.max(axis=1) if m else np.zeros(n)
  else:
    q_high = pruning.top_salience_mask(u_q[None], q_mask[None], query_ratio)[0]
    key = -u_q
  d_high = (np.zeros(m, bool) if d_salience is None else
            pruning.top_salience_mask(u_d[None], d_mask[None], doc_ratio)[0])
  colored = [int(i) for i in np.argsort(key, kind="stable")[:num_colored]]
  return AlignmentView(list(q_tokens), list(d_tokens), s.astype(np.float32), ranks, u_q, u_d,
                       q_high, d_high, colored, str(alignment), score)


def save_png(view: AlignmentView, path: str | os.PathLike, *, title: str = "") -> None:
  """Heat map of S with aligned cells numbered by rank, and salience bars (atomic write)."""
  n, m = view.similarity.shape
  width = min(4 + 0.18 * max(m, 8), 40)
  height = 2.5 + 0.3 * n
  fig, axes = plt.subplots(2, 2, figsize=(width, height),
                           gridspec_kw={"width_ratios": [max(m, 3), 3], "height_ratios": [n, 3]},
                           squeeze=False)
  ax, ax_q, ax_d, ax_off = axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]
  ax_off.axis("off")
  if m == 0:
    _draw_no_document_tokens(ax, ax_d, view, title)
  else:
    _draw_similarity(fig, ax, ax_d, ax_off, view, title)
  ax_q.barh(range(n), view.q_salience, color=np.where(view.q_highlight, "#444444", "#bbbbbb"))
  ax_q.set_ylim(n - 0.5, -0.5)
  ax_q.set_yticks([])
  ax_q.set_title("query salience", fontsize=8)
  fig.tight_layout()
  write_png(fig, path, dpi=110)


def _draw_no_document_tokens(ax, ax_d, view: AlignmentView, title: str) -> None:
  """The matrix panel of a document without tokens: the query tokens and a note."""
  n = len(view.q_tokens)
  ax.set_ylim(n - 0.5, -0.5)
  ax.set_xticks([])
  ax.set_yticks(range(n), view.q_tokens, fontsize=7)
  ax.text(0.5, 0.5, "the document has no tokens", ha="center", va="center", fontsize=8,
          transform=ax.transAxes)
  ax.set_title(title or f"{view.alignment} alignment (score {view.score:.3f})", fontsize=9)
  ax_d.axis("off")


def _draw_similarity(fig, ax, ax_d, ax_off, view: AlignmentView, title: str) -> None:
  """S as a heat map with the aligned cells numbered by rank, and the document saliences."""
  n, m = view.similarity.shape
  im = ax.imshow(view.similarity, aspect="auto", cmap="viridis", interpolation="nearest")
  for i, j in zip(*np.nonzero(view.ranks)):
    color = COLORS[view.colored.index(i)] if i in view.colored else "white"
    ax.text(j, i, str(view.ranks[i, j]), ha="center", va="center", fontsize=7, color=color,
            fontweight="bold")
  ax.set_yticks(range(n), view.q_tokens, fontsize=7)
  ax.set_xticks(range(m), view.d_tokens, fontsize=6, rotation=90)
  for i in view.colored:
    ax.get_yticklabels()[i].set_color(COLORS[view.colored.index(i)])
  ax.set_title(title or f"similarity and {view.alignment} alignment (score {view.score:.3f})",
               fontsize=9)
  fig.colorbar(im, ax=ax_off, fraction=0.5, label="q·d")
  ax_d.bar(range(m), view.d_salience, color=np.where(view.d_highlight, "#444444", "#bbbbbb"))
  ax_d.set_xlim(-0.5, m - 0.5)
  ax_d.set_xticks([])
  ax_d.set_ylabel("doc salience", fontsize=8)


def _pieces(tokens: list[str]) -> list[tuple[str, str]]:
  """(separator before, text) per token for display."""
  out = []
  for i, tok in enumerate(tokens):
    if tok.startswith("##"):
      out.append(("", tok[2:]))
    elif tok.startswith("▁"):
      out.append((" " if i else "", tok[1:]))
    else:
      out.append((" " if i else "", tok))
  return out


def render_html(view: AlignmentView, *, title: str = "") -> str:
  """The Table-4/5 text view as a self-contained HTML fragment (see the module docstring)."""
  esc = html.escape
  parts = [f'<div class="alignment-view"><h3>{esc(title or "Alignment")}</h3>',
           f"<p>alignment <code>{esc(view.alignment)}</code>, score {view.score:.4f}. "
           "Highlighted: the most salient query and document tokens; coloured: the most "
           "salient query tokens and the document tokens aligned to them (superscript = "
           "rank).</p>", "<p><b>Query:</b> "]
  for i, (sep, text) in enumerate(_pieces(view.q_tokens)):
    style = ["padding:0 1px"]
    if view.q_highlight[i]:
      style.append("background:#fff2a8")
    if i in view.colored:
      style.append(f"color:{COLORS[view.colored.index(i)]};font-weight:bold")
    parts.append(f'{esc(sep)}<span style="{";".join(style)}" '
                 f'title="salience {view.q_salience[i]:.3f}">{esc(text)}</span>')
  parts.append("</p><p><b>Document:</b> ")
  for j, (sep, text) in enumerate(_pieces(view.d_tokens)):
    style = ["padding:0 1px"]
    if view.d_highlight[j]:
      style.append("background:#fff2a8")
    marks = [(view.ranks[i, j], i) for i in view.colored if view.ranks[i, j] > 0]
    sup = ""
    if marks:
      rank, i = min(marks)
      color = COLORS[view.colored.index(i)]
      style.append(f"color:{color};font-weight:bold")
      sup = f'<sup style="color:{color}">({rank})</sup>'
    tip = f"salience {view.d_salience[j]:.3f}"
    if marks:
      tip += "; aligned to " + ", ".join(f"{view.q_tokens[i]} (rank {r})" for r, i in marks)
    parts.append(f'{esc(sep)}<span style="{";".join(style)}" title="{esc(tip)}">{esc(text)}'
                 f"</span>{sup}")
  if not view.d_tokens:
    parts.append("<i>(no tokens)</i>")
  parts.append("</p></div>")
  return "".join(parts)


def save_html(view: AlignmentView, path: str | os.PathLike, *, title: str = "") -> None:
  """A standalone HTML page holding `render_html(view)` (atomic write)."""
  page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>"
          f"{html.escape(title or 'Alignment')}</title></head><body style=\"font-family:"
          f"sans-serif;max-width:60em\">{render_html(view, title=title)}</body></html>\n")
  atomic_write(path, page)
