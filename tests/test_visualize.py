"""Alignment pictures: the numbers they show, and that the PNG and HTML files are written."""

import numpy as np
import pytest

from aligner_jax.eval.visualize import alignment_view
from aligner_jax.eval.visualize import save_html
from aligner_jax.eval.visualize import save_png


def example(seed=0, n=5, m=12, h=8):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(n, h)).astype(np.float32)
  d = rng.normal(size=(m, h)).astype(np.float32)
  q_tokens = ["what", "is", "a", "fath", "##om"][:n]
  d_tokens = ["a", "fath", "##om", "is", "a", "unit", "of", "length", "<b>", "6", "feet", "."][:m]
  return q, d, q_tokens, d_tokens, rng.random(n).astype(np.float32), rng.random(m).astype(
      np.float32)


def test_ranks_and_score_match_brute_force():
  q, d, qt, dt, qs, ds = example()
  view = alignment_view(qt, dt, q, d, alignment="top_k:4", q_salience=qs, d_salience=ds)
  s = q @ d.T
  np.testing.assert_allclose(view.similarity, s, rtol=1e-6)
  num = den = 0.0
  for i in range(len(qt)):
    order = np.lexsort((np.arange(len(dt)), -s[i]))[:4]
    want = np.zeros(len(dt), int)
    want[order] = np.arange(1, 5)
    np.testing.assert_array_equal(view.ranks[i], want)
    for j in order:
      num += s[i, j] * qs[i] * ds[j]
      den += qs[i] * ds[j]
  assert view.score == pytest.approx(num / den, rel=1e-5)
  # Table 4: the top 50 % query / 20 % document tokens by salience are highlighted.
  assert view.q_highlight.sum() == 3 and view.d_highlight.sum() == 3
  assert set(np.flatnonzero(view.d_highlight)) == set(np.argsort(-ds)[:3])
  assert view.colored == list(np.argsort(-qs)[:3])


def test_without_salience_nothing_is_highlighted():
  q, d, qt, dt, _, _ = example(seed=1)
  view = alignment_view(qt, dt, q, d, alignment="top_p:0.2")
  assert not view.q_highlight.any() and not view.d_highlight.any()
  assert (view.ranks > 0).sum(axis=1).tolist() == [2] * len(qt)  # ⌊0.2 · 12⌋ = 2 per row
  assert view.colored[0] == int(np.argmax((q @ d.T).max(axis=1)))


def test_png_and_html_files(tmp_path):
  q, d, qt, dt, qs, ds = example(seed=2)
  view = alignment_view(qt, dt, q, d, alignment="top_k:2", q_salience=qs, d_salience=ds)
  save_png(view, tmp_path / "pics" / "a.png", title="query 1 / doc 7")
  data = (tmp_path / "pics" / "a.png").read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  save_html(view, tmp_path / "a.html", title="query <1>")
  page = (tmp_path / "a.html").read_text()
  assert page.startswith("<!DOCTYPE html>") and "query &lt;1&gt;" in page
  assert "&lt;b&gt;" in page and "<b>" not in page.replace("<b>Query:</b>", "").replace(
      "<b>Document:</b>", "")
  # WordPiece continuations join the previous piece without a space.
  assert ">fath</span><span" in page
  # One superscript per document token aligned to a coloured query token.
  aligned = (view.ranks[view.colored] > 0).any(axis=0)
  assert page.count("<sup") == int(aligned.sum()) > 0
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "pics"]


def test_bad_inputs_are_refused():
  q, d, qt, dt, _, _ = example()
  with pytest.raises(ValueError, match="disagree"):
    alignment_view(qt[:2], dt, q, d)
  with pytest.raises(ValueError, match="token ids"):
    alignment_view(qt, dt, q, d, alignment="coil")
