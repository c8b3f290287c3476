// Fused CPU kernel of the hard alignment scores (top_k:K, top_p:P, with or without saliences)
// behind the XLA FFI: similarity tile -> masked per-row selection -> Σ S⊙A / Σ A per query,
// the whole S never materialised. Semantics are those of aligner_jax/scoring/alignment.py.
//
// Vectors. L = kLanes floats per vector register and the microkernel `MultiplyAdd` come from
// simd.h: every blocking size below follows from L and the register count, so a -march=native
// build gets a microkernel that fits its own register file.
//
// Layout. Work is G independent groups, each Bq queries of n tokens against C documents of m
// tokens (width h); leading batch dimensions (vmap) fold into G.
//   * Query rows: per group, the rows with a non-zero weight u_q (padding and zero-salience rows
//     contribute nothing) are packed once, transposed, into panels of NV·L rows:
//     panel[k][v*L + lane] = q[row v*L + lane][k], zero beyond the last row or width. NV is
//     kMaxPanelVectors except for the last panel, which has the fewest vectors that hold the
//     remaining rows.
//   * Documents: only valid tokens are visited, in index order, NT at a time, each through a
//     pointer to its row of h float32 values: a float32 document whose width is a multiple of
//     L is read in place; other documents (bfloat16, float16, or a ragged width) are first
//     converted into zero-padded float32 rows, once per document. The microkernel broadcasts
//     every document value from its row and keeps its NT x NV accumulators in registers:
//     acc[t][v] += broadcast(d[t][k]) * panel[k][v] (AVX2: 6 tokens x 16 rows, or 12 tokens x
//     8 rows).
//     Each query panel runs over all of a document's blocks before the next panel (the panel
//     stays in L1), and the next document's valid rows are prefetched into L2 meanwhile.
//   * Selection runs on the accumulators, per query row, in the L lanes of a vector: the
//     KM largest values so far (KM >= max_count), kept sorted by an insertion network. Tokens
//     arrive in increasing index and a value only moves above a strictly smaller one, so equal
//     values keep the lower index first: ties go to the lower document index, as in the
//     reference. With document saliences the chosen tokens' weights travel with the values.
//     The last, partial block's missing tokens are -inf, which never enters.
//   * Per row: num = Σ_{l<count} w_l·top_l and den = Σ_{l<count} w_l (w = 1 without saliences);
//     per query: Σ u_q·num / Σ u_q·den, 0 when the denominator is 0.
//   * Documents are shared among XLA's intra-op threads in chunks claimed from an atomic
//     counter (parallel.h); the calling thread works too and never waits for a task that has
//     not started.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "isa.h"
#include "parallel.h"
#include "simd.h"

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace aligner_native;  // NOLINT: the kernels' shared vocabulary (simd.h, parallel.h)

typedef uint16_t h16u __attribute__((vector_size(2 * kLanes), aligned(2)));
typedef uint32_t u32x __attribute__((vector_size(4 * kLanes)));
typedef _Float16 f16x __attribute__((vector_size(2 * kLanes), aligned(2)));

constexpr int kDocsPerClaim = 2;  // fine enough to balance 100 documents over the cores

enum class DocType { kF32, kBF16, kF16 };

// kLanes consecutive values of one document token from `src` (count < kLanes: the rest
// are 0).
inline vf LoadDoc(const void* src, DocType type, int64_t offset, int count) {
  if (count == kLanes) {
    switch (type) {
      case DocType::kF32:
        return load(static_cast<const float*>(src) + offset);
      case DocType::kBF16: {
        h16u raw = *reinterpret_cast<const h16u*>(static_cast<const uint16_t*>(src) + offset);
        u32x wide = __builtin_convertvector(raw, u32x) << 16;
        return (vf)wide;  // a same-size vector cast reinterprets the bits
      }
      case DocType::kF16: {
        f16x raw = *reinterpret_cast<const f16x*>(static_cast<const _Float16*>(src) + offset);
        return __builtin_convertvector(raw, vf);
      }
    }
  }
  alignas(64) float tmp[kLanes] = {};
  for (int i = 0; i < count; ++i) {
    switch (type) {
      case DocType::kF32:
        tmp[i] = static_cast<const float*>(src)[offset + i];
        break;
      case DocType::kBF16: {
        uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(src)[offset + i]) << 16;
        std::memcpy(&tmp[i], &bits, sizeof(bits));
        break;
      }
      case DocType::kF16:
        tmp[i] = static_cast<float>(static_cast<const _Float16*>(src)[offset + i]);
        break;
    }
  }
  return load(tmp);
}

// Valid tokens `token[0..nvalid)` of one document of type T copied as float32 rows of hv·L
// values (zero beyond h) to `dst`, for documents the microkernel cannot read in place.
template <DocType T>
void ConvertRowsOf(const void* doc, const int32_t* token, int nvalid, int64_t h, int64_t hv,
                   float* dst) {
  const int64_t full = h / kLanes;  // whole vectors per token: one load / convert each
  for (int i = 0; i < nvalid; ++i, dst += hv * kLanes) {
    const int64_t base = token[i] * h;
    for (int64_t c = 0; c < full; ++c)
      store(dst + c * kLanes, LoadDoc(doc, T, base + c * kLanes, kLanes));
    if (full < hv)
      store(dst + full * kLanes,
            LoadDoc(doc, T, base + full * kLanes, static_cast<int>(h - full * kLanes)));
  }
}

void ConvertRows(const void* doc, DocType type, const int32_t* token, int nvalid, int64_t h,
                 int64_t hv, float* dst) {
  switch (type) {
    case DocType::kF32: return ConvertRowsOf<DocType::kF32>(doc, token, nvalid, h, hv, dst);
    case DocType::kBF16: return ConvertRowsOf<DocType::kBF16>(doc, token, nvalid, h, hv, dst);
    case DocType::kF16: return ConvertRowsOf<DocType::kF16>(doc, token, nvalid, h, hv, dst);
  }
}

// The selection state of one panel: the KM largest values per row (largest first) and, with
// saliences, their tokens' weights.
template <int NV, int KM>
struct State {
  vf top[KM][NV];
  vf w[KM][NV];
  void Reset() {
    for (int l = 0; l < KM; ++l)
      for (int v = 0; v < NV; ++v) {
        top[l][v] = splat(-std::numeric_limits<float>::infinity());
        w[l][v] = splat(0.0f);
      }
  }
};

// One block of 1 <= nt <= NT tokens (`rows[t]`: hv·L float32 values of token t; the rows past
// nt are zeros) against one panel (packed [hv·L][NV·L]): similarities into registers, then the
// selection update of every token in index order.
// Not inlined: inlined into ScoreDocs, GCC's register allocation of the microkernel got worse.
template <int NV, int KM, bool WEIGHTED>
__attribute__((noinline)) void Block(const float* const* rows, int hv, int nt,
                                     const float* panel, const float* weights,
                                     State<NV, KM>& state) {
  constexpr int NT = RowsPerTile(NV);
  vf acc[NT][NV];
  Multiply<NT, NV>(rows, static_cast<int64_t>(hv) * kLanes, panel, acc);
  if (nt < NT) {
    // Tokens beyond the last valid one: -inf never enters the selection.
#pragma GCC unroll 32
    for (int t = 1; t < NT; ++t)
      if (t >= nt)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[t][v] = splat(-std::numeric_limits<float>::infinity());
  }
  vf top[KM][NV];
  vf w[KM][NV];
  for (int l = 0; l < KM; ++l)
    for (int v = 0; v < NV; ++v) {
      top[l][v] = state.top[l][v];
      if (WEIGHTED) w[l][v] = state.w[l][v];
    }
  // Unrolled over all NT tokens so that every accumulator index is a constant (a loop to a
  // run-time count would index `acc` in memory and keep it out of registers).
#pragma GCC unroll 32
  for (int t = 0; t < NT; ++t) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      vf x = acc[t][v];
      if (!WEIGHTED) {
        // The l-th largest of the old values and x is max(old l-th, min(old (l-1)-th, x)).
#pragma GCC unroll 32
        for (int l = KM - 1; l > 0; --l) top[l][v] = vmax(top[l][v], vmin(top[l - 1][v], x));
        top[0][v] = vmax(top[0][v], x);
      } else {
        vf wt = splat(weights[t]);
#pragma GCC unroll 32
        for (int l = KM - 1; l > 0; --l) {
          // x enters at level l when it beats the old l-th value; the old (l-1)-th moves down
          // when x beats it too. Strict comparisons keep earlier (lower-index) ties above.
          auto beats_here = x > top[l][v];
          auto beats_above = x > top[l - 1][v];
          vf entered = beats_here ? x : top[l][v];
          vf entered_w = beats_here ? wt : w[l][v];
          top[l][v] = beats_above ? top[l - 1][v] : entered;
          w[l][v] = beats_above ? w[l - 1][v] : entered_w;
        }
        auto beats_first = x > top[0][v];
        top[0][v] = beats_first ? x : top[0][v];
        w[0][v] = beats_first ? wt : w[0][v];
      }
    }
  }
  for (int l = 0; l < KM; ++l)
    for (int v = 0; v < NV; ++v) {
      state.top[l][v] = top[l][v];
      if (WEIGHTED) state.w[l][v] = w[l][v];
    }
}

// Query rows of one group with a non-zero weight, packed into panels (see the file comment).
struct Group {
  std::vector<int32_t> query;  // owner query of each kept row
  std::vector<float> weight;   // u_q of each kept row
  std::vector<float> panels;   // panel after panel, each [hv·L][nv·L]
  std::vector<int> panel_nv;   // vectors of L rows of each panel
  std::vector<int64_t> panel_offset;  // first float of each panel in `panels`
  std::vector<int64_t> panel_row;     // first kept row of each panel
};

struct Problem {
  int64_t groups, num_q, n, h, num_d, m;
  int64_t hv;  // h in vectors of L, rounded up
  int max_count;
  bool weighted;
  const float* q;
  const float* u_q;
  const void* d;
  DocType doc_type;
  const uint8_t* d_mask;
  const float* u_d;
  const int32_t* count;
  float* out;
  std::vector<Group> group;
};

// Panels of kMaxPanelVectors vectors while more rows remain than one holds, then one panel of
// the fewest vectors that hold the rest (24 rows with AVX2: 16 + 8, not 16 + 16).
Group PackGroup(const Problem& p, int64_t g) {
  Group grp;
  for (int64_t b = 0; b < p.num_q; ++b)
    for (int64_t i = 0; i < p.n; ++i) {
      float u = p.u_q[(g * p.num_q + b) * p.n + i];
      if (u != 0.0f) {
        grp.query.push_back(static_cast<int32_t>(b * p.n + i));
        grp.weight.push_back(u);
      }
    }
  const int64_t rows = static_cast<int64_t>(grp.query.size());
  int64_t size = 0;
  for (int64_t row = 0; row < rows;) {
    const int nv = static_cast<int>(
        std::min<int64_t>(kMaxPanelVectors, (rows - row + kLanes - 1) / kLanes));
    grp.panel_nv.push_back(nv);
    grp.panel_offset.push_back(size);
    grp.panel_row.push_back(row);
    size += p.hv * kLanes * nv * kLanes;
    row += nv * kLanes;
  }
  grp.panels.assign(size, 0.0f);
  for (size_t panel = 0; panel < grp.panel_nv.size(); ++panel) {
    const int64_t width = grp.panel_nv[panel] * kLanes;
    const int64_t row0 = grp.panel_row[panel];
    for (int64_t r = row0; r < std::min(rows, row0 + width); ++r) {
      const float* src = p.q + (g * p.num_q * p.n + grp.query[r]) * p.h;
      float* dst = grp.panels.data() + grp.panel_offset[panel] + (r - row0);
      for (int64_t k = 0; k < p.h; ++k) dst[k * width] = src[k];
    }
  }
  for (int32_t& row : grp.query) row /= static_cast<int32_t>(p.n);  // row -> its query
  return grp;
}

// Fetches a document's valid rows into L2 a slice at a time (`Step` after each block of the
// current document), instead of the first panel's loads reading them from DRAM with the FMA
// units waiting.
class Prefetcher {
 public:
  // `rows`: the next document's valid rows, `row_bytes` long each; `steps`: calls to Step.
  void Start(std::vector<const char*>* rows, int num_rows, int64_t row_bytes, int64_t steps) {
    rows_ = rows;
    lines_per_row_ = (row_bytes + 63) / 64;
    total_ = num_rows * lines_per_row_;
    per_step_ = (total_ + steps - 1) / std::max<int64_t>(steps, 1);
    done_ = 0;
  }
  void Step() {
    const int64_t stop = std::min(total_, done_ + per_step_);
    for (; done_ < stop; ++done_)
      __builtin_prefetch((*rows_)[done_ / lines_per_row_] + 64 * (done_ % lines_per_row_), 0,
                         2);
  }

 private:
  std::vector<const char*>* rows_ = nullptr;
  int64_t lines_per_row_ = 0, total_ = 0, per_step_ = 0, done_ = 0;
};

// One panel of NV vectors over all `nvalid` rows of a document (blocks of NT); adds
// Σ u_q·num and Σ u_q·den of its rows to their queries.
template <int NV, int KM, bool WEIGHTED>
void RunPanel(const Group& grp, int panel, int64_t hv, const float* const* rows, int nvalid,
              const float* weights, int count, Prefetcher& prefetch, float* num_q,
              float* den_q) {
  constexpr int NT = RowsPerTile(NV);
  constexpr int64_t width = NV * kLanes;
  State<NV, KM> s;
  s.Reset();
  const float* panel_data = grp.panels.data() + grp.panel_offset[panel];
  for (int t0 = 0; t0 < nvalid; t0 += NT) {
    Block<NV, KM, WEIGHTED>(rows + t0, static_cast<int>(hv), std::min(NT, nvalid - t0),
                            panel_data, weights + t0, s);
    prefetch.Step();
  }
  alignas(64) float num_row[width];
  alignas(64) float den_row[width];
  for (int v = 0; v < NV; ++v) {
    vf num = splat(0.0f), den = splat(0.0f);
    for (int l = 0; l < count && l < KM; ++l) {
      num += WEIGHTED ? s.w[l][v] * s.top[l][v] : s.top[l][v];
      if (WEIGHTED) den += s.w[l][v];
    }
    if (!WEIGHTED) den = splat(static_cast<float>(count));
    store(num_row + v * kLanes, num);
    store(den_row + v * kLanes, den);
  }
  const int64_t base = grp.panel_row[panel];
  const int64_t rows_kept = static_cast<int64_t>(grp.query.size());
  for (int64_t r = 0; r < width && base + r < rows_kept; ++r) {
    const float u = grp.weight[base + r];
    num_q[grp.query[base + r]] += u * num_row[r];
    den_q[grp.query[base + r]] += u * den_row[r];
  }
}

template <int KM, bool WEIGHTED, int NV = 1>
void DispatchPanel(int nv, const Group& grp, int panel, int64_t hv, const float* const* rows,
                   int nvalid, const float* weights, int count, Prefetcher& prefetch,
                   float* num_q, float* den_q) {
  if constexpr (NV < kMaxPanelVectors) {
    if (nv > NV)
      return DispatchPanel<KM, WEIGHTED, NV + 1>(nv, grp, panel, hv, rows, nvalid, weights,
                                                 count, prefetch, num_q, den_q);
  }
  RunPanel<NV, KM, WEIGHTED>(grp, panel, hv, rows, nvalid, weights, count, prefetch, num_q,
                             den_q);
}

// The valid tokens of document `item`: their indices into `valid`, returns how many.
int ValidTokens(const Problem& p, int64_t item, std::vector<int32_t>& valid) {
  const uint8_t* mask = p.d_mask + item * p.m;
  int nvalid = 0;
  for (int64_t j = 0; j < p.m; ++j)
    if (mask[j]) valid[nvalid++] = static_cast<int32_t>(j);
  return nvalid;
}

// Scores of documents [first, last) of the flattened (group, document) order; `after` is the
// first document this thread computes next (-1: none), prefetched while `last - 1` is. The
// microkernel reads a float32 document's valid tokens in place through one pointer per token
// (no copy when h is a multiple of L); other documents are converted once into rows. Each query
// panel then runs over every block of the document: the panel being read stays in L1 however
// many panels the group has, and its selection state is a local.
template <int KM, bool WEIGHTED>
void ScoreDocs(const Problem& p, int64_t first, int64_t last, int64_t after,
               std::vector<float>& scratch) {
  constexpr int kMaxTokens = RowsPerTile(1);  // the longest block
  const int64_t hv = p.hv;
  const int64_t row_size = hv * kLanes;
  const bool in_place = p.doc_type == DocType::kF32 && p.h == row_size;
  const int64_t converted_size = in_place ? 0 : p.m * row_size;
  scratch.assign(converted_size + row_size + p.m + kMaxTokens + 2 * p.num_q, 0.0f);
  float* converted = scratch.data();
  const float* zeros = converted + converted_size;  // the rows past the last valid token
  float* weights = converted + converted_size + row_size;  // of the valid tokens, in order
  float* num_q = weights + p.m + kMaxTokens;
  float* den_q = num_q + p.num_q;
  const int64_t elem = p.doc_type == DocType::kF32 ? 4 : 2;
  std::vector<int32_t> valid(p.m), next_valid(p.m);
  std::vector<const float*> rows(p.m + kMaxTokens, zeros);
  std::vector<const char*> next_rows(p.m);
  Prefetcher prefetch;
  int nvalid = first < last ? ValidTokens(p, first, valid) : 0;
  for (int64_t item = first; item < last; ++item) {
    const int64_t g = item / p.num_d;
    const Group& grp = p.group[g];
    float* out = p.out + g * p.num_q * p.num_d + item % p.num_d;  // [g, b, c] at b = 0
    std::fill(num_q, num_q + p.num_q, 0.0f);
    std::fill(den_q, den_q + p.num_q, 0.0f);
    const int count = p.count[item];
    const int64_t following = item + 1 < last ? item + 1 : after;
    const int next_nvalid = following >= 0 ? ValidTokens(p, following, next_valid) : 0;
    for (int t = 0; t < next_nvalid; ++t)
      next_rows[t] = static_cast<const char*>(p.d) + (following * p.m + next_valid[t]) * p.h * elem;
    const int num_panels = static_cast<int>(grp.panel_nv.size());
    if (count > 0 && nvalid > 0 && num_panels > 0) {
      if (WEIGHTED)
        for (int t = 0; t < nvalid; ++t) weights[t] = p.u_d[item * p.m + valid[t]];
      const char* doc = static_cast<const char*>(p.d) + item * p.m * p.h * elem;
      if (in_place) {
        for (int t = 0; t < nvalid; ++t)
          rows[t] = reinterpret_cast<const float*>(doc) + valid[t] * p.h;
      } else {
        ConvertRows(doc, p.doc_type, valid.data(), nvalid, p.h, hv, converted);
        for (int t = 0; t < nvalid; ++t) rows[t] = converted + t * row_size;
      }
      for (int t = nvalid; t < nvalid + kMaxTokens; ++t) rows[t] = zeros;
      int64_t steps = 0;
      for (int nv : grp.panel_nv) steps += (nvalid + RowsPerTile(nv) - 1) / RowsPerTile(nv);
      prefetch.Start(&next_rows, next_nvalid, p.h * elem, steps);
      for (int panel = 0; panel < num_panels; ++panel)
        DispatchPanel<KM, WEIGHTED>(grp.panel_nv[panel], grp, panel, hv, rows.data(), nvalid,
                                    weights, count, prefetch, num_q, den_q);
    }
    for (int64_t b = 0; b < p.num_q; ++b)
      out[b * p.num_d] = den_q[b] > 0.0f ? num_q[b] / den_q[b] : 0.0f;
    std::swap(valid, next_valid);
    nvalid = next_nvalid;
  }
}

using ScoreFn = void (*)(const Problem&, int64_t, int64_t, int64_t, std::vector<float>&);

template <int KM>
ScoreFn PickWeighted(bool weighted) {
  return weighted ? &ScoreDocs<KM, true> : &ScoreDocs<KM, false>;
}

ScoreFn Pick(int max_count, bool weighted) {
  if (max_count <= 1) return PickWeighted<1>(weighted);
  if (max_count <= 2) return PickWeighted<2>(weighted);
  if (max_count <= 4) return PickWeighted<4>(weighted);
  if (max_count <= 8) return PickWeighted<8>(weighted);
  if (max_count <= 16) return PickWeighted<16>(weighted);
  return PickWeighted<32>(weighted);
}

struct Shared {
  Claims claims;  // documents of the flattened (group, document) order
  ScoreFn fn = nullptr;
  Problem problem;
};

// Each chunk is claimed one chunk ahead, so that its first document can be prefetched while the
// last one of the chunk before is computed.
void Work(Shared& s) {
  std::vector<float> scratch;
  int64_t start = s.claims.Claim();
  while (start < s.claims.total) {
    const int64_t following = s.claims.Claim();
    s.fn(s.problem, start, s.claims.End(start), following < s.claims.total ? following : -1,
         scratch);
    s.claims.Finish(start);
    start = following;
  }
}

constexpr int kMaxCount = 32;

ffi::Error AlignScoresImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                           ffi::Buffer<ffi::F32> u_q, ffi::AnyBuffer d, ffi::AnyBuffer d_mask,
                           ffi::Buffer<ffi::F32> u_d, ffi::Buffer<ffi::S32> count,
                           ffi::ResultBuffer<ffi::F32> out, int64_t max_count, int32_t weighted) {
  auto qd = q.dimensions();
  auto dd = d.dimensions();
  if (qd.size() < 3 || dd.size() < 3)
    return ffi::Error::InvalidArgument("align_cpu: q must be [..., Bq, n, h], d [..., C, m, h]");
  if (max_count < 1 || max_count > kMaxCount)
    return ffi::Error::InvalidArgument("align_cpu: max_count must be in [1, 32], got " +
                                       std::to_string(max_count));
  auto shared = std::make_shared<Shared>();
  Problem& p = shared->problem;
  p.num_q = qd[qd.size() - 3];
  p.n = qd[qd.size() - 2];
  p.h = qd[qd.size() - 1];
  p.num_d = dd[dd.size() - 3];
  p.m = dd[dd.size() - 2];
  if (dd[dd.size() - 1] != p.h)
    return ffi::Error::InvalidArgument("align_cpu: q and d widths differ");
  const int64_t per_group = p.num_q * p.n * p.h;
  p.groups = per_group == 0 ? 0 : static_cast<int64_t>(q.element_count()) / per_group;
  if (static_cast<int64_t>(d.element_count()) != p.groups * p.num_d * p.m * p.h ||
      static_cast<int64_t>(count.element_count()) != p.groups * p.num_d ||
      static_cast<int64_t>(d_mask.element_count()) != p.groups * p.num_d * p.m ||
      static_cast<int64_t>(u_q.element_count()) != p.groups * p.num_q * p.n)
    return ffi::Error::InvalidArgument("align_cpu: inputs disagree on the number of groups");
  p.weighted = weighted != 0;
  if (p.weighted && static_cast<int64_t>(u_d.element_count()) != p.groups * p.num_d * p.m)
    return ffi::Error::InvalidArgument("align_cpu: u_d must be shaped like d_mask");
  switch (d.element_type()) {
    case ffi::DataType::F32: p.doc_type = DocType::kF32; break;
    case ffi::DataType::BF16: p.doc_type = DocType::kBF16; break;
    case ffi::DataType::F16: p.doc_type = DocType::kF16; break;
    default:
      return ffi::Error::InvalidArgument("align_cpu: d must be float32, bfloat16 or float16");
  }
  if (ffi::ByteWidth(d_mask.element_type()) != 1)
    return ffi::Error::InvalidArgument("align_cpu: d_mask must be bool or uint8");
  p.max_count = static_cast<int>(max_count);
  p.hv = (p.h + kLanes - 1) / kLanes;
  p.q = q.typed_data();
  p.u_q = u_q.typed_data();
  p.d = d.untyped_data();
  p.d_mask = static_cast<const uint8_t*>(d_mask.untyped_data());
  p.u_d = u_d.typed_data();
  p.count = count.typed_data();
  p.out = out->typed_data();

  p.group.reserve(p.groups);
  for (int64_t g = 0; g < p.groups; ++g) p.group.push_back(PackGroup(p, g));
  shared->claims.total = p.groups * p.num_d;
  shared->claims.chunk = kDocsPerClaim;
  shared->fn = Pick(p.max_count, p.weighted);
  RunShared(pool, shared->claims, [shared] { Work(*shared); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlignScoresCpu, AlignScoresImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q [..., Bq, n, h]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // u_q [..., Bq, n]
                                  .Arg<ffi::AnyBuffer>()         // d [..., C, m, h]
                                  .Arg<ffi::AnyBuffer>()         // d_mask [..., C, m]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // u_d [..., C, m] or [0]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // count [..., C]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // scores [..., Bq, C]
                                  .Attr<int64_t>("max_count")
                                  .Attr<int32_t>("weighted"));

// The instruction-set extensions this build was compiled for, checked against the running
// CPU before the kernel is registered (a build copied to an older CPU would fault otherwise).
extern "C" const char* aligner_required_isa() { return ALIGNER_REQUIRED_ISA; }
