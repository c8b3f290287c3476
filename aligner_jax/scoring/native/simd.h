// Vectors and the register-blocked multiply every CPU kernel of the project is built on.
//
// L = kLanes floats per vector register: 16 with AVX-512 (32 registers), 8 with AVX2 (16
// registers). A -march=native build picks its own width, and every blocking size follows from
// L and the register count, so the microkernel fits the register file of the machine it was
// built on. Vectors are GCC vector extensions sized to the build's widest registers.
//
// The microkernel (`MultiplyAdd`) computes an NT x NV·L tile: NT rows, each read through its
// own pointer and broadcast one value at a time, against a panel packed as [k][NV·L]
// (panel[k * NV·L + c] = the k-th value of column c, zero past the last column):
//   acc[t][v] += broadcast(row[t][k]) * panel[k][v·L .. v·L + L).
// The NT·NV accumulators, the NV panel vectors of one k and the broadcast stay in registers
// (AVX2: 6 rows x 16 columns in 12 ymm accumulators, the shape of BLAS's Haswell / Zen SGEMM
// kernels, or 12 rows x 8 columns): 12 independent FMA chains, enough to hide the FMA latency.

#ifndef ALIGNER_JAX_NATIVE_SIMD_H_
#define ALIGNER_JAX_NATIVE_SIMD_H_

#include <cstddef>
#include <cstdint>
#include <utility>

namespace aligner_native {

#ifdef __AVX512F__
constexpr int kLanes = 16;            // floats per vector register
constexpr int kVectorRegisters = 32;  // zmm0-31
constexpr int kMaxPanelVectors = 4;   // panels of up to 64 columns
#else
constexpr int kLanes = 8;             // AVX2: ymm registers
constexpr int kVectorRegisters = 16;  // ymm0-15
constexpr int kMaxPanelVectors = 2;   // panels of up to 16 columns (6x16 microkernel)
#endif

typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef float vfu __attribute__((vector_size(4 * kLanes), aligned(4)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));

inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store(float* p, vf x) { *reinterpret_cast<vfu*>(p) = x; }
// All lanes x: a constructor of L equal elements, which GCC always emits as one broadcast (a
// loop filling the lanes one by one became insert chains once inlined into the microkernel, and
// `vf{} + x` would add +0.0 first).
template <std::size_t... I>
inline vf SplatLanes(float x, std::index_sequence<I...>) {
  return vf{((void)I, x)...};
}
inline vf splat(float x) { return SplatLanes(x, std::make_index_sequence<kLanes>()); }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }

// e^a for N vectors, lane by lane, for a in [-87, 88] (clamped to it: e^-87 is near the
// smallest normal float32), within about 2 ulp: a = n·ln2 + r with |r| <= ln2/2, e^r by its
// Taylor polynomial of degree 7 (truncation < 5e-9 relative), 2^n put into the exponent bits.
// Every step runs over all N vectors before the next: the N chains are independent, so the
// core overlaps them instead of waiting out one long chain of dependent operations at a time.
template <int N>
inline __attribute__((always_inline)) void Exp(vf (&a)[N]) {
  // Round to nearest: adding 1.5·2^23 leaves no fraction bits in float32.
  const vf shift = splat(12582912.0f);
  vf n[N], p[N];
#pragma GCC unroll 32
  for (int i = 0; i < N; ++i) {
    a[i] = vmin(vmax(a[i], splat(-87.0f)), splat(88.0f));
    n[i] = (a[i] * splat(1.44269504f) + shift) - shift;
    // ln2 in two parts (the high one has trailing zero bits, so n·hi is exact).
    a[i] = (a[i] - n[i] * splat(0.693145752f)) - n[i] * splat(1.42860677e-6f);
    p[i] = splat(1.0f / 5040.0f);
  }
  constexpr float kTaylor[] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f,
                               1.0f, 1.0f};
  for (float c : kTaylor)
#pragma GCC unroll 32
    for (int i = 0; i < N; ++i) p[i] = p[i] * a[i] + splat(c);
#pragma GCC unroll 32
  for (int i = 0; i < N; ++i) {
    const vi bits = (__builtin_convertvector(n[i], vi) + 127) << 23;
    a[i] = p[i] * reinterpret_cast<const vf&>(bits);
  }
}

// Rows per tile for panels of NV vectors: the NT·NV accumulators, the NV panel vectors of one
// k and the broadcast value fit the register file.
constexpr int RowsPerTile(int nv) {
  if (kVectorRegisters >= 32) return nv == 1 ? 24 : nv == 2 ? 12 : nv == 3 ? 8 : 6;
  return nv == 1 ? 12 : 6;
}

// acc[t][v] += Σ_{k < depth} row[t][k] · panel[k][v·L .. v·L + L) (see the file comment); the
// panel is packed [depth][NV·L], the rows are read in place. Inlined into its caller, whose
// accumulators then live in registers for the whole loop.
template <int NT, int NV>
inline __attribute__((always_inline)) void MultiplyAdd(const float* const* rows, int64_t depth,
                                                       const float* panel, vf (&acc)[NT][NV]) {
  const float* row[NT];
#pragma GCC unroll 32
  for (int t = 0; t < NT; ++t) row[t] = rows[t];
  int64_t k = 0;
  // Whole vectors of k first, unrolled so that every offset is a constant.
  for (; k + kLanes <= depth; k += kLanes) {
    const float* pk = panel + k * NV * kLanes;
#pragma GCC unroll 16
    for (int kk = 0; kk < kLanes; ++kk) {
      vf pv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) pv[v] = load(pk + (kk * NV + v) * kLanes);
#pragma GCC unroll 32
      for (int t = 0; t < NT; ++t) {
        const vf rt = splat(row[t][k + kk]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[t][v] += rt * pv[v];
      }
    }
  }
  for (; k < depth; ++k) {
    vf pv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) pv[v] = load(panel + (k * NV + v) * kLanes);
#pragma GCC unroll 32
    for (int t = 0; t < NT; ++t) {
      const vf rt = splat(row[t][k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[t][v] += rt * pv[v];
    }
  }
}

// acc[t][v] = Σ_{k < depth} row[t][k] · panel[k][v·L .. v·L + L): MultiplyAdd from zero.
template <int NT, int NV>
inline __attribute__((always_inline)) void Multiply(const float* const* rows, int64_t depth,
                                                    const float* panel, vf (&acc)[NT][NV]) {
#pragma GCC unroll 32
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[t][v] = splat(0.0f);
  MultiplyAdd<NT, NV>(rows, depth, panel, acc);
}

}  // namespace aligner_native

#endif  // ALIGNER_JAX_NATIVE_SIMD_H_
