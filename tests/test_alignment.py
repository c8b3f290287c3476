"""Tests of the alignment specs and scorers (ALIGNER Eq. 1-2, §2.2, §3.1, App. A.2).

The reference is brute-force NumPy with explicit loops over queries, documents and tokens; both
the fast chunked path and the dense path of `align_scores` are held to it.
"""

import itertools
import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from aligner_jax.scoring import alignment as alignment_lib
from aligner_jax.scoring import fast_align
from aligner_jax.scoring import similarity
from aligner_jax.scoring.alignment import Alignment

settings = hypothesis.settings(max_examples=12, deadline=None, derandomize=True)

slow = pytest.mark.slow
SPECS = ["top_k:1", "top_k:2", "top_k:5", "top_p:0.3", "top_p:1.0", "da:k=2,eps=0.05", "cls",
         "me_bert:3", "coil"]


# ---------------------------------------------------------------- NumPy reference (loops)

def ref_lp_row(s, valid, k, eps):
  """Entropic LP over the valid entries of one row, by bisection (see test_salience.py)."""
  lam = np.zeros(len(s))
  idx = [j for j in range(len(s)) if valid[j]]
  k = min(k, len(idx))
  if k <= 0:
    return lam
  sv = np.array([s[j] for j in idx], np.float64)
  gate = lambda a: np.exp(np.minimum(0.0, (sv + a) / eps))  # noqa: E731
  lo, hi = -sv.max() + eps * math.log(k / len(sv)) - 1.0, -sv.min() + 1.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if gate(mid).sum() < k else (lo, mid)
  for j, v in zip(idx, gate(0.5 * (lo + hi))):
    lam[j] = v
  return lam


def ref_pair(q, qm, d, dm, spec, uq, ud, qi, di):
  """Score of one query against one document with explicit S, Ã and A."""
  n, m = len(q), len(d)
  s = np.zeros((n, m))
  for i in range(n):
    for j in range(m):
      s[i, j] = float(np.dot(q[i].astype(np.float64), d[j].astype(np.float64)))
  a_tilde = np.zeros((n, m))
  m_valid = int(sum(dm))
  for i in range(n):
    if not qm[i]:
      continue
    if spec.kind in ("cls", "me_bert") and i > 0:
      continue
    if spec.kind == "cls":
      cand = [0] if dm[0] else []
    elif spec.kind == "me_bert":
      cand = [j for j in range(min(spec.k, m)) if dm[j]]
    elif spec.kind == "coil":
      cand = [j for j in range(m) if dm[j] and di[j] == qi[i]]
    else:
      cand = [j for j in range(m) if dm[j]]
    if spec.kind == "da":
      a_tilde[i] = ref_lp_row(s[i], dm, min(spec.k, m_valid), spec.eps)
      continue
    if spec.kind == "top_k":
      count = min(spec.k, m_valid)
    elif spec.kind == "top_p":
      count = min(max(math.floor(round(spec.p * m_valid, 9)), 1), m_valid)
    else:
      count = 1
    cand.sort(key=lambda j: (-s[i, j], j))  # ties to the lower index
    for j in cand[:count]:
      a_tilde[i, j] = 1.0
  a = np.zeros((n, m))
  for i in range(n):
    for j in range(m):
      a[i, j] = a_tilde[i, j] * uq[i] * ud[j] * qm[i] * dm[j]
  z = a.sum()
  return float((s * a).sum() / z) if z > 0 else 0.0


def ref_scores(q, qm, d, dm, spec, qs=None, ds=None, qi=None, di=None):
  spec = Alignment.parse(spec)
  uq = np.ones(qm.shape) if qs is None else qs
  ud = np.ones(dm.shape) if ds is None else ds
  out = np.zeros((len(q), len(d)))
  for b in range(len(q)):
    for c in range(len(d)):
      out[b, c] = ref_pair(q[b], qm[b], d[c], dm[c], spec, uq[b], ud[c],
                           None if qi is None else qi[b], None if di is None else di[c])
  return out


def make_case(seed, num_q, num_d, n, m, h=4, *, ties=False, saliences=False):
  """Random queries/documents; `ties` draws small integers so that S has exact ties."""
  rng = np.random.default_rng(seed)
  if ties:
    q = rng.integers(-1, 2, (num_q, n, h)).astype(np.float32)
    d = rng.integers(-1, 2, (num_d, m, h)).astype(np.float32)
  else:
    q = rng.standard_normal((num_q, n, h)).astype(np.float32)
    d = rng.standard_normal((num_d, m, h)).astype(np.float32)
  qm = rng.random((num_q, n)) < 0.8
  dm = rng.random((num_d, m)) < 0.7
  dm[-1] = False  # a document with no valid token
  case = dict(q=q, q_mask=qm, d=d, d_mask=dm,
              q_ids=rng.integers(0, 3, (num_q, n)), d_ids=rng.integers(0, 3, (num_d, m)))
  if saliences:
    qs = rng.random((num_q, n)).astype(np.float32)
    ds = rng.random((num_d, m)).astype(np.float32)
    ds[rng.random((num_d, m)) < 0.3] = 0.0  # some tokens fully pruned
    case.update(q_salience=qs, d_salience=ds)
  return case


def ref_of(case, spec):
  return ref_scores(case["q"], case["q_mask"], case["d"], case["d_mask"], spec,
                    case.get("q_salience"), case.get("d_salience"), case["q_ids"], case["d_ids"])


_scores_jit = jax.jit(alignment_lib.align_scores,
                      static_argnames=("alignment", "method", "chunk_size"))
_candidates_jit = jax.jit(alignment_lib.align_scores_candidates,
                          static_argnames=("alignment", "method", "chunk_size"))


def scores(case, spec, **kw):
  args = {key: val for key, val in case.items() if key not in ("q", "q_mask", "d", "d_mask")}
  return np.asarray(_scores_jit(case["q"], case["q_mask"], case["d"], case["d_mask"],
                                alignment=spec, **args, **kw))


# ---------------------------------------------------------------- specs

@pytest.mark.parametrize("spec", SPECS + ["top_p:0.015", "da:k=4,eps=0.002", "top_k:10"])
def test_spec_round_trips(spec):
  parsed = Alignment.parse(spec)
  assert str(parsed) == spec
  assert Alignment.parse(str(parsed)) == parsed
  assert Alignment.parse(parsed) is parsed
  assert parsed.needs_token_ids == (spec == "coil")


@settings
@hypothesis.given(st.integers(1, 10_000), st.floats(1e-6, 1.0), st.floats(1e-6, 10.0))
def test_spec_round_trips_any_value(k, p, eps):
  for spec in (Alignment("top_k", k=k), Alignment("top_p", p=p), Alignment("da", k=k, eps=eps),
               Alignment("me_bert", k=k)):
    assert Alignment.parse(str(spec)) == spec


def test_spec_parse_variants():
  assert Alignment.parse(" top_k:3 ") == Alignment("top_k", k=3)
  assert Alignment.parse("top_p:1e-2") == Alignment("top_p", p=0.01)
  assert Alignment.parse("da:eps=0.1,k=2") == Alignment("da", k=2, eps=0.1)


@pytest.mark.parametrize("bad", ["", "top_k", "top_k:0", "top_k:-1", "top_k:1.5", "top_p:0",
                                 "top_p:1.5", "top_p:abc", "da:k=2", "da:k=0,eps=0.1",
                                 "da:k=2,eps=0", "cls:1", "me_bert", "coil:2", "colbert", 3])
def test_spec_errors_name_spec_and_allowed(bad):
  with pytest.raises(ValueError) as err:
    Alignment.parse(bad)
  assert repr(bad) in str(err.value)
  assert "top_k:K" in str(err.value) and "coil" in str(err.value)


def test_coil_without_ids_is_an_error():
  case = make_case(0, 1, 2, 3, 4)
  with pytest.raises(ValueError, match="q_ids and d_ids"):
    alignment_lib.align_scores(case["q"], case["q_mask"], case["d"], case["d_mask"], "coil")


def test_shape_errors():
  case = make_case(0, 2, 3, 3, 4)
  with pytest.raises(ValueError, match="d_mask"):
    alignment_lib.align_scores(case["q"], case["q_mask"], case["d"], case["d_mask"][:, :2],
                               "top_k:1")
  with pytest.raises(ValueError, match="candidates"):
    alignment_lib.align_scores_candidates(case["q"], case["q_mask"], case["d"][None],
                                          case["d_mask"][None], "top_k:1")
  with pytest.raises(ValueError, match="method"):
    alignment_lib.align_scores(case["q"], case["q_mask"], case["d"], case["d_mask"], "cls",
                               method="slow")


# ---------------------------------------------------------------- scores vs the reference

@settings
@hypothesis.given(st.sampled_from(SPECS), st.sampled_from([(2, 5, 3, 6), (1, 3, 4, 9)]),
                  st.booleans(), st.booleans(), st.integers(0, 2**31 - 1))
def test_align_scores_match_loops(spec, shape, ties, saliences, seed):
  num_q, num_d, n, m = shape
  case = make_case(seed, num_q, num_d, n, m, ties=ties, saliences=saliences)
  want = ref_of(case, spec)
  tol = 2e-3 if spec.startswith("da") else 1e-5
  methods = ("fast", "dense") + (("native",) if spec.startswith("top_") else ())
  for method in methods:
    got = scores(case, spec, method=method)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol, err_msg=f"{spec} {method}")


@pytest.mark.parametrize("spec", SPECS + ["top_p:0.9"])
def test_fast_path_chunks_agree_with_dense(spec):
  # 8 documents in chunks of 3: two mapped chunks and a remainder; top_p:0.9 picks more than
  # MAX_ITERATIVE_K tokens per row and so takes the sorting branch.
  case = make_case(11, 3, 8, 4, 20, ties=True, saliences=True)
  dense = scores(case, spec, method="dense")
  np.testing.assert_allclose(scores(case, spec, method="fast", chunk_size=3), dense, atol=1e-5)
  if spec in ("top_k:1", "top_k:2"):
    np.testing.assert_allclose(scores(case, spec, method="fast", chunk_size=1), dense, atol=1e-5)
  if spec in ("top_k:1", "top_k:5", "top_p:0.9"):  # the branches that differ without saliences
    plain = {key: val for key, val in case.items() if not key.endswith("salience")}
    np.testing.assert_allclose(scores(plain, spec, method="fast", chunk_size=3),
                               scores(plain, spec, method="dense"), atol=1e-5)


@pytest.mark.parametrize("spec", ["top_k:1", "top_k:3", "da:k=2,eps=0.05", "me_bert:2", "coil"])
def test_candidates_match_loops(spec):
  num_q, k, n, m = 2, 4, 3, 7
  case = make_case(5, num_q, num_q * k, n, m, saliences=True)
  d = case["d"].reshape(num_q, k, m, -1)
  reshape = lambda x: x.reshape(num_q, k, m)  # noqa: E731
  got = _candidates_jit(case["q"], case["q_mask"], d, reshape(case["d_mask"]), alignment=spec,
                        q_salience=case["q_salience"], d_salience=reshape(case["d_salience"]),
                        q_ids=case["q_ids"], d_ids=reshape(case["d_ids"]))
  full = ref_of(case, spec)  # every query against every document
  want = np.stack([full[b, b * k:(b + 1) * k] for b in range(num_q)])
  tol = 2e-3 if spec.startswith("da") else 1e-5
  np.testing.assert_allclose(got, want, atol=tol, rtol=tol)


# ---------------------------------------------------------------- semantics

def test_colbert_is_mean_of_row_maxima():
  case = make_case(1, 3, 5, 4, 6)
  got = scores(case, "top_k:1")
  s = np.einsum("bnh,cmh->bcnm", case["q"], case["d"])
  s = np.where(case["d_mask"][None, :, None, :], s, -np.inf).max(-1)  # [B, C, n]
  qm = case["q_mask"][:, None, :]
  want = np.where(qm, s, 0).sum(-1) / qm.sum(-1)
  want[:, ~case["d_mask"].any(-1)] = 0.0
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_top_k_beyond_length_averages_all_valid_pairs():
  case = make_case(2, 2, 4, 3, 5)
  s = np.einsum("bnh,cmh->bcnm", case["q"], case["d"])
  pair = case["q_mask"][:, None, :, None] & case["d_mask"][None, :, None, :]
  want = np.where(pair, s, 0).sum((-1, -2)) / np.maximum(pair.sum((-1, -2)), 1)
  np.testing.assert_allclose(scores(case, "top_k:5"), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(scores(case, "top_p:1.0"), want, rtol=1e-5, atol=1e-6)


def test_cls_me_bert_coil_examples():
  q = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
  d = np.array([[[2.0, 0.0], [5.0, 0.0], [0.0, 3.0]]], np.float32)
  qm, dm = np.ones((1, 2), bool), np.ones((1, 3), bool)
  case = dict(q=q, q_mask=qm, d=d, d_mask=dm)
  assert scores(case, "cls")[0, 0] == pytest.approx(2.0)
  assert scores(case, "me_bert:1")[0, 0] == pytest.approx(2.0)
  assert scores(case, "me_bert:2")[0, 0] == pytest.approx(5.0)
  ids = dict(q_ids=np.array([[7, 8]]), d_ids=np.array([[7, 9, 8]]))
  assert scores({**case, **ids}, "coil")[0, 0] == pytest.approx((2.0 + 3.0) / 2)
  one = dict(q_ids=np.array([[7, 4]]), d_ids=np.array([[1, 7, 2]]))  # only token 0 matches
  assert scores({**case, **one}, "coil")[0, 0] == pytest.approx(5.0)
  none = dict(q_ids=np.array([[1, 2]]), d_ids=np.array([[3, 4, 5]]))
  assert scores({**case, **none}, "coil")[0, 0] == 0.0
  assert scores({**case, "q_mask": np.array([[False, True]])}, "cls")[0, 0] == 0.0


@pytest.mark.parametrize("spec", SPECS)
def test_padding_never_contributes(spec):
  case = make_case(3, 2, 4, 3, 5, saliences=True)
  base = scores(case, spec)
  rng = np.random.default_rng(0)
  # Append padded tokens with huge vectors and arbitrary ids/saliences to both sides.
  grown = dict(case)
  grown["q"] = np.concatenate([case["q"], 100 * rng.standard_normal((2, 2, 4))], 1).astype(
      np.float32)
  grown["d"] = np.concatenate([case["d"], 100 * rng.standard_normal((4, 3, 4))], 1).astype(
      np.float32)
  grown["q_mask"] = np.concatenate([case["q_mask"], np.zeros((2, 2), bool)], 1)
  grown["d_mask"] = np.concatenate([case["d_mask"], np.zeros((4, 3), bool)], 1)
  grown["q_ids"] = np.concatenate([case["q_ids"], case["q_ids"][:, :2]], 1)
  grown["d_ids"] = np.concatenate([case["d_ids"], case["d_ids"][:, :3]], 1)
  grown["q_salience"] = np.concatenate([case["q_salience"], np.ones((2, 2), np.float32)], 1)
  grown["d_salience"] = np.concatenate([case["d_salience"], np.ones((4, 3), np.float32)], 1)
  if spec.startswith("me_bert") or spec == "cls":
    # Those read the leading positions; padding in front instead of at the end must not count.
    grown["d_mask"][:, 0] = False
    case = dict(grown)
    base = ref_of(case, spec)
  np.testing.assert_allclose(scores(grown, spec), base, atol=1e-5)


# Gradient compiles are the expensive part; the default suite keeps one case per code path.
@pytest.mark.parametrize("spec,grad_methods", [
    ("top_k:1", ("fast",)), ("top_k:2", ("fast", "dense")), ("top_k:5", ()), ("top_p:0.3", ()),
    ("top_p:1.0", ()), ("da:k=2,eps=0.05", ("fast",)), ("cls", ("fast",)),
    ("me_bert:3", ("fast",)), ("coil", ("fast",)),
    pytest.param("top_k:5", ("fast", "dense"), marks=slow),
    pytest.param("da:k=2,eps=0.05", ("dense",), marks=slow),
    pytest.param("coil", ("dense",), marks=slow),
    pytest.param("me_bert:3", ("dense",), marks=slow)])
def test_fully_pruned_scores_zero_with_finite_gradients(spec, grad_methods):
  case = make_case(4, 2, 3, 3, 5, saliences=True)
  case["d_salience"] = np.zeros_like(case["d_salience"])
  assert np.all(scores(case, spec) == 0)
  case = make_case(4, 2, 3, 3, 5, saliences=True)
  case["d_mask"] = np.zeros_like(case["d_mask"])
  case["q_mask"][1] = False
  for method in ("fast", "dense"):
    assert np.all(scores(case, spec, method=method) == 0)
  for method in grad_methods:

    def loss(q, d, qs, ds):
      return jnp.sum(alignment_lib.align_scores(
          q, case["q_mask"], d, case["d_mask"], spec, q_salience=qs, d_salience=ds,
          q_ids=case["q_ids"], d_ids=case["d_ids"], method=method))  # noqa: B023

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(
        case["q"], case["d"], case["q_salience"], case["d_salience"])
    for g in grads:
      assert np.all(np.isfinite(g)) and np.all(g == 0)


def test_da_with_small_eps_equals_top_k():
  case = make_case(6, 3, 5, 4, 8, saliences=True)
  for k in (3,):
    top = scores(case, f"top_k:{k}")
    for method in ("fast", "dense"):
      da = scores(case, f"da:k={k},eps=0.0001", method=method)
      np.testing.assert_allclose(da, top, atol=2e-3)


def test_alignment_matrix_rows():
  case = make_case(7, 1, 1, 4, 9, ties=True)
  s = similarity.similarity_matrix(case["q"][0], case["d"][0])
  m_valid = int(case["d_mask"][0].sum()) if case["d_mask"][0].any() else 0
  for spec, per_row in (("top_k:2", min(2, m_valid)), ("top_p:0.5", None)):
    a = np.asarray(alignment_lib.alignment_matrix(s, case["q_mask"][0], case["d_mask"][0], spec))
    assert set(np.unique(a)) <= {0.0, 1.0}
    if per_row is not None:
      np.testing.assert_array_equal(a.sum(-1), np.where(case["q_mask"][0], per_row, 0))
    assert np.all(a[:, ~case["d_mask"][0]] == 0)


# ---------------------------------------------------------------- transforms, gradients, dtypes

@pytest.mark.parametrize("spec,method,chunk_size", [
    ("top_k:1", "fast", 2), ("top_k:3", "fast", None), ("top_p:0.5", "fast", None),
    ("da:k=2,eps=0.3", "fast", None), ("coil", "fast", None), ("me_bert:3", "fast", None),
    ("cls", "fast", None), ("top_k:3", "dense", None), ("da:k=2,eps=0.3", "dense", None),
    pytest.param("da:k=2,eps=0.3", "fast", 2, marks=slow),
    pytest.param("top_k:3", "fast", 2, marks=slow),
    pytest.param("coil", "dense", None, marks=slow),
    pytest.param("me_bert:3", "dense", None, marks=slow),
    pytest.param("top_p:0.5", "dense", None, marks=slow)])
def test_check_grads(spec, method, chunk_size):
  case = make_case(8, 2, 3, 3, 6, saliences=True)
  # Positive saliences: with a single aligned pair (cls, me_bert, coil rows) the score jumps from
  # S to 0 when its weight reaches 0, as Eq. (1) says, and has no derivative there.
  for key in ("q_salience", "d_salience"):
    case[key] = 0.2 + case[key]
  with jax.enable_x64(True):
    f = jax.jit(lambda q, d, qs, ds: alignment_lib.align_scores(
        q, case["q_mask"], d, case["d_mask"], spec, q_salience=qs, d_salience=ds,
        q_ids=case["q_ids"], d_ids=case["d_ids"], method=method, chunk_size=chunk_size))
    args = tuple(jnp.asarray(case[key], jnp.float64)
                 for key in ("q", "d", "q_salience", "d_salience"))
    check_grads(f, args, order=1, modes=("fwd", "rev"), eps=1e-6, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec,chunk_size", [
    ("top_k:2", 2), ("da:k=2,eps=0.1", None),
    pytest.param("top_k:1", 2, marks=slow), pytest.param("top_p:0.4", 2, marks=slow),
    pytest.param("da:k=2,eps=0.1", 2, marks=slow)])
def test_fast_and_dense_gradients_agree(spec, chunk_size):
  case = make_case(9, 2, 5, 4, 7, saliences=True)
  grads = []
  for method in ("fast", "dense"):
    loss = lambda q, d, ds: jnp.sum(jnp.sin(alignment_lib.align_scores(  # noqa: E731
        q, case["q_mask"], d, case["d_mask"], spec, q_salience=case["q_salience"],
        d_salience=ds, method=method, chunk_size=chunk_size)))  # noqa: B023
    grads.append(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
        case["q"], case["d"], case["d_salience"]))
  for fast, dense in zip(*grads):
    np.testing.assert_allclose(fast, dense, atol=1e-5)


def test_vmap_over_an_extra_axis():
  case = make_case(10, 2, 3, 3, 5)
  batched = {key: np.stack([val, val[::-1]]) for key, val in case.items()}
  fn = lambda q, qm, d, dm: alignment_lib.align_scores(q, qm, d, dm, "top_k:2")  # noqa: E731
  got = jax.jit(jax.vmap(fn))(batched["q"], batched["q_mask"], batched["d"], batched["d_mask"])
  np.testing.assert_allclose(got[0], scores(case, "top_k:2"), atol=1e-6)
  flipped = {key: val[::-1] for key, val in case.items()}
  np.testing.assert_allclose(got[1], scores(flipped, "top_k:2"), atol=1e-6)


@pytest.mark.parametrize("spec", ["top_k:1", "top_k:2", "da:k=2,eps=0.002"])
def test_bfloat16_inputs(spec):
  case = make_case(12, 2, 4, 4, 6, saliences=True)
  f32 = scores(case, spec)
  low = {key: (val.astype(jnp.bfloat16) if val.dtype == np.float32 else val)
         for key, val in case.items()}
  got = scores(low, spec)
  assert got.dtype == np.float32 and np.all(np.isfinite(got))
  np.testing.assert_allclose(got, f32, atol=0.1)
  grads = jax.jit(jax.grad(lambda q, d: jnp.sum(alignment_lib.align_scores(
      q, low["q_mask"], d, low["d_mask"], spec, d_salience=low["d_salience"])),
      argnums=(0, 1)))(low["q"], low["d"])
  for g in grads:
    assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))


def test_chunking_bounds_memory_for_a_thousand_candidates():
  # Query of 32 tokens against K = 1000 candidates of 256 tokens, h = 128: the whole S would be
  # 32 MiB of float32; the chunked scorer compiles to a small fraction of that.
  q = jax.ShapeDtypeStruct((1, 32, 128), jnp.float32)
  qm = jax.ShapeDtypeStruct((1, 32), jnp.bool_)
  d = jax.ShapeDtypeStruct((1, 1000, 256, 128), jnp.float32)
  dm = jax.ShapeDtypeStruct((1, 1000, 256), jnp.bool_)
  for spec, method in itertools.product(("top_k:1", "top_k:4"), ("fast", "native")):
    compiled = _candidates_jit.lower(q, qm, d, dm, alignment=spec, method=method).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 8 * 2**20, (spec, method, temp)
  assert fast_align.default_chunk(1000, 256, 32) == 32  # [32, 256, 32] blocks of 1 MiB


# ---------------------------------------------------------------- compiled where defined

def test_direct_calls_share_one_compiled_program_per_alignment():
  case = make_case(13, 2, 3, 3, 5)
  args = (case["q"], case["q_mask"], case["d"], case["d_mask"])
  before = alignment_lib._align_scores._cache_size()
  first = alignment_lib.align_scores(*args, "top_k:2")
  for spec in ("top_k:2", " top_k:2 ", Alignment.parse("top_k:2")):
    np.testing.assert_array_equal(alignment_lib.align_scores(*args, spec), first)
  assert alignment_lib._align_scores._cache_size() == before + 1
  np.testing.assert_allclose(first, ref_of(case, "top_k:2"), atol=1e-5)
  with pytest.raises(ValueError, match="alignment spec must be a string"):
    alignment_lib.align_scores(*args, {"kind": "top_k"})
  with pytest.raises(ValueError, match="method must be one of"):
    alignment_lib.align_scores(*args, "top_k:2", method="triton")


def test_direct_call_under_grad_and_vmap():
  case = make_case(14, 2, 3, 3, 5)
  grad = jax.grad(lambda d: jnp.sum(alignment_lib.align_scores(
      case["q"], case["q_mask"], d, case["d_mask"], "top_k:2")))(case["d"])
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)
  per_query = jax.vmap(lambda q, qm: alignment_lib.align_scores(
      q[None], qm[None], case["d"], case["d_mask"], "top_k:2")[0])(case["q"], case["q_mask"])
  np.testing.assert_allclose(per_query, scores(case, "top_k:2"), atol=1e-6)


# ---------------------------------------------------------------- the Pallas kernel

PALLAS_SPECS = SPECS + ["top_p:0.6", "top_k:6"]  # top_k:6 takes the kernel's looped selection


@pytest.mark.parametrize("spec", PALLAS_SPECS)
@pytest.mark.parametrize("ties,saliences", [(False, False), (True, True)])
def test_pallas_matches_loops(spec, ties, saliences):
  # 11 documents in blocks of 8 (a padded second block), an empty document, ragged masks.
  case = make_case(15, 3, 11, 5, 9, ties=ties, saliences=saliences)
  np.testing.assert_allclose(scores(case, spec, method="pallas"), ref_of(case, spec), atol=1e-5)


@pytest.mark.parametrize("spec", ["top_k:2", "coil", "da:k=2,eps=0.05"])
def test_pallas_candidates_and_query_blocks(spec, monkeypatch):
  from aligner_jax.scoring import pallas_align
  monkeypatch.setattr(pallas_align, "ROWS_PER_STEP", 8)  # 2 queries of 4 tokens: 3 -> 2 blocks
  monkeypatch.setattr(pallas_align, "DOCS_PER_STEP", 2)
  jax.clear_caches()
  case = make_case(16, 3, 5, 4, 7, ties=True, saliences=True)
  np.testing.assert_allclose(scores(case, spec, method="pallas"), ref_of(case, spec), atol=1e-5)
  cand = {key: np.stack([val[:4], val[1:]]) for key, val in case.items()
          if key.startswith("d")}
  args = {key: val for key, val in cand.items() if key not in ("d", "d_mask")}
  got = _candidates_jit(case["q"][:2], case["q_mask"][:2], cand["d"], cand["d_mask"],
                        alignment=spec, q_salience=case["q_salience"][:2],
                        q_ids=case["q_ids"][:2], method="pallas", **args)
  for b in range(2):
    want = ref_scores(case["q"][b:b + 1], case["q_mask"][b:b + 1], cand["d"][b],
                      cand["d_mask"][b], spec, case["q_salience"][b:b + 1],
                      cand["d_salience"][b], case["q_ids"][b:b + 1], cand["d_ids"][b])[0]
    np.testing.assert_allclose(got[b], want, atol=1e-5)
  jax.clear_caches()


@pytest.mark.parametrize("spec", ["top_k:1", "top_k:3"])
def test_pallas_bfloat16_and_gradients_match_fast(spec):
  case = make_case(17, 2, 5, 4, 7, saliences=True)
  low = {key: (val.astype(jnp.bfloat16) if val.dtype == np.float32 else val)
         for key, val in case.items()}
  got = scores(low, spec, method="pallas")
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, scores(low, spec), atol=1e-5)
  grads = []
  for method in ("pallas", "fast"):
    loss = lambda q, d, ds, method=method: jnp.sum(jnp.sin(  # noqa: E731
        alignment_lib.align_scores(q, case["q_mask"], d, case["d_mask"], spec,
                                   q_salience=case["q_salience"], d_salience=ds, method=method)))
    grads.append(jax.grad(loss, argnums=(0, 1, 2))(case["q"], case["d"], case["d_salience"]))
  for pallas, fast in zip(*grads):
    np.testing.assert_allclose(pallas, fast, atol=1e-6)


def test_pallas_under_vmap():
  case = make_case(18, 2, 3, 3, 5)
  batched = {key: np.stack([val, val[::-1]]) for key, val in case.items()}
  fn = lambda q, qm, d, dm: alignment_lib.align_scores(  # noqa: E731
      q, qm, d, dm, "top_k:2", method="pallas")
  got = jax.vmap(fn)(batched["q"], batched["q_mask"], batched["d"], batched["d_mask"])
  np.testing.assert_allclose(got[0], ref_of(case, "top_k:2"), atol=1e-5)


def test_auto_picks_the_kernel_on_accelerators_only(monkeypatch):
  from aligner_jax.scoring import dispatch
  kw = dict(xla="fast", allowed=alignment_lib.METHODS, backends=dispatch.ALIGN_BACKENDS,
            name="align_scores")
  assert dispatch.resolve("auto", **kw) == "fast"  # this machine: CPU
  assert dispatch.resolve("dense", **kw) == "dense"
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert dispatch.resolve("auto", **kw) == "pallas"
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
  with mesh:
    assert dispatch.resolve("auto", **kw) == "fast"  # sharded inputs keep XLA's partitioning
  with jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)):
    assert dispatch.resolve("auto", **kw) == "pallas"


LOWERING = [("tpu", "tpu", "top_k:4"),
            pytest.param("tpu", "tpu", "da:k=2,eps=0.01", marks=slow),
            pytest.param("tpu", "tpu", "coil", marks=slow),
            ("gpu", "cuda", "top_k:1"),
            pytest.param("gpu", "cuda", "top_p:0.1", marks=slow)]


@pytest.mark.parametrize("backend,platform,spec", LOWERING)
def test_pallas_kernel_lowers_for_accelerators(backend, platform, spec, monkeypatch):
  """The kernel goes through Mosaic's (TPU) or Triton's (GPU) lowering rules without a device."""
  from jax import export
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  jax.clear_caches()  # programs traced for the CPU carry its (interpret) choices
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((3, 32, 128)), jnp.float32)
  d = jnp.asarray(rng.standard_normal((20, 180, 128)), jnp.bfloat16)
  qm, dm = jnp.ones((3, 32), bool), jnp.asarray(rng.random((20, 180)) < 0.8)
  ids = dict(q_ids=jnp.zeros((3, 32), jnp.int32), d_ids=jnp.zeros((20, 180), jnp.int32))
  fn = jax.jit(lambda q, d, ds: alignment_lib.align_scores(
      q, qm, d, dm, spec, d_salience=ds, method="pallas", **ids))
  triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
  exported = export.export(fn, platforms=[platform], disabled_checks=[triton])(
      q, d, jnp.ones((20, 180)))
  text = exported.mlir_module()
  assert ("tpu_custom_call" in text) if backend == "tpu" else ("triton" in text)
  jax.clear_caches()


@pytest.mark.parametrize("method,spec", [
    pytest.param("pallas", spec, marks=slow)
    for spec in ("top_k:1", "top_k:4", "top_p:0.05", "da:k=2,eps=0.01")] + [
    ("native", spec) for spec in ("top_k:1", "top_k:4", "top_p:0.05")])
def test_kernels_match_fast_at_benchmark_like_shapes(method, spec):
  if method == "native":
    from aligner_jax.scoring import native
    native.ALIGN.require()
  rng = np.random.default_rng(19)
  q = rng.standard_normal((2, 32, 64)).astype(np.float32)
  d = rng.standard_normal((2, 100, 128, 64)).astype(np.float32)
  qm, dm = rng.random((2, 32)) < 0.8, rng.random((2, 100, 128)) < 0.7
  ds = rng.random((2, 100, 128)).astype(np.float32)
  for kw in ({}, {"d_salience": ds}):
    want = _candidates_jit(q, qm, d, dm, alignment=spec, method="fast", **kw)
    got = _candidates_jit(q, qm, d, dm, alignment=spec, method=method, **kw)
    np.testing.assert_allclose(got, want, atol=2e-5)


# ---------------------------------------------------------------- the CPU kernel (XLA FFI)

NATIVE_SPECS = ["top_k:1", "top_k:2", "top_k:5", "top_k:32", "top_p:0.3", "top_p:1.0"]


@pytest.fixture(scope="module")
def built_kernel():
  """The kernel is built by `make install`; without it these tests fail with the reason."""
  from aligner_jax.scoring import native
  native.ALIGN.require()


@pytest.mark.parametrize("spec", NATIVE_SPECS)
@pytest.mark.parametrize("ties,saliences", [(False, False), (True, True), (True, False)])
def test_native_matches_loops(spec, ties, saliences, built_kernel):
  # 27 tokens: blocks of 6, 12 or 24 valid tokens (by vector width and panel size) and a
  # partial last one; an empty document.
  case = make_case(20, 3, 6, 5, 27, ties=ties, saliences=saliences)
  np.testing.assert_allclose(scores(case, spec, method="native"), ref_of(case, spec), atol=1e-5)


@pytest.mark.parametrize("num_q,n,h", [(5, 20, 37), (1, 70, 16), (3, 11, 16)])
def test_native_query_panels_and_widths(num_q, n, h, built_kernel):
  # 100 kept rows -> several panels (of 16 rows with AVX2, 64 with AVX-512) and a partial
  # last one; 70 rows of one query across panels; widths that are and are not multiples of the
  # vector width (converted rows, and float32 rows read in place).
  case = make_case(21, num_q, 4, n, 30, h=h, ties=True, saliences=True)
  for spec in ("top_k:1", "top_k:3"):
    np.testing.assert_allclose(scores(case, spec, method="native"), ref_of(case, spec),
                               atol=1e-5, err_msg=spec)


@settings
@hypothesis.given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 40), st.integers(1, 40),
                  st.integers(1, 40), st.sampled_from(["top_k:1", "top_k:3", "top_p:0.2"]),
                  st.booleans(), st.integers(0, 2**31 - 1))
def test_native_candidates_any_shape(built_kernel, num_q, k, n, m, h, spec, saliences, seed):
  case = make_case(seed, num_q, num_q * k, n, m, h=h, ties=seed % 2 == 0, saliences=saliences)
  reshape = lambda x: x.reshape(num_q, k, *x.shape[1:])  # noqa: E731
  extra = {}
  if saliences:
    extra = dict(q_salience=case["q_salience"], d_salience=reshape(case["d_salience"]))
  got = _candidates_jit(case["q"], case["q_mask"], reshape(case["d"]), reshape(case["d_mask"]),
                        alignment=spec, method="native", **extra)
  full = ref_of(case, spec)
  want = np.stack([full[b, b * k:(b + 1) * k] for b in range(num_q)])
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_native_low_precision_documents_and_gradients(dtype, built_kernel):
  case = make_case(22, 2, 5, 4, 19, h=20, saliences=True)
  low = dict(case, d=case["d"].astype(dtype))
  for spec in ("top_k:1", "top_k:3"):
    got = scores(low, spec, method="native")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, scores(low, spec, method="fast"), atol=1e-5)
    np.testing.assert_allclose(got, scores(case, spec, method="native"), atol=0.05)
  grads = []
  for method in ("native", "fast"):
    loss = lambda q, d, ds, method=method: jnp.sum(jnp.sin(  # noqa: E731
        alignment_lib.align_scores(q, case["q_mask"], d, case["d_mask"], "top_k:3",
                                   q_salience=case["q_salience"], d_salience=ds, method=method)))
    grads.append(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(low["q"], low["d"],
                                                            case["d_salience"]))
  for native_grad, fast_grad in zip(*grads):
    assert native_grad.dtype == fast_grad.dtype
    # The two forward passes sum in different orders (float32 rounding), which moves a
    # gradient by a few float32 ulps, or by one ulp of the documents' lower precision.
    eps = max(float(jnp.finfo(native_grad.dtype).eps), 1e-5)
    np.testing.assert_allclose(np.asarray(native_grad, np.float32),
                               np.asarray(fast_grad, np.float32), rtol=eps, atol=1e-6)


def test_native_under_vmap(built_kernel):
  case = make_case(23, 2, 3, 3, 5)
  batched = {key: np.stack([val, val[::-1]]) for key, val in case.items()}
  fn = lambda q, qm, d, dm: alignment_lib.align_scores(  # noqa: E731
      q, qm, d, dm, "top_k:2", method="native")
  got = jax.jit(jax.vmap(fn))(batched["q"], batched["q_mask"], batched["d"], batched["d_mask"])
  np.testing.assert_allclose(got[0], ref_of(case, "top_k:2"), atol=1e-5)
  flipped = {key: val[::-1] for key, val in case.items()}
  np.testing.assert_allclose(got[1], ref_of(flipped, "top_k:2"), atol=1e-5)


def test_auto_picks_the_cpu_kernel_where_it_computes_the_call(built_kernel):
  from aligner_jax.scoring import dispatch
  case = make_case(25, 2, 3, 3, 5)
  args = (case["q"], case["q_mask"], case["d"], case["d_mask"])
  prepare = lambda spec, *a: alignment_lib._prepare(  # noqa: E731
      "align_scores", spec, *a, None, None, "auto", lead=1)[1]
  assert prepare("top_k:1", *args) == dispatch.NATIVE
  assert prepare("top_p:0.5", *args) == dispatch.NATIVE
  for spec in ("da:k=2,eps=0.1", "cls", "me_bert:2"):
    assert prepare(spec, *args) == "fast", spec
  assert prepare("top_k:33", *args) == dispatch.NATIVE  # 5 tokens: at most 5 per row
  long = make_case(25, 2, 3, 3, 40)
  long_args = (long["q"], long["q_mask"], long["d"], long["d_mask"])
  assert prepare("top_k:33", *long_args) == "fast"
  with jax.enable_x64(True):
    wide = tuple(np.asarray(x, np.float64) if x.dtype == np.float32 else x for x in args)
    assert prepare("top_k:1", *wide) == "fast"
  with jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",)):
    assert prepare("top_k:1", *args) == "fast"
  with pytest.raises(ValueError, match="does not compute alignment da"):
    alignment_lib.align_scores(*args, "da:k=2,eps=0.1", method="native")
  with pytest.raises(ValueError, match="more than 32 entries"):
    alignment_lib.align_scores(*long_args, "top_k:33", method="native")


def test_missing_kernel_falls_back_once_or_fails_when_asked_for(monkeypatch, tmp_path):
  from absl import logging as absl_logging

  from aligner_jax.scoring import dispatch
  from aligner_jax.scoring import native
  built = native.ALIGN
  monkeypatch.setattr(native, "ALIGN", native.Library(
      str(tmp_path / "_align_cpu.so"), built.what, built.source, built.handlers, built.fallback))
  warnings = []
  monkeypatch.setattr(absl_logging, "warning", lambda *a: warnings.append(a[0] % a[1:]))
  case = make_case(26, 2, 3, 3, 5)
  args = (case["q"], case["q_mask"], case["d"], case["d_mask"])
  for _ in range(2):
    assert alignment_lib._prepare("align_scores", "top_k:1", *args, None, None, "auto",
                                  lead=1)[1] == "fast"
  assert len(warnings) == 1 and "not built" in warnings[0] and "XLA path" in warnings[0]
  with pytest.raises(RuntimeError, match="not built; run `make install`"):
    alignment_lib.align_scores(*args, "top_k:1", method=dispatch.NATIVE)
