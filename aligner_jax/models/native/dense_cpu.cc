// The encoders' dense layers on the CPU behind the XLA FFI: y = act(x · W + b), float32.
//
// Shapes: x [M, K] (leading dimensions folded into M), W [K, N], b [N] or [0] (no bias),
// y [M, N]; act is the identity or the exact (erf) GELU, fused into the store of each tile.
//
// Layout (vectors and the microkernel from ../../scoring/native/simd.h), the usual blocking of
// a CPU GEMM into the caches:
//   * W is packed once per call into panels of NV·L columns (AVX2: 16), NV = kMaxPanelVectors,
//     panel[k][c] = W[k][n0 + c], the last panel zero past column N. The bias is padded the
//     same way.
//   * Rows are cut into blocks of kRowBlock rows, claimed by the threads (parallel.h), and the
//     depth K into slices of at most kDepthBlock. Per block and slice every panel's slice runs
//     over the block's tiles of NT rows, read in place (one pointer per row, as the alignment
//     kernel reads documents): the panel slice (≤ 16 KB) stays in L1 while the block's part
//     of x (≤ 96 KB) stays in L2. Packing x as well was measured no faster.
//   * A tile's accumulators start from zero at the first slice and from y at the next ones;
//     at the last slice the bias and the activation are applied to them in registers, all of
//     the tile's vectors step by step together, before they are stored.
//   * Packing W is shared by the threads too: every thread packs the panels it claims, then
//     waits until all panels are packed (a claimed panel is always being packed by a running
//     thread, so the wait ends) before it claims row blocks.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../../scoring/native/isa.h"
#include "../../scoring/native/parallel.h"
#include "../../scoring/native/simd.h"

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace aligner_native;  // NOLINT: the kernels' shared vocabulary (simd.h, parallel.h)

constexpr int kNV = kMaxPanelVectors;  // vectors per panel
constexpr int kNT = RowsPerTile(kNV);  // rows per tile
constexpr int64_t kWidth = kNV * kLanes;
constexpr int64_t kRowBlock = 96;    // a multiple of kNT
constexpr int64_t kDepthBlock = 256;  // k per slice: a 16-column panel slice is 16 KB
static_assert(kRowBlock % kNT == 0, "row blocks hold whole tiles");

enum Activation : int32_t { kIdentity = 0, kGeluErf = 1 };

// erfc(z) for z >= 0 as t·e^(P(t) - z²), t = 1 / (1 + z/2): P(t) is a degree-9 polynomial
// fitted (weighted least squares, then reweighted toward the largest error) to
// log(erfc(z)·e^(z²)/t) on z in [0, 10]; its relative error there is below 5e-8 before float32
// rounding. The tests compare the GELU built on it with math.erfc.
constexpr float kErfcP[] = {-1.26544142f, 0.99849236f,  0.387899727f, 0.0283631217f,
                            0.0201605689f, -0.116687745f, -0.651408613f, 1.12255049f,
                            -0.666138828f, 0.142210349f};
constexpr int kErfcTerms = sizeof(kErfcP) / sizeof(kErfcP[0]);

// Hugging Face "gelu" for N vectors: x·Φ(x) = x/2 · (1 + erf(x/√2)), with Φ(x) =
// erfc(|x|/√2)/2 for x < 0 and 1 - erfc(|x|/√2)/2 otherwise, so that Φ keeps its relative
// precision where it is tiny. Step by step over all N vectors, as Exp.
template <int N>
inline __attribute__((always_inline)) void GeluErf(vf (&x)[N]) {
  vf z[N], t[N], e[N];
#pragma GCC unroll 32
  for (int i = 0; i < N; ++i) {
    z[i] = vmax(x[i], -x[i]) * splat(0.70710678118654752f);
    t[i] = splat(1.0f) / (splat(1.0f) + splat(0.5f) * z[i]);
    e[i] = splat(kErfcP[kErfcTerms - 1]);
  }
  for (int c = kErfcTerms - 2; c >= 0; --c)
#pragma GCC unroll 32
    for (int i = 0; i < N; ++i) e[i] = e[i] * t[i] + splat(kErfcP[c]);
#pragma GCC unroll 32
  for (int i = 0; i < N; ++i) e[i] -= z[i] * z[i];
  Exp(e);
#pragma GCC unroll 32
  for (int i = 0; i < N; ++i) {
    const vf half_erfc = splat(0.5f) * t[i] * e[i];
    x[i] *= x[i] < splat(0.0f) ? half_erfc : splat(1.0f) - half_erfc;
  }
}

struct Job {
  int64_t m = 0, k = 0, n = 0;
  const float* x = nullptr;
  const float* w = nullptr;
  const float* b = nullptr;  // null: no bias
  float* y = nullptr;
  Activation activation = kIdentity;
  int64_t panels = 0;
  std::vector<float> packed;  // panel after panel, each [k][kWidth]
  std::vector<float> bias;    // [panels · kWidth]: b padded (zeros without b)
  Claims packs;               // panels to pack
  Claims rows;                // rows, in blocks of kRowBlock
};

void PackPanel(Job& j, int64_t panel) {
  const int64_t n0 = panel * kWidth;
  const int64_t cols = std::min(kWidth, j.n - n0);
  float* dst = j.packed.data() + n0 * j.k;
  for (int64_t kk = 0; kk < j.k; ++kk, dst += kWidth) {
    std::memcpy(dst, j.w + kk * j.n + n0, cols * sizeof(float));
    std::fill(dst + cols, dst + kWidth, 0.0f);
  }
  for (int64_t c = 0; c < kWidth; ++c)
    j.bias[n0 + c] = j.b != nullptr && c < cols ? j.b[n0 + c] : 0.0f;
}

// One tile: out[t][c] (+)= Σ_k tile[k][t] · slice[k][c] for kNT rows and kWidth columns, rows
// of `out` `stride` floats apart; from zero when `first`. With `bias` (the last slice), the
// bias is added and the activation applied to the accumulators before they are stored, so y is
// written once more at most. Not inlined: inlined into its caller, GCC allocated the
// microkernel's registers worse (panel vectors reloaded per row).
__attribute__((noinline)) void Tile(const float* const* rows, int64_t depth,
                                    const float* slice, bool first, const float* bias,
                                    Activation activation, float* out, int64_t stride) {
  vf acc[kNT][kNV];
#pragma GCC unroll 32
  for (int t = 0; t < kNT; ++t)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v)
      acc[t][v] = first ? splat(0.0f) : load(out + t * stride + v * kLanes);
  MultiplyAdd<kNT, kNV>(rows, depth, slice, acc);
  if (bias != nullptr) {
#pragma GCC unroll 32
    for (int t = 0; t < kNT; ++t)
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[t][v] += load(bias + v * kLanes);
    if (activation == kGeluErf) GeluErf(reinterpret_cast<vf(&)[kNT * kNV]>(acc));
  }
#pragma GCC unroll 32
  for (int t = 0; t < kNT; ++t)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) store(out + t * stride + v * kLanes, acc[t][v]);
}

// The tiles of rows [r0, r1) (read in place from depth k0 on; rows past M read `zeros`)
// against panel `panel`'s slice [k0, k0 + depth). The last slice adds the bias and applies the
// activation.
void PanelSlice(const Job& j, int64_t panel, int64_t r0, int64_t r1, int64_t k0, int64_t depth,
                const float* zeros, bool first, bool last) {
  const int64_t n0 = panel * kWidth;
  const int64_t cols = std::min(kWidth, j.n - n0);
  const float* slice = j.packed.data() + n0 * j.k + k0 * kWidth;
  const float* bias = last ? j.bias.data() + n0 : nullptr;
  for (int64_t t0 = r0; t0 < r1; t0 += kNT) {
    const int64_t tile_rows = std::min<int64_t>(kNT, j.m - t0);
    const float* rows[kNT];
    for (int t = 0; t < kNT; ++t) rows[t] = t < tile_rows ? j.x + (t0 + t) * j.k + k0 : zeros;
    const bool whole = tile_rows == kNT && cols == kWidth;
    // A partial tile goes through `part`, [kNT][kWidth], so that nothing outside y is touched.
    alignas(64) float part[kNT * kWidth];
    float* out = j.y + t0 * j.n + n0;
    int64_t stride = j.n;
    if (!whole) {
      std::fill(part, part + kNT * kWidth, 0.0f);
      if (!first)
        for (int64_t t = 0; t < tile_rows; ++t)
          std::memcpy(part + t * kWidth, out + t * j.n, cols * sizeof(float));
      out = part;
      stride = kWidth;
    }
    // y of the next tile, which the next call reads (after the first slice) and writes: the
    // row block's part of y is wider than L2 once N is large, so without this every tile
    // waited on L3 or memory.
    for (int64_t t = t0 + kNT; t < std::min(t0 + 2 * kNT, j.m); ++t) {
      __builtin_prefetch(j.y + t * j.n + n0, 1);
      __builtin_prefetch(j.y + t * j.n + n0 + cols - 1, 1);
    }
    Tile(rows, depth, slice, first, bias, j.activation, out, stride);
    if (!whole)
      for (int64_t t = 0; t < tile_rows; ++t)
        std::memcpy(j.y + (t0 + t) * j.n + n0, part + t * kWidth, cols * sizeof(float));
  }
}

// `zeros`: kDepthBlock zeros, the rows past M.
void RowBlock(const Job& j, int64_t r0, int64_t r1, const float* zeros) {
  const int64_t slices = std::max<int64_t>(1, (j.k + kDepthBlock - 1) / kDepthBlock);
  // Equal slices (384 = 2 x 192, not 256 + 128).
  const int64_t per_slice = (j.k + slices - 1) / slices;
  for (int64_t s = 0; s < slices; ++s) {
    const int64_t k0 = s * per_slice;
    const int64_t depth = std::min(per_slice, j.k - k0);
    for (int64_t panel = 0; panel < j.panels; ++panel)
      PanelSlice(j, panel, r0, r1, k0, depth, zeros, s == 0, s == slices - 1);
  }
}

void Work(Job& j) {
  for (int64_t p = j.packs.Claim(); p < j.packs.total; p = j.packs.Claim()) {
    for (int64_t panel = p; panel < j.packs.End(p); ++panel) PackPanel(j, panel);
    j.packs.Finish(p);
  }
  while (j.packs.done.load() < j.packs.total) std::this_thread::yield();
  const std::vector<float> zeros(kDepthBlock, 0.0f);
  for (int64_t r = j.rows.Claim(); r < j.rows.total; r = j.rows.Claim()) {
    RowBlock(j, r, j.rows.End(r), zeros.data());
    j.rows.Finish(r);
  }
}

ffi::Error DenseImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                     ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> y,
                     int32_t activation) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2)
    return ffi::Error::InvalidArgument("dense_cpu: x must be [M, K] and W [K, N]");
  if (xd[1] != wd[0])
    return ffi::Error::InvalidArgument("dense_cpu: x [M, K] and W [K, N] disagree on K");
  if (b.element_count() != 0 && static_cast<int64_t>(b.element_count()) != wd[1])
    return ffi::Error::InvalidArgument("dense_cpu: b must be [N] or [0]");
  if (activation != kIdentity && activation != kGeluErf)
    return ffi::Error::InvalidArgument("dense_cpu: unknown activation " +
                                       std::to_string(activation));
  auto job = std::make_shared<Job>();
  Job& j = *job;
  j.m = xd[0];
  j.k = xd[1];
  j.n = wd[1];
  if (j.m == 0 || j.n == 0) return ffi::Error::Success();
  j.x = x.typed_data();
  j.w = w.typed_data();
  j.b = b.element_count() != 0 ? b.typed_data() : nullptr;
  j.y = y->typed_data();
  j.activation = static_cast<Activation>(activation);
  j.panels = (j.n + kWidth - 1) / kWidth;
  j.packed.resize(j.panels * kWidth * j.k);
  j.bias.resize(j.panels * kWidth);
  j.packs.total = j.panels;
  j.packs.chunk = 1;
  j.rows.total = j.m;
  j.rows.chunk = kRowBlock;
  RunShared(pool, j.rows, [job] { Work(*job); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DenseCpu, DenseImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [M, K]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W [K, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b [N] or [0]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y [M, N]
                                  .Attr<int32_t>("activation"));

// The instruction-set extensions this build was compiled for (isa.h), checked against the
// running CPU before the kernel is registered.
extern "C" const char* aligner_required_isa() { return ALIGNER_REQUIRED_ISA; }
