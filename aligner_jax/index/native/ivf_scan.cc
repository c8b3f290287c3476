// The IVF index's token-by-token scan (aligner_jax/index/ivf.py, `_search_by_token`) in one
// call per chunk of query tokens, called through ctypes (which releases the GIL, so the
// search's threads run it in parallel).
//
// For each query token t and each of its chosen cells c (cells[t, j] >= 0), every stored token
// of the cell scores
//     scale[c] * (code · q_t) + centre[t, j]
// (its int8 residual code read in place from the cell's part, a memory-mapped array); the k
// best of the token's cells, by score descending then by position in the cells' concatenation
// (cell after cell in j order, rows in list order), are written with their labels
// (labels[part][row] + label_base[part]). Tokens whose label `allowed` rejects are skipped.
// Fewer than k results: label -1, score -inf. Nothing is allocated per row: one buffer per call.
//
// Built by `make install` with -O3 -march=native; `aligner_required_isa` (isa.h) lets the
// loader refuse a build made for another CPU.

#include <algorithm>
#include <functional>
#include <cstdint>
#include <limits>
#include <vector>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "../../scoring/native/isa.h"

namespace {

// Inner product of a stored row with a float query, in 16 independent partial sums so the
// compiler vectorises it without reassociating one serial sum (the portable path).
template <typename Row>
inline float DotRow(const Row* code, const float* q, int64_t h) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= h; i += 16) {
    for (int j = 0; j < 16; ++j) acc[j] += q[i + j] * static_cast<float>(code[i + j]);
  }
  float s = 0;
  for (; i < h; ++i) s += q[i] * static_cast<float>(code[i]);
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

#ifdef __AVX2__
// int8 codes with AVX2: 16 codes widened to two 8-float vectors per step, two accumulators.
template <>
inline float DotRow<int8_t>(const int8_t* code, const float* q, int64_t h) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= h; i += 16) {
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(code + i));
    const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c));
    const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c, 8)));
    a0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(q + i), a0);
    a1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(q + i + 8), a1);
  }
  const __m256 a = _mm256_add_ps(a0, a1);
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  float s = _mm_cvtss_f32(r);
  for (; i < h; ++i) s += q[i] * static_cast<float>(code[i]);
  return s;
}

// 16 codes from `p` as two 8-float vectors.
inline void Load16(const int8_t* p, __m256* lo, __m256* hi) {
  const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  *lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c));
  *hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c, 8)));
}

// Four consecutive rows at once (h a multiple of 16): the query read once per step for all
// four, and the four sums reduced together.
template <typename Row>
inline void DotRows4(const Row* rows, const float* q, int64_t h, float* out) {
  __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                 _mm256_setzero_ps()};
  for (int64_t i = 0; i < h; i += 16) {
    const __m256 q0 = _mm256_loadu_ps(q + i), q1 = _mm256_loadu_ps(q + i + 8);
    for (int r = 0; r < 4; ++r) {
      __m256 lo, hi;
      Load16(rows + r * h + i, &lo, &hi);
      a[r] = _mm256_fmadd_ps(hi, q1, _mm256_fmadd_ps(lo, q0, a[r]));
    }
  }
  const __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 s = _mm256_hadd_ps(s01, s23);  // per 128-bit half: rows 0, 1, 2, 3
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}
#define ALIGNER_IVF_ROWS4 1
#endif

template <typename Row>
int Scan(
    int64_t num_tokens, int64_t h, int64_t cells_per_token, int64_t k,
    const float* queries,          // [num_tokens, h]
    const int64_t* cells,          // [num_tokens, cells_per_token], -1: none
    const float* centre,           // [num_tokens, cells_per_token]
    int64_t num_cells,
    const int32_t* cell_part,      // [num_cells]
    const int64_t* cell_start,     // [num_cells] first list position in its part
    const int64_t* cell_size,      // [num_cells]
    const float* cell_scale,       // [num_cells]
    const Row* const* part_codes,  // [parts] -> [part size, h]
    const int32_t* const* part_labels,  // [parts] -> [part size]
    const int64_t* label_base,     // [parts]
    const uint8_t* allowed,        // [labels] or null
    int64_t* out_labels,           // [num_tokens, k]
    float* out_scores) {           // [num_tokens, k]
  std::vector<float> score;
  std::vector<int64_t> label;
  std::vector<int64_t> order;
  std::vector<float> threshold;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* q = queries + t * h;
    score.clear();
    label.clear();
    for (int64_t j = 0; j < cells_per_token; ++j) {
      const int64_t c = cells[t * cells_per_token + j];
      if (c < 0) continue;
      if (c >= num_cells) return 1;
      const int32_t part = cell_part[c];
      const Row* codes = part_codes[part] + cell_start[c] * h;
      const int32_t* labels = part_labels[part] + cell_start[c];
      const float scale = cell_scale[c];
      const float bias = centre[t * cells_per_token + j];
      const int64_t size = cell_size[c];
      int64_t r = 0;
      float dots[4];
#ifdef ALIGNER_IVF_ROWS4
      if (h % 16 == 0) {
        for (; r + 4 <= size; r += 4) {
          DotRows4(codes + r * h, q, h, dots);
          for (int i = 0; i < 4; ++i) {
            const int64_t l = labels[r + i] + label_base[part];
            if (allowed != nullptr && !allowed[l]) continue;
            score.push_back(scale * dots[i] + bias);
            label.push_back(l);
          }
        }
      }
#endif
      for (; r < size; ++r) {
        const int64_t l = labels[r] + label_base[part];
        if (allowed != nullptr && !allowed[l]) continue;
        score.push_back(scale * DotRow(codes + r * h, q, h) + bias);
        label.push_back(l);
      }
    }
    const int64_t n = static_cast<int64_t>(score.size());
    const int64_t keep = std::min(k, n);
    // The keep-th best score found on a plain copy of the scores, then the positions above
    // it and, in position order, as many tied with it as fit: the keep best by (score
    // descending, position ascending), without comparing through an index array.
    order.clear();
    if (keep > 0) {
      threshold.assign(score.begin(), score.end());
      std::nth_element(threshold.begin(), threshold.begin() + (keep - 1), threshold.end(),
                       std::greater<float>());
      const float kth = threshold[keep - 1];
      for (int64_t i = 0; i < n; ++i) {
        if (score[i] > kth) order.push_back(i);
      }
      for (int64_t i = 0; i < n && static_cast<int64_t>(order.size()) < keep; ++i) {
        if (score[i] == kth) order.push_back(i);
      }
    }
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return score[a] > score[b] || (score[a] == score[b] && a < b);
    });
    for (int64_t i = 0; i < k; ++i) {
      out_labels[t * k + i] = i < keep ? label[order[i]] : -1;
      out_scores[t * k + i] =
          i < keep ? score[order[i]] : -std::numeric_limits<float>::infinity();
    }
  }
  return 0;
}

}  // namespace

extern "C" const char* aligner_required_isa() { return ALIGNER_REQUIRED_ISA; }

// The scan over the cells' int8 residual codes. Returns 0, or 1 when a chosen cell lies
// outside [0, num_cells).
extern "C" int aligner_ivf_scan(
    int64_t num_tokens, int64_t h, int64_t cells_per_token, int64_t k, const float* queries,
    const int64_t* cells, const float* centre, int64_t num_cells, const int32_t* cell_part,
    const int64_t* cell_start, const int64_t* cell_size, const float* cell_scale,
    const int8_t* const* part_codes, const int32_t* const* part_labels,
    const int64_t* label_base, const uint8_t* allowed, int64_t* out_labels,
    float* out_scores) {
  return Scan<int8_t>(num_tokens, h, cells_per_token, k, queries, cells, centre, num_cells,
                      cell_part, cell_start, cell_size, cell_scale, part_codes, part_labels,
                      label_base, allowed, out_labels, out_scores);
}
