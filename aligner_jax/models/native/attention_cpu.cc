// The encoders' self-attention on the CPU behind the XLA FFI, fused:
//   out[b, i, h] = Σ_j softmax_j(q[b, i, h] · k[b, j, h] + bias[b, j]) · v[b, j, h], float32,
// the weights never leaving the core's caches. Semantics are those of
// aligner_jax/models/common.py's attention_weights + attend with a key bias.
//
// Shapes: q, k, v [B, L, H, D] as the projections leave them (no transposes), bias [B, L] (0 on
// real keys, a large negative value on padding), out [B, L, H, D].
//
// Work is the B·H (batch, head) pairs, claimed by the threads (parallel.h). Per pair
// (vectors and the microkernel from ../../scoring/native/simd.h, panels of W = 16 columns:
// AVX2 6 rows x 16 columns, AVX-512 24 x 16):
//   * k is packed transposed into panels of W keys, kt[p][d][c] = k[b, W·p + c, h, d], and v
//     into panels of W of its D columns, vp[p][j][c] = v[b, j, h, W·p + c] (zero past D).
//   * Query rows go NT at a time, read in place. Their logits against every key panel fill a
//     [NT][L'] scratch (L' = L rounded up to W); then per row: + bias, max, e^(s - max)
//     (NT rows' vectors at a time, independent chains), the sum; padding columns past L are
//     set to 0. The NT rows of weights times each v panel (depth L) give NT x W outputs,
//     scaled by 1 / sum as they are stored.
//   * A row whose keys are all padding gets equal weights (every logit is the same large
//     negative number), as jax.nn.softmax gives it.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "../../scoring/native/isa.h"
#include "../../scoring/native/parallel.h"
#include "../../scoring/native/simd.h"

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace aligner_native;  // NOLINT: the kernels' shared vocabulary (simd.h, parallel.h)

constexpr int kW = 16;              // columns per panel (keys, or value columns)
constexpr int kNV = kW / kLanes;    // vectors per panel row
constexpr int kNT = RowsPerTile(kNV);
static_assert(kNV * kLanes == kW, "a panel row is whole vectors");

struct Job {
  int64_t batch = 0, length = 0, heads = 0, dim = 0;
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  const float* bias = nullptr;
  float* out = nullptr;
  Claims pairs;  // (batch, head) pairs
};

// The scratch of one thread, sized for the job once.
struct Scratch {
  int64_t key_panels = 0, value_panels = 0, padded = 0;
  std::vector<float> kt, vp, logits, zeros;

  explicit Scratch(const Job& j)
      : key_panels((j.length + kW - 1) / kW),
        value_panels((j.dim + kW - 1) / kW),
        padded(key_panels * kW),
        kt(key_panels * j.dim * kW),
        vp(value_panels * j.length * kW),
        logits(kNT * padded),
        zeros(std::max<int64_t>(j.dim, 1), 0.0f) {}
};

void Pack(const Job& j, int64_t b, int64_t h, Scratch& s) {
  const int64_t row = j.heads * j.dim;  // floats between consecutive tokens
  const float* k = j.k + b * j.length * row + h * j.dim;
  const float* v = j.v + b * j.length * row + h * j.dim;
  std::fill(s.kt.begin(), s.kt.end(), 0.0f);
  for (int64_t t = 0; t < j.length; ++t) {
    float* dst = s.kt.data() + (t / kW) * j.dim * kW + t % kW;
    for (int64_t d = 0; d < j.dim; ++d) dst[d * kW] = k[t * row + d];
  }
  for (int64_t p = 0; p < s.value_panels; ++p) {
    const int64_t cols = std::min<int64_t>(kW, j.dim - p * kW);
    float* dst = s.vp.data() + p * j.length * kW;
    for (int64_t t = 0; t < j.length; ++t, dst += kW) {
      std::memcpy(dst, v + t * row + p * kW, cols * sizeof(float));
      std::fill(dst + cols, dst + kW, 0.0f);
    }
  }
}

// Logits of rows[0..kNT) against every key panel into s.logits ([kNT][padded]).
__attribute__((noinline)) void Logits(const float* const* rows, int64_t dim, const Scratch& s,
                                      float* logits) {
  for (int64_t p = 0; p < s.key_panels; ++p) {
    vf acc[kNT][kNV];
    Multiply<kNT, kNV>(rows, dim, s.kt.data() + p * dim * kW, acc);
#pragma GCC unroll 32
    for (int t = 0; t < kNT; ++t)
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) store(logits + t * s.padded + p * kW + v * kLanes, acc[t][v]);
  }
}

// In place: logits + bias -> e^(logit - row max), 0 past `length`; returns 1 / row sums. The
// bias past `length` is the lowest float, so those columns never set the maximum.
void Softmax(const float* bias, int64_t length, int64_t padded, float* logits,
             float (&inverse)[kNT]) {
  const float lowest = std::numeric_limits<float>::lowest();
  vf top[kNT];
#pragma GCC unroll 32
  for (int t = 0; t < kNT; ++t) top[t] = splat(lowest);
  for (int64_t c = 0; c < padded; c += kLanes) {
    vf b = load(bias + c);
#pragma GCC unroll 32
    for (int t = 0; t < kNT; ++t) {
      float* x = logits + t * padded + c;
      const vf y = load(x) + b;
      store(x, y);
      top[t] = vmax(top[t], y);
    }
  }
  vf sum[kNT];
#pragma GCC unroll 32
  for (int t = 0; t < kNT; ++t) {
    float m = top[t][0];
    for (int l = 1; l < kLanes; ++l) m = std::max(m, top[t][l]);
    top[t] = splat(m);
    sum[t] = splat(0.0f);
  }
  // Whole vectors of keys, then the last ones, where columns past `length` become 0.
  const int64_t whole = length / kLanes * kLanes;
  auto exp_columns = [&](int64_t c, bool last) __attribute__((always_inline)) {
    vf e[kNT];
#pragma GCC unroll 32
    for (int t = 0; t < kNT; ++t) e[t] = load(logits + t * padded + c) - top[t];
    Exp(e);
#pragma GCC unroll 32
    for (int t = 0; t < kNT; ++t) {
      if (last)
        for (int l = 0; l < kLanes; ++l)
          if (c + l >= length) e[t][l] = 0.0f;
      store(logits + t * padded + c, e[t]);
      sum[t] += e[t];
    }
  };
  for (int64_t c = 0; c < whole; c += kLanes) exp_columns(c, false);
  for (int64_t c = whole; c < padded; c += kLanes) exp_columns(c, true);
  for (int t = 0; t < kNT; ++t) {
    float total = 0.0f;
    for (int l = 0; l < kLanes; ++l) total += sum[t][l];
    inverse[t] = 1.0f / total;
  }
}

// The kNT rows of weights (in s.logits) times value panel p, scaled and stored to `out` rows
// [0, rows) (`stride` floats apart), columns [0, cols).
__attribute__((noinline)) void Weighted(const Scratch& s, int64_t length, int64_t p,
                                        const float (&inverse)[kNT], int64_t rows, int64_t cols,
                                        float* out, int64_t stride) {
  const float* weights[kNT];
  for (int t = 0; t < kNT; ++t) weights[t] = s.logits.data() + t * s.padded;
  vf acc[kNT][kNV];
  Multiply<kNT, kNV>(weights, length, s.vp.data() + p * length * kW, acc);
  for (int64_t t = 0; t < rows; ++t) {
    alignas(64) float tile[kW];
    for (int v = 0; v < kNV; ++v) store(tile + v * kLanes, acc[t][v] * splat(inverse[t]));
    std::memcpy(out + t * stride, tile, cols * sizeof(float));
  }
}

// `bias`: [padded], the lowest float past the length (never the row's maximum).
void Pair(const Job& j, int64_t pair, Scratch& s, std::vector<float>& bias) {
  const int64_t b = pair / j.heads, h = pair % j.heads;
  const int64_t row = j.heads * j.dim;
  Pack(j, b, h, s);
  std::copy(j.bias + b * j.length, j.bias + (b + 1) * j.length, bias.begin());
  const float* q = j.q + b * j.length * row + h * j.dim;
  float* out = j.out + b * j.length * row + h * j.dim;
  for (int64_t i0 = 0; i0 < j.length; i0 += kNT) {
    const int64_t rows = std::min<int64_t>(kNT, j.length - i0);
    const float* qrows[kNT];
    for (int t = 0; t < kNT; ++t) qrows[t] = t < rows ? q + (i0 + t) * row : s.zeros.data();
    Logits(qrows, j.dim, s, s.logits.data());
    float inverse[kNT];
    Softmax(bias.data(), j.length, s.padded, s.logits.data(), inverse);
    for (int64_t p = 0; p < s.value_panels; ++p)
      Weighted(s, j.length, p, inverse, rows, std::min<int64_t>(kW, j.dim - p * kW),
               out + i0 * row + p * kW, row);
  }
}

void Work(Job& j) {
  Scratch s(j);
  std::vector<float> bias(s.padded, std::numeric_limits<float>::lowest());
  for (int64_t p = j.pairs.Claim(); p < j.pairs.total; p = j.pairs.Claim()) {
    for (int64_t pair = p; pair < j.pairs.End(p); ++pair) Pair(j, pair, s, bias);
    j.pairs.Finish(p);
  }
}

ffi::Error AttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                         ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> bias,
                         ffi::ResultBuffer<ffi::F32> out) {
  auto qd = q.dimensions();
  if (qd.size() != 4)
    return ffi::Error::InvalidArgument("attention_cpu: q, k, v must be [B, L, H, D]");
  for (auto other : {k.dimensions(), v.dimensions()})
    if (other.size() != 4 || !std::equal(qd.begin(), qd.end(), other.begin()))
      return ffi::Error::InvalidArgument("attention_cpu: q, k, v must have the same shape");
  auto bd = bias.dimensions();
  if (bd.size() != 2 || bd[0] != qd[0] || bd[1] != qd[1])
    return ffi::Error::InvalidArgument("attention_cpu: bias must be [B, L]");
  auto job = std::make_shared<Job>();
  Job& j = *job;
  j.batch = qd[0];
  j.length = qd[1];
  j.heads = qd[2];
  j.dim = qd[3];
  if (j.batch * j.length * j.heads * j.dim == 0) return ffi::Error::Success();
  j.q = q.typed_data();
  j.k = k.typed_data();
  j.v = v.typed_data();
  j.bias = bias.typed_data();
  j.out = out->typed_data();
  j.pairs.total = j.batch * j.heads;
  j.pairs.chunk = 1;
  RunShared(pool, j.pairs, [job] { Work(*job); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AttentionCpu, AttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q [B, L, H, D]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k [B, L, H, D]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v [B, L, H, D]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias [B, L]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out [B, L, H, D]

// The instruction-set extensions this build was compiled for (isa.h), checked against the
// running CPU before the kernel is registered.
extern "C" const char* aligner_required_isa() { return ALIGNER_REQUIRED_ISA; }
