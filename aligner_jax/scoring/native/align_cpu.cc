// Fused CPU kernel of the hard alignment scores (top_k:K, top_p:P, with or without saliences)
// behind the XLA FFI: similarity tile -> masked per-row selection -> Σ S⊙A / Σ A per query,
// the whole S never materialised. Semantics are those of aligner_jax/scoring/alignment.py.
//
// Layout. Work is G independent groups, each Bq queries of n tokens against C documents of m
// tokens (width h); leading batch dimensions (vmap) fold into G.
//   * Query rows: per group, the rows with a non-zero weight u_q (padding and zero-salience rows
//     contribute nothing) are packed once, transposed, into panels of up to 64 rows:
//     panel[k][v*16 + lane] = q[row v*16 + lane][k], zero beyond the last row or width.
//   * Documents: only valid tokens are visited, in index order, NT at a time. A block of NT
//     tokens is copied (converted to float32 from bfloat16 / float16) as [h/16][NT][16], so the
//     microkernel broadcasts every document value straight from memory at a compile-time offset
//     and keeps its NT x NV accumulators (NV = vectors of 16 query rows) in registers:
//     acc[t][v] += broadcast(d[t][k]) * panel[k][v].
//   * Selection runs on the accumulators, per query row, in the 16 lanes of a vector: the
//     KM largest values so far (KM >= max_count), kept sorted by an insertion network. Tokens
//     arrive in increasing index and a value only moves above a strictly smaller one, so equal
//     values keep the lower index first: ties go to the lower document index, as in the
//     reference. With document saliences the chosen tokens' weights travel with the values.
//   * Per row: num = Σ_{l<count} w_l·top_l and den = Σ_{l<count} w_l (w = 1 without saliences);
//     per query: Σ u_q·num / Σ u_q·den, 0 when the denominator is 0.
//   * Documents are shared among XLA's intra-op threads in chunks claimed from an atomic
//     counter; the calling thread works too and never waits for a task that has not started.
//
// Vectors are GCC vector extensions: built with -march=native they are AVX-512 registers on a
// machine that has it and pairs of AVX2 registers elsewhere.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "isa.h"

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
typedef uint16_t h16u __attribute__((vector_size(32), aligned(2)));
typedef uint32_t u16x __attribute__((vector_size(64)));
typedef _Float16 f16x __attribute__((vector_size(32), aligned(2)));

constexpr int kLanes = 16;
constexpr int kPanelRows = 64;  // query rows per panel: up to 4 vectors
constexpr int kDocsPerClaim = 4;

enum class DocType { kF32, kBF16, kF16 };

inline v16 load(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void store(float* p, v16 x) { *reinterpret_cast<v16u*>(p) = x; }
inline v16 splat(float x) { return v16{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
inline v16 vmax(v16 a, v16 b) { return a > b ? a : b; }
inline v16 vmin(v16 a, v16 b) { return a < b ? a : b; }

// Tokens per block for NV query vectors: NT·NV accumulators (24) plus NV panel vectors fit
// the 32 vector registers of AVX-512.
constexpr int TokensPerBlock(int nv) { return nv == 1 ? 24 : nv == 2 ? 12 : nv == 3 ? 8 : 6; }

// 16 consecutive values of one document token from `src` (count < 16: the rest are 0).
inline v16 LoadDoc(const void* src, DocType type, int64_t offset, int count) {
  if (count == kLanes) {
    switch (type) {
      case DocType::kF32:
        return load(static_cast<const float*>(src) + offset);
      case DocType::kBF16: {
        h16u raw = *reinterpret_cast<const h16u*>(static_cast<const uint16_t*>(src) + offset);
        u16x wide = __builtin_convertvector(raw, u16x) << 16;
        return (v16)wide;  // a same-size vector cast reinterprets the bits
      }
      case DocType::kF16: {
        f16x raw = *reinterpret_cast<const f16x*>(static_cast<const _Float16*>(src) + offset);
        return __builtin_convertvector(raw, v16);
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

// The selection state of one panel: the KM largest values per row (largest first) and, with
// saliences, their tokens' weights.
template <int NV, int KM>
struct State {
  v16 top[KM][NV];
  v16 w[KM][NV];
  void Reset() {
    for (int l = 0; l < KM; ++l)
      for (int v = 0; v < NV; ++v) {
        top[l][v] = splat(-std::numeric_limits<float>::infinity());
        w[l][v] = splat(0.0f);
      }
  }
};

// One block of nt <= NT tokens (packed [hv][NT][16]) against one panel (packed [hv·16][NV·16]):
// similarities into registers, then the selection update of every token in index order.
template <int NV, int KM, bool WEIGHTED>
void Block(const float* packed, int hv, int nt, const float* panel, const float* weights,
           State<NV, KM>& state) {
  constexpr int NT = TokensPerBlock(NV);
  v16 acc[NT][NV];
#pragma GCC unroll 32
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[t][v] = splat(0.0f);
  for (int c = 0; c < hv; ++c) {
    const float* doc = packed + c * NT * kLanes;
    const float* pq = panel + c * kLanes * NV * kLanes;
#pragma GCC unroll 16
    for (int kk = 0; kk < kLanes; ++kk) {
      v16 qv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) qv[v] = load(pq + (kk * NV + v) * kLanes);
#pragma GCC unroll 32
      for (int t = 0; t < NT; ++t) {
        v16 dt = splat(doc[t * kLanes + kk]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[t][v] += dt * qv[v];
      }
    }
  }
  v16 top[KM][NV];
  v16 w[KM][NV];
  for (int l = 0; l < KM; ++l)
    for (int v = 0; v < NV; ++v) {
      top[l][v] = state.top[l][v];
      if (WEIGHTED) w[l][v] = state.w[l][v];
    }
  for (int t = 0; t < nt; ++t) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      v16 x = acc[t][v];
      if (!WEIGHTED) {
        // The l-th largest of the old values and x is max(old l-th, min(old (l-1)-th, x)).
#pragma GCC unroll 32
        for (int l = KM - 1; l > 0; --l) top[l][v] = vmax(top[l][v], vmin(top[l - 1][v], x));
        top[0][v] = vmax(top[0][v], x);
      } else {
        v16 wt = splat(weights[t]);
#pragma GCC unroll 32
        for (int l = KM - 1; l > 0; --l) {
          // x enters at level l when it beats the old l-th value; the old (l-1)-th moves down
          // when x beats it too. Strict comparisons keep earlier (lower-index) ties above.
          auto beats_here = x > top[l][v];
          auto beats_above = x > top[l - 1][v];
          v16 entered = beats_here ? x : top[l][v];
          v16 entered_w = beats_here ? wt : w[l][v];
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
  std::vector<float> panels;   // [num_panels][hv·16][NV·16]
  int num_panels = 0;
};

struct Problem {
  int64_t groups, num_q, n, h, num_d, m;
  int64_t hv;  // h in vectors of 16, rounded up
  int nv;      // vectors of 16 rows per panel (the same for every panel of the call)
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
  const int64_t width = p.nv * kLanes;
  grp.num_panels = static_cast<int>((rows + width - 1) / width);
  grp.panels.assign(grp.num_panels * p.hv * kLanes * width, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = p.q + (g * p.num_q * p.n + grp.query[r]) * p.h;
    float* dst = grp.panels.data() + (r / width) * p.hv * kLanes * width + r % width;
    for (int64_t k = 0; k < p.h; ++k) dst[k * width] = src[k];
  }
  for (int32_t& row : grp.query) row /= static_cast<int32_t>(p.n);  // row -> its query
  return grp;
}

// Scores of documents [first, last) of the flattened (group, document) order.
template <int NV, int KM, bool WEIGHTED>
void ScoreDocs(const Problem& p, int64_t first, int64_t last, std::vector<float>& scratch) {
  constexpr int NT = TokensPerBlock(NV);
  const int64_t hv = p.hv;
  const int64_t width = NV * kLanes;
  scratch.resize(hv * NT * kLanes + p.m + NT + 2 * p.num_q);
  float* packed = scratch.data();
  float* weights = packed + hv * NT * kLanes;  // weights of the valid tokens, in order
  float* num_q = weights + p.m + NT;
  float* den_q = num_q + p.num_q;
  std::vector<int32_t> valid(p.m);
  std::vector<State<NV, KM>> states;
  alignas(64) float num_row[NV * kLanes];
  alignas(64) float den_row[NV * kLanes];
  const int64_t elem = p.doc_type == DocType::kF32 ? 4 : 2;
  for (int64_t item = first; item < last; ++item) {
    const int64_t g = item / p.num_d;
    const Group& grp = p.group[g];
    float* out = p.out + g * p.num_q * p.num_d + item % p.num_d;  // [g, b, c] at b = 0
    std::fill(num_q, num_q + p.num_q, 0.0f);
    std::fill(den_q, den_q + p.num_q, 0.0f);
    const int count = p.count[item];
    const uint8_t* mask = p.d_mask + item * p.m;
    int nvalid = 0;
    for (int64_t j = 0; j < p.m; ++j)
      if (mask[j]) valid[nvalid++] = static_cast<int32_t>(j);
    if (count > 0 && nvalid > 0 && grp.num_panels > 0) {
      if (WEIGHTED)
        for (int t = 0; t < nvalid; ++t) weights[t] = p.u_d[item * p.m + valid[t]];
      states.resize(grp.num_panels);
      for (auto& s : states) s.Reset();
      const char* doc = static_cast<const char*>(p.d) + item * p.m * p.h * elem;
      for (int t0 = 0; t0 < nvalid; t0 += NT) {
        const int nt = std::min<int>(NT, nvalid - t0);
        for (int t = 0; t < NT; ++t) {
          for (int64_t c = 0; c < hv; ++c) {
            const int64_t k0 = c * kLanes;
            const int take = t < nt ? static_cast<int>(std::min<int64_t>(kLanes, p.h - k0)) : 0;
            v16 x = take ? LoadDoc(doc, p.doc_type, valid[t0 + t] * p.h + k0, take) : splat(0);
            store(packed + (c * NT + t) * kLanes, x);
          }
        }
        for (int panel = 0; panel < grp.num_panels; ++panel)
          Block<NV, KM, WEIGHTED>(packed, static_cast<int>(hv), nt,
                                  grp.panels.data() + panel * hv * kLanes * width,
                                  weights + t0, states[panel]);
      }
      const int64_t rows = static_cast<int64_t>(grp.query.size());
      for (int panel = 0; panel < grp.num_panels; ++panel) {
        const State<NV, KM>& s = states[panel];
        for (int v = 0; v < NV; ++v) {
          v16 num = splat(0.0f), den = splat(0.0f);
          for (int l = 0; l < count && l < KM; ++l) {
            num += WEIGHTED ? s.w[l][v] * s.top[l][v] : s.top[l][v];
            if (WEIGHTED) den += s.w[l][v];
          }
          if (!WEIGHTED) den = splat(static_cast<float>(count));
          store(num_row + v * kLanes, num);
          store(den_row + v * kLanes, den);
        }
        const int64_t base = panel * width;
        for (int64_t r = 0; r < width && base + r < rows; ++r) {
          const float u = grp.weight[base + r];
          num_q[grp.query[base + r]] += u * num_row[r];
          den_q[grp.query[base + r]] += u * den_row[r];
        }
      }
    }
    for (int64_t b = 0; b < p.num_q; ++b)
      out[b * p.num_d] = den_q[b] > 0.0f ? num_q[b] / den_q[b] : 0.0f;
  }
}

using ScoreFn = void (*)(const Problem&, int64_t, int64_t, std::vector<float>&);

template <int NV, int KM>
ScoreFn PickWeighted(bool weighted) {
  return weighted ? &ScoreDocs<NV, KM, true> : &ScoreDocs<NV, KM, false>;
}

template <int NV>
ScoreFn PickCount(int max_count, bool weighted) {
  if (max_count <= 1) return PickWeighted<NV, 1>(weighted);
  if (max_count <= 2) return PickWeighted<NV, 2>(weighted);
  if (max_count <= 4) return PickWeighted<NV, 4>(weighted);
  if (max_count <= 8) return PickWeighted<NV, 8>(weighted);
  if (max_count <= 16) return PickWeighted<NV, 16>(weighted);
  return PickWeighted<NV, 32>(weighted);
}

ScoreFn Pick(int nv, int max_count, bool weighted) {
  switch (nv) {
    case 1: return PickCount<1>(max_count, weighted);
    case 2: return PickCount<2>(max_count, weighted);
    case 3: return PickCount<3>(max_count, weighted);
    default: return PickCount<4>(max_count, weighted);
  }
}

// Work shared by the calling thread and up to `extra` pool tasks. Tasks that start after all
// chunks are claimed find nothing to do; the shared state outlives the call for them.
struct Shared {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t total = 0;
  ScoreFn fn = nullptr;
  Problem problem;
};

void Work(Shared& s) {
  std::vector<float> scratch;
  for (;;) {
    const int64_t start = s.next.fetch_add(kDocsPerClaim);
    if (start >= s.total) return;
    const int64_t end = std::min(s.total, start + kDocsPerClaim);
    s.fn(s.problem, start, end, scratch);
    s.done.fetch_add(end - start);
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

  // One panel width for the call: the fewest vectors that hold every group's kept rows.
  int64_t most_rows = 0;
  for (int64_t g = 0; g < p.groups; ++g) {
    int64_t rows = 0;
    for (int64_t r = 0; r < p.num_q * p.n; ++r) rows += p.u_q[g * p.num_q * p.n + r] != 0.0f;
    most_rows = std::max(most_rows, rows);
  }
  p.nv = static_cast<int>(std::clamp<int64_t>((most_rows + kLanes - 1) / kLanes, 1,
                                              kPanelRows / kLanes));
  p.group.reserve(p.groups);
  for (int64_t g = 0; g < p.groups; ++g) p.group.push_back(PackGroup(p, g));
  shared->total = p.groups * p.num_d;
  shared->fn = Pick(p.nv, p.max_count, p.weighted);

  const int64_t chunks = (shared->total + kDocsPerClaim - 1) / kDocsPerClaim;
  // No more workers than cores: XLA's pool may hold more threads than the machine has.
  const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t extra = std::min({pool.num_threads(), cores, chunks}) - 1;
  for (int64_t i = 0; i < extra; ++i) pool.Schedule([shared] { Work(*shared); });
  Work(*shared);
  while (shared->done.load() < shared->total) std::this_thread::yield();
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
