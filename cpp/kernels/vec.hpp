#pragma once
// A small SIMD vector type for the kernels, mapped onto the widest registers of the ISA this
// translation unit is compiled for: AVX-512 (16 floats), AVX2+FMA (8), SSE2 (4), or plain
// scalars on other architectures. Everything is in the per-ISA namespace.
//
// Wide<T> is the double-precision accumulator view of a Vec<T>: statistics of float32 data
// are summed in float64 so they stay exact on large-mean data.

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__SSE2__)
#include <immintrin.h>
#endif

namespace normkit {
namespace NORMKIT_CPU_NS {

template <class T>
struct Vec;

// Vector registers of the ISA (kernels that keep arrays of vectors in registers size them by
// it; past it the compiler spills to the stack).
#if defined(__AVX512F__)
constexpr int kVectorRegisters = 32;
#else
constexpr int kVectorRegisters = 16;
#endif

// The cache line of the x86-64 CPUs (and most others) the streaming stores write whole.
constexpr int64_t kCacheLineBytes = 64;

// How many values of T lie between the start of p's cache line and p.
template <class T>
inline int64_t line_lead(const T* p) {
  return static_cast<int64_t>(reinterpret_cast<std::uintptr_t>(p) % kCacheLineBytes / sizeof(T));
}

#if defined(__AVX512F__)

template <>
struct Vec<float> {
  static constexpr int64_t width = 16;
  __m512 v;
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec broadcast(float a) { return {_mm512_set1_ps(a)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void stream(float* p) const { _mm512_stream_ps(p, v); }  // p 64-byte aligned
};
template <>
struct Vec<double> {
  static constexpr int64_t width = 8;
  __m512d v;
  static Vec load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static Vec broadcast(double a) { return {_mm512_set1_pd(a)}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  void stream(double* p) const { _mm512_stream_pd(p, v); }
};
inline Vec<float> operator+(Vec<float> a, Vec<float> b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec<float> operator-(Vec<float> a, Vec<float> b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline Vec<float> operator*(Vec<float> a, Vec<float> b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vec<float> fmadd(Vec<float> a, Vec<float> b, Vec<float> c) {
  return {_mm512_fmadd_ps(a.v, b.v, c.v)};
}
inline Vec<double> operator+(Vec<double> a, Vec<double> b) { return {_mm512_add_pd(a.v, b.v)}; }
inline Vec<double> operator-(Vec<double> a, Vec<double> b) { return {_mm512_sub_pd(a.v, b.v)}; }
inline Vec<double> operator*(Vec<double> a, Vec<double> b) { return {_mm512_mul_pd(a.v, b.v)}; }
inline Vec<double> fmadd(Vec<double> a, Vec<double> b, Vec<double> c) {
  return {_mm512_fmadd_pd(a.v, b.v, c.v)};
}
// (Every ISA's block has these three: a / b, sqrt(a), and floor_at(a, lo) = a < lo ? lo : a per
// lane, a NaN in a passing through.)
inline Vec<double> operator/(Vec<double> a, Vec<double> b) { return {_mm512_div_pd(a.v, b.v)}; }
inline Vec<double> square_root(Vec<double> a) { return {_mm512_sqrt_pd(a.v)}; }
inline Vec<double> floor_at(Vec<double> a, Vec<double> lo) { return {_mm512_max_pd(lo.v, a.v)}; }
inline Vec<double> widen_lo(Vec<float> a) { return {_mm512_cvtps_pd(_mm512_castps512_ps256(a.v))}; }
inline Vec<double> widen_hi(Vec<float> a) {
  return {_mm512_cvtps_pd(_mm512_extractf32x8_ps(a.v, 1))};
}

#elif defined(__AVX2__)

template <>
struct Vec<float> {
  static constexpr int64_t width = 8;
  __m256 v;
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec broadcast(float a) { return {_mm256_set1_ps(a)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void stream(float* p) const { _mm256_stream_ps(p, v); }  // p 32-byte aligned
};
template <>
struct Vec<double> {
  static constexpr int64_t width = 4;
  __m256d v;
  static Vec load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static Vec broadcast(double a) { return {_mm256_set1_pd(a)}; }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  void stream(double* p) const { _mm256_stream_pd(p, v); }
};
inline Vec<float> operator+(Vec<float> a, Vec<float> b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Vec<float> operator-(Vec<float> a, Vec<float> b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline Vec<float> operator*(Vec<float> a, Vec<float> b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline Vec<float> fmadd(Vec<float> a, Vec<float> b, Vec<float> c) {
  return {_mm256_fmadd_ps(a.v, b.v, c.v)};
}
inline Vec<double> operator+(Vec<double> a, Vec<double> b) { return {_mm256_add_pd(a.v, b.v)}; }
inline Vec<double> operator-(Vec<double> a, Vec<double> b) { return {_mm256_sub_pd(a.v, b.v)}; }
inline Vec<double> operator*(Vec<double> a, Vec<double> b) { return {_mm256_mul_pd(a.v, b.v)}; }
inline Vec<double> fmadd(Vec<double> a, Vec<double> b, Vec<double> c) {
  return {_mm256_fmadd_pd(a.v, b.v, c.v)};
}
inline Vec<double> operator/(Vec<double> a, Vec<double> b) { return {_mm256_div_pd(a.v, b.v)}; }
inline Vec<double> square_root(Vec<double> a) { return {_mm256_sqrt_pd(a.v)}; }
inline Vec<double> floor_at(Vec<double> a, Vec<double> lo) { return {_mm256_max_pd(lo.v, a.v)}; }
inline Vec<double> widen_lo(Vec<float> a) { return {_mm256_cvtps_pd(_mm256_castps256_ps128(a.v))}; }
inline Vec<double> widen_hi(Vec<float> a) {
  return {_mm256_cvtps_pd(_mm256_extractf128_ps(a.v, 1))};
}

#elif defined(__SSE2__)

template <>
struct Vec<float> {
  static constexpr int64_t width = 4;
  __m128 v;
  static Vec load(const float* p) { return {_mm_loadu_ps(p)}; }
  static Vec broadcast(float a) { return {_mm_set1_ps(a)}; }
  void store(float* p) const { _mm_storeu_ps(p, v); }
  void stream(float* p) const { _mm_stream_ps(p, v); }  // p 16-byte aligned
};
template <>
struct Vec<double> {
  static constexpr int64_t width = 2;
  __m128d v;
  static Vec load(const double* p) { return {_mm_loadu_pd(p)}; }
  static Vec broadcast(double a) { return {_mm_set1_pd(a)}; }
  void store(double* p) const { _mm_storeu_pd(p, v); }
  void stream(double* p) const { _mm_stream_pd(p, v); }
};
inline Vec<float> operator+(Vec<float> a, Vec<float> b) { return {_mm_add_ps(a.v, b.v)}; }
inline Vec<float> operator-(Vec<float> a, Vec<float> b) { return {_mm_sub_ps(a.v, b.v)}; }
inline Vec<float> operator*(Vec<float> a, Vec<float> b) { return {_mm_mul_ps(a.v, b.v)}; }
// No FMA before AVX2: multiply, round, add.
inline Vec<float> fmadd(Vec<float> a, Vec<float> b, Vec<float> c) { return a * b + c; }
inline Vec<double> operator+(Vec<double> a, Vec<double> b) { return {_mm_add_pd(a.v, b.v)}; }
inline Vec<double> operator-(Vec<double> a, Vec<double> b) { return {_mm_sub_pd(a.v, b.v)}; }
inline Vec<double> operator*(Vec<double> a, Vec<double> b) { return {_mm_mul_pd(a.v, b.v)}; }
inline Vec<double> fmadd(Vec<double> a, Vec<double> b, Vec<double> c) { return a * b + c; }
inline Vec<double> operator/(Vec<double> a, Vec<double> b) { return {_mm_div_pd(a.v, b.v)}; }
inline Vec<double> square_root(Vec<double> a) { return {_mm_sqrt_pd(a.v)}; }
inline Vec<double> floor_at(Vec<double> a, Vec<double> lo) { return {_mm_max_pd(lo.v, a.v)}; }
inline Vec<double> widen_lo(Vec<float> a) { return {_mm_cvtps_pd(a.v)}; }
inline Vec<double> widen_hi(Vec<float> a) { return {_mm_cvtps_pd(_mm_movehl_ps(a.v, a.v))}; }

#else  // portable scalar fallback (non-x86 builds)

template <class T>
struct Vec {
  static constexpr int64_t width = 1;
  T v;
  static Vec load(const T* p) { return {*p}; }
  static Vec broadcast(T a) { return {a}; }
  void store(T* p) const { *p = v; }
  void stream(T* p) const { *p = v; }
};
template <class T>
inline Vec<T> operator+(Vec<T> a, Vec<T> b) {
  return {a.v + b.v};
}
template <class T>
inline Vec<T> operator-(Vec<T> a, Vec<T> b) {
  return {a.v - b.v};
}
template <class T>
inline Vec<T> operator*(Vec<T> a, Vec<T> b) {
  return {a.v * b.v};
}
template <class T>
inline Vec<T> fmadd(Vec<T> a, Vec<T> b, Vec<T> c) {
  return a * b + c;
}
inline Vec<double> operator/(Vec<double> a, Vec<double> b) { return {a.v / b.v}; }
inline Vec<double> square_root(Vec<double> a) { return {std::sqrt(a.v)}; }
inline Vec<double> floor_at(Vec<double> a, Vec<double> lo) { return {a.v < lo.v ? lo.v : a.v}; }
// A "float vector" of one lane widens entirely into widen_lo; widen_hi is unused (parts == 1).
inline Vec<double> widen_lo(Vec<float> a) { return {static_cast<double>(a.v)}; }
inline Vec<double> widen_hi(Vec<float> a) { return {static_cast<double>(a.v)}; }

#endif

// Vec<double>::width values of T as doubles (load_wide), and doubles rounded to T and stored
// (store_narrow).
inline Vec<double> load_wide(const double* p) { return Vec<double>::load(p); }
inline void store_narrow(double* p, Vec<double> a) { a.store(p); }
// Lane masks (bit k for lane k): a > b (false where either is NaN), and a finite.
constexpr double kMaxDouble = std::numeric_limits<double>::max();
#if defined(__AVX512F__)
inline Vec<double> load_wide(const float* p) { return {_mm512_cvtps_pd(_mm256_loadu_ps(p))}; }
inline void store_narrow(float* p, Vec<double> a) { _mm256_storeu_ps(p, _mm512_cvtpd_ps(a.v)); }
inline int greater_lanes(Vec<double> a, Vec<double> b) {
  return _mm512_cmp_pd_mask(a.v, b.v, _CMP_GT_OQ);
}
inline int finite_lanes(Vec<double> a) {
  return _mm512_cmp_pd_mask(_mm512_abs_pd(a.v), _mm512_set1_pd(kMaxDouble), _CMP_LE_OQ);
}
#elif defined(__AVX2__)
inline Vec<double> load_wide(const float* p) { return {_mm256_cvtps_pd(_mm_loadu_ps(p))}; }
inline void store_narrow(float* p, Vec<double> a) { _mm_storeu_ps(p, _mm256_cvtpd_ps(a.v)); }
inline int greater_lanes(Vec<double> a, Vec<double> b) {
  return _mm256_movemask_pd(_mm256_cmp_pd(a.v, b.v, _CMP_GT_OQ));
}
inline int finite_lanes(Vec<double> a) {
  const __m256d magnitude = _mm256_andnot_pd(_mm256_set1_pd(-0.0), a.v);
  return _mm256_movemask_pd(_mm256_cmp_pd(magnitude, _mm256_set1_pd(kMaxDouble), _CMP_LE_OQ));
}
#elif defined(__SSE2__)
inline Vec<double> load_wide(const float* p) {
  return {_mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))};
}
inline void store_narrow(float* p, Vec<double> a) {
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_castps_si128(_mm_cvtpd_ps(a.v)));
}
inline int greater_lanes(Vec<double> a, Vec<double> b) {
  return _mm_movemask_pd(_mm_cmpgt_pd(a.v, b.v));
}
inline int finite_lanes(Vec<double> a) {
  const __m128d magnitude = _mm_andnot_pd(_mm_set1_pd(-0.0), a.v);
  return _mm_movemask_pd(_mm_cmple_pd(magnitude, _mm_set1_pd(kMaxDouble)));
}
#else
inline Vec<double> load_wide(const float* p) { return {static_cast<double>(*p)}; }
inline void store_narrow(float* p, Vec<double> a) { *p = static_cast<float>(a.v); }
inline int greater_lanes(Vec<double> a, Vec<double> b) { return a.v > b.v ? 1 : 0; }
inline int finite_lanes(Vec<double> a) { return std::isfinite(a.v) ? 1 : 0; }
#endif

// Lanes [0, k) of a and [k, width) of b (0 <= k <= width).
#if defined(__AVX512F__)
inline Vec<float> blend_at(Vec<float> a, Vec<float> b, int k) {
  return {_mm512_mask_blend_ps(static_cast<__mmask16>(0xFFFFu << k), a.v, b.v)};
}
inline Vec<double> blend_at(Vec<double> a, Vec<double> b, int k) {
  return {_mm512_mask_blend_pd(static_cast<__mmask8>(0xFFu << k), a.v, b.v)};
}
#elif defined(__AVX2__)
inline Vec<float> blend_at(Vec<float> a, Vec<float> b, int k) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i from_b = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(k - 1));
  return {_mm256_blendv_ps(a.v, b.v, _mm256_castsi256_ps(from_b))};
}
inline Vec<double> blend_at(Vec<double> a, Vec<double> b, int k) {
  const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i from_b = _mm256_cmpgt_epi64(lane, _mm256_set1_epi64x(k - 1));
  return {_mm256_blendv_pd(a.v, b.v, _mm256_castsi256_pd(from_b))};
}
#elif defined(__SSE2__)
inline Vec<float> blend_at(Vec<float> a, Vec<float> b, int k) {
  const __m128 from_b =
      _mm_castsi128_ps(_mm_cmpgt_epi32(_mm_setr_epi32(0, 1, 2, 3), _mm_set1_epi32(k - 1)));
  return {_mm_or_ps(_mm_andnot_ps(from_b, a.v), _mm_and_ps(from_b, b.v))};
}
inline Vec<double> blend_at(Vec<double> a, Vec<double> b, int k) {
  // (both 32-bit halves of a 64-bit lane compare that lane's index)
  const __m128i lo = _mm_cmpgt_epi32(_mm_setr_epi32(0, 0, 1, 1), _mm_set1_epi32(k - 1));
  const __m128d from_b = _mm_castsi128_pd(lo);
  return {_mm_or_pd(_mm_andnot_pd(from_b, a.v), _mm_and_pd(from_b, b.v))};
}
#else
template <class T>
inline Vec<T> blend_at(Vec<T> a, Vec<T> b, int k) {
  return k > 0 ? a : b;
}
#endif

// Lane k of the result is lane idx[k] of a (idx: Vec<T>::width indices in [0, width)).
#if defined(__AVX512F__)
inline Vec<float> permute(Vec<float> a, const int32_t* idx) {
  return {_mm512_permutexvar_ps(_mm512_loadu_si512(idx), a.v)};
}
inline Vec<double> permute(Vec<double> a, const int32_t* idx) {
  const __m512i idx64 =
      _mm512_cvtepi32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)));
  return {_mm512_permutexvar_pd(idx64, a.v)};
}
#elif defined(__AVX2__)
inline Vec<float> permute(Vec<float> a, const int32_t* idx) {
  return {_mm256_permutevar8x32_ps(a.v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)))};
}
inline Vec<double> permute(Vec<double> a, const int32_t* idx) {
  // double lane i is float lanes 2i (low half) and 2i + 1
  const __m256i twice = _mm256_slli_epi64(
      _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx))), 1);
  const __m256i pairs =
      _mm256_or_si256(twice, _mm256_slli_epi64(_mm256_add_epi64(twice, _mm256_set1_epi64x(1)), 32));
  return {_mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(a.v), pairs))};
}
#else  // SSE2 has no lane permute by register; scalar builds have one lane
template <class T>
inline Vec<T> permute(Vec<T> a, const int32_t* idx) {
  constexpr int kWidth = Vec<T>::width;
  T in[kWidth], out[kWidth];
  a.store(in);
  for (int k = 0; k < kWidth; ++k) out[k] = in[idx[k]];
  return Vec<T>::load(out);
}
#endif

// Orders this thread's streaming (non-temporal) stores before anything it does next.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Scalar a * b + c for tails: fused where the ISA has FMA, like the vector fmadd.
template <class T>
inline T fma_scalar(T a, T b, T c) {
#if defined(__FMA__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// Lanes of a Vec<double> summed by halving (a fixed tree, so results are reproducible).
inline double reduce_add(Vec<double> a) {
#if defined(__AVX512F__)
  const __m256d four = _mm256_add_pd(_mm512_castpd512_pd256(a.v), _mm512_extractf64x4_pd(a.v, 1));
  const __m128d two = _mm_add_pd(_mm256_castpd256_pd128(four), _mm256_extractf128_pd(four, 1));
  return _mm_cvtsd_f64(_mm_add_sd(two, _mm_unpackhi_pd(two, two)));
#elif defined(__AVX2__)
  const __m128d two = _mm_add_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(two, _mm_unpackhi_pd(two, two)));
#elif defined(__SSE2__)
  return _mm_cvtsd_f64(_mm_add_sd(a.v, _mm_unpackhi_pd(a.v, a.v)));
#else
  return a.v;
#endif
}

// The lanes of one Vec<double> added along transpose_add's tree, pairs of neighbours first:
// the same bits as that vector's lane of transpose_add.
inline double pairwise_add(Vec<double> a) {
#if defined(__AVX512F__)
  const __m512d pairs = _mm512_add_pd(a.v, _mm512_permute_pd(a.v, 0x55));  // l0 + l1, ...
  const __m512d quads =
      _mm512_add_pd(pairs, _mm512_shuffle_f64x2(pairs, pairs, _MM_SHUFFLE(2, 3, 0, 1)));
  const __m512d all =
      _mm512_add_pd(quads, _mm512_shuffle_f64x2(quads, quads, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm512_cvtsd_f64(all);
#elif defined(__AVX2__)
  const __m256d pairs = _mm256_add_pd(a.v, _mm256_permute_pd(a.v, 0x5));
  return _mm_cvtsd_f64(_mm_add_pd(_mm256_castpd256_pd128(pairs), _mm256_extractf128_pd(pairs, 1)));
#elif defined(__SSE2__)
  return _mm_cvtsd_f64(_mm_add_sd(a.v, _mm_unpackhi_pd(a.v, a.v)));
#else
  return a.v;
#endif
}

// The horizontal sums of Vec<double>::width vectors at once: lane r of the result is the sum
// of the lanes of a[r]. Every lane is added along the same fixed tree, pairs of neighbours
// first ((l0 + l1) + (l2 + l3)) + ..., whichever position its vector has in a.
inline Vec<double> transpose_add(const Vec<double>* a) {
#if defined(__AVX512F__)
  // Step 1: t[k] holds, per 128-bit lane, (a[2k] pair sum, a[2k + 1] pair sum).
  __m512d t[4];
  for (int k = 0; k < 4; ++k)
    t[k] = _mm512_add_pd(_mm512_unpacklo_pd(a[2 * k].v, a[2 * k + 1].v),
                         _mm512_unpackhi_pd(a[2 * k].v, a[2 * k + 1].v));
  // Step 2: sums of 128-bit lanes 0 + 1 and 2 + 3, for four vectors.
  __m512d u[2];
  for (int k = 0; k < 2; ++k)
    u[k] = _mm512_add_pd(_mm512_shuffle_f64x2(t[2 * k], t[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f64x2(t[2 * k], t[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  // Step 3: the two halves of each vector.
  return {_mm512_add_pd(_mm512_shuffle_f64x2(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                        _mm512_shuffle_f64x2(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)))};
#elif defined(__AVX2__)
  const __m256d t0 =
      _mm256_add_pd(_mm256_unpacklo_pd(a[0].v, a[1].v), _mm256_unpackhi_pd(a[0].v, a[1].v));
  const __m256d t1 =
      _mm256_add_pd(_mm256_unpacklo_pd(a[2].v, a[3].v), _mm256_unpackhi_pd(a[2].v, a[3].v));
  return {
      _mm256_add_pd(_mm256_permute2f128_pd(t0, t1, 0x20), _mm256_permute2f128_pd(t0, t1, 0x31))};
#elif defined(__SSE2__)
  return {_mm_add_pd(_mm_unpacklo_pd(a[0].v, a[1].v), _mm_unpackhi_pd(a[0].v, a[1].v))};
#else
  return a[0];
#endif
}

// Four float64 totals side by side: lane k holds the total of the k-th of four vectors (the
// four runs that BatchNorm's short runs sum at a time; see store_unit_sums4 in
// batch_norm_kernel.cpp). lane_totals4 adds each vector's lanes in its own type, along one fixed
// tree for all four (the ISA's: AVX2 pairs of neighbours, then pairs of pairs, then the two
// 128-bit halves; AVX-512 first the two 256-bit halves), and widens the four totals at once.
// Each run's total widened and summed in float64 on its own was about half the time of the
// statistics of 49-value runs.
#if defined(__AVX512F__) || defined(__AVX2__)
struct Quad {
  __m256d v;
};
inline Quad quad_zero() { return {_mm256_setzero_pd()}; }
inline Quad operator+(Quad a, Quad b) { return {_mm256_add_pd(a.v, b.v)}; }
#if defined(__AVX512F__)
inline __m256 low_plus_high(Vec<float> a) {
  return _mm256_add_ps(_mm512_castps512_ps256(a.v), _mm512_extractf32x8_ps(a.v, 1));
}
inline __m256d low_plus_high(Vec<double> a) {
  return _mm256_add_pd(_mm512_castpd512_pd256(a.v), _mm512_extractf64x4_pd(a.v, 1));
}
#else
inline __m256 low_plus_high(Vec<float> a) { return a.v; }
inline __m256d low_plus_high(Vec<double> a) { return a.v; }
#endif
inline Quad lane_totals4(const Vec<float> (&a)[4]) {
  // per 128-bit half: (a0 l0 + l1, a0 l2 + l3, a1 ...), then (a0 (l0 + l1) + (l2 + l3), a1, a2, a3)
  const __m256 pairs01 = _mm256_hadd_ps(low_plus_high(a[0]), low_plus_high(a[1]));
  const __m256 pairs23 = _mm256_hadd_ps(low_plus_high(a[2]), low_plus_high(a[3]));
  const __m256 quads = _mm256_hadd_ps(pairs01, pairs23);
  return {
      _mm256_cvtps_pd(_mm_add_ps(_mm256_castps256_ps128(quads), _mm256_extractf128_ps(quads, 1)))};
}
inline Quad lane_totals4(const Vec<double> (&a)[4]) {
  // (a0 l0 + l1, a1 l0 + l1, a0 l2 + l3, a1 l2 + l3), then the halves of each added
  const __m256d pairs01 = _mm256_hadd_pd(low_plus_high(a[0]), low_plus_high(a[1]));
  const __m256d pairs23 = _mm256_hadd_pd(low_plus_high(a[2]), low_plus_high(a[3]));
  return {_mm256_add_pd(_mm256_permute2f128_pd(pairs01, pairs23, 0x20),
                        _mm256_permute2f128_pd(pairs01, pairs23, 0x31))};
}
// p[2k] = a lane k, p[2k + 1] = b lane k.
inline void store_pairs(double* p, Quad a, Quad b) {
  const __m256d even = _mm256_unpacklo_pd(a.v, b.v), odd = _mm256_unpackhi_pd(a.v, b.v);
  _mm256_storeu_pd(p, _mm256_permute2f128_pd(even, odd, 0x20));
  _mm256_storeu_pd(p + 4, _mm256_permute2f128_pd(even, odd, 0x31));
}
#elif defined(__SSE2__)
struct Quad {
  __m128d lo, hi;
};
inline Quad quad_zero() { return {_mm_setzero_pd(), _mm_setzero_pd()}; }
inline Quad operator+(Quad a, Quad b) { return {_mm_add_pd(a.lo, b.lo), _mm_add_pd(a.hi, b.hi)}; }
inline Quad lane_totals4(const Vec<float> (&a)[4]) {
  __m128 l0 = a[0].v, l1 = a[1].v, l2 = a[2].v, l3 = a[3].v;
  _MM_TRANSPOSE4_PS(l0, l1, l2, l3);  // lk: lane k of each vector
  const __m128 totals = _mm_add_ps(_mm_add_ps(l0, l1), _mm_add_ps(l2, l3));
  return {_mm_cvtps_pd(totals), _mm_cvtps_pd(_mm_movehl_ps(totals, totals))};
}
inline Quad lane_totals4(const Vec<double> (&a)[4]) {
  return {_mm_add_pd(_mm_unpacklo_pd(a[0].v, a[1].v), _mm_unpackhi_pd(a[0].v, a[1].v)),
          _mm_add_pd(_mm_unpacklo_pd(a[2].v, a[3].v), _mm_unpackhi_pd(a[2].v, a[3].v))};
}
inline void store_pairs(double* p, Quad a, Quad b) {
  _mm_storeu_pd(p, _mm_unpacklo_pd(a.lo, b.lo));
  _mm_storeu_pd(p + 2, _mm_unpackhi_pd(a.lo, b.lo));
  _mm_storeu_pd(p + 4, _mm_unpacklo_pd(a.hi, b.hi));
  _mm_storeu_pd(p + 6, _mm_unpackhi_pd(a.hi, b.hi));
}
#else
struct Quad {
  double v[4];
};
inline Quad quad_zero() { return {{0.0, 0.0, 0.0, 0.0}}; }
inline Quad operator+(Quad a, Quad b) {
  for (int k = 0; k < 4; ++k) a.v[k] += b.v[k];
  return a;
}
template <class T>
inline Quad lane_totals4(const Vec<T> (&a)[4]) {
  return {{static_cast<double>(a[0].v), static_cast<double>(a[1].v), static_cast<double>(a[2].v),
           static_cast<double>(a[3].v)}};
}
inline void store_pairs(double* p, Quad a, Quad b) {
  for (int k = 0; k < 4; ++k) {
    p[2 * k] = a.v[k];
    p[2 * k + 1] = b.v[k];
  }
}
#endif

// The sum of v[kBegin .. kBegin + kCount) as a pairwise tree, ((v0 + v1) + (v2 + v3)) + ...:
// log2(kCount) roundings per lane instead of kCount - 1, and a short dependency chain. The
// recursion is resolved at compile time, so the vectors can stay in registers.
template <int kBegin, int kCount, class T, int N>
inline Vec<T> tree_sum(const Vec<T> (&v)[N]) {
  static_assert(kCount >= 1 && kBegin + kCount <= N, "a range of v");
  if constexpr (kCount == 1) {
    return v[kBegin];
  } else {
    constexpr int kHalf = kCount / 2;
    return tree_sum<kBegin, kHalf>(v) + tree_sum<kBegin + kHalf, kCount - kHalf>(v);
  }
}

template <class T, int N>
inline Vec<T> tree_sum(const Vec<T> (&v)[N]) {
  return tree_sum<0, N>(v);
}

// Wide<T>: a Vec<T> held as float64 lanes. For double it is the vector itself; for float it
// is the low and high halves converted exactly to double.
template <class T>
struct Wide;

template <>
struct Wide<double> {
  static constexpr int parts = 1;
  Vec<double> part[1];
  static Wide of(Vec<double> a) { return {{a}}; }
  Vec<double> folded() const { return part[0]; }
};

template <>
struct Wide<float> {
  static constexpr int parts = Vec<float>::width == 1 ? 1 : 2;
  Vec<double> part[2];
  static Wide of(Vec<float> a) { return {{widen_lo(a), widen_hi(a)}}; }
  // The parts added lane by lane: one float64 vector with the same total.
  Vec<double> folded() const { return parts == 1 ? part[0] : part[0] + part[1]; }
};

// The products of the parts of a and b, added lane by lane (as folded adds the parts).
template <class T>
inline Vec<double> folded_products(const Wide<T>& a, const Wide<T>& b) {
  Vec<double> sum = a.part[0] * b.part[0];
  for (int k = 1; k < Wide<T>::parts; ++k) sum = sum + a.part[k] * b.part[k];
  return sum;
}

// a + b, part by part.
template <class T>
inline Wide<T> operator+(Wide<T> a, const Wide<T>& b) {
  for (int k = 0; k < Wide<T>::parts; ++k) a.part[k] = a.part[k] + b.part[k];
  return a;
}

// A float64 vector accumulator for sums of Vec<T> values.
template <class T>
struct WideSum {
  Vec<double> part[Wide<T>::parts];

  static WideSum zero() {
    WideSum s;
    for (auto& p : s.part) p = Vec<double>::broadcast(0.0);
    return s;
  }
  // sum += a
  void add(Wide<T> a) {
    for (int k = 0; k < Wide<T>::parts; ++k) part[k] = part[k] + a.part[k];
  }
  // The float64 lanes, in the order of the Vec<T> lanes they came from.
  void store(double* p) const {
    for (int k = 0; k < Wide<T>::parts; ++k) part[k].store(p + k * Vec<double>::width);
  }
  double total() const {
    Vec<double> s = part[0];
    for (int k = 1; k < Wide<T>::parts; ++k) s = s + part[k];
    return reduce_add(s);
  }
};

// Blocked summation: kChains independent Vec<T> partial sums hide the add latency; each lane
// of a chain takes at most kTermsPerLane terms before the chains are added into a float64
// WideSum. float32 sums thus round in float32 over only a few terms, at float32 speed.
constexpr int kChains = 4;
constexpr int kTermsPerLane = 16;

template <class T, int kC = kChains>
struct Chains {
  static_assert(kC == 1 || kC == 2 || kC == 4, "chains are added as a binary tree");
  Vec<T> acc[kC];

  // Zeros, one broadcast per chain (a loop of zero stores here became a memset, which GCC
  // expanded as `rep stos` on the stack: 18 % of the statistics of 196-value runs).
  static Chains zero() { return zero_of(std::make_integer_sequence<int, kC>{}); }
  template <int... kU>
  static Chains zero_of(std::integer_sequence<int, kU...>) {
    return Chains{{(static_cast<void>(kU), Vec<T>::broadcast(T(0)))...}};
  }
  // total += the chains widened and added as a tree, (c0 + c1) + (c2 + c3): a short dependency
  // chain. The chains restart at zero. (Written out: as loops over the tree's steps, GCC kept
  // the widened chains on the stack and added them there. BatchNorm statistics of 196-value
  // float32 runs, medians of 5-6: 8x64x14x14 in L2, 1 thread, 25 -> 14-18 us; 256x256x14x14
  // 1 / 2 threads 5.8 / 3.1 -> 5.3 / 2.8 ms; Zen 3, AVX2.)
  void flush_into(WideSum<T>& total) {
    const auto wide = [&](int u) { return Wide<T>::of(acc[u]); };
    if constexpr (kC == 1)
      total.add(wide(0));
    else if constexpr (kC == 2)
      total.add(wide(0) + wide(1));
    else
      total.add((wide(0) + wide(1)) + (wide(2) + wide(3)));
    *this = zero();
  }
};

// How many chains a loop over n_vec values (whole vectors) uses: enough to hide the add
// latency on long runs, fewer on short rows where flushing four chains would dominate.
template <class T>
constexpr int chains_for(int64_t n_vec) {
  return n_vec >= 16 * Vec<T>::width ? 4 : n_vec >= 4 * Vec<T>::width ? 2 : 1;
}

// Calls step(j, u) for each full vector j in [0, n_vec) (n_vec a multiple of the width), u being
// the chain to accumulate into, then flush() after every block of kC * kTermsPerLane
// vectors and after the last one. The order depends on n_vec only.
template <class T, int kC = kChains, class Step, class Flush>
inline void blocked_loop(int64_t n_vec, const Step& step, const Flush& flush) {
  constexpr int64_t W = Vec<T>::width;
  constexpr int64_t kBlock = kC * kTermsPerLane * W;
  for (int64_t j0 = 0; j0 < n_vec; j0 += kBlock) {
    const int64_t j1 = j0 + kBlock < n_vec ? j0 + kBlock : n_vec;
    int64_t j = j0;
    for (; j + kC * W <= j1; j += kC * W)
      for (int u = 0; u < kC; ++u) step(j + u * W, u);
    for (; j < j1; j += W) step(j, 0);
    flush();
  }
}

// p[0 .. Vec<T>::width) += a, in float64 (a row of per-block parameter-gradient partials).
template <class T>
inline void accumulate_wide(double* p, Vec<T> a) {
  const Wide<T> w = Wide<T>::of(a);
  for (int k = 0; k < Wide<T>::parts; ++k) {
    double* q = p + k * Vec<double>::width;
    (Vec<double>::load(q) + w.part[k]).store(q);
  }
}

// Calls f(std::integral_constant<int, kC>{}) with kC = chains_for<T>(n_vec), inlined into the
// caller. For callers on short runs, where GCC left with_chains out of line: the sums and their
// totals then went through the stack, once per run. BatchNorm backward's sums of 49-value runs
// (64x2048x7x7 float32, 2 threads, Zen 3, AVX2, interleaved medians of 9): 3.4 -> 2.4 ms. Not
// for all: inlined into the LayerNorm backward's rows, 8192x768 on 1 thread went 4.3 -> 5.0 ms.
template <class T, class F>
[[gnu::always_inline]] inline decltype(auto) with_chains_inlined(int64_t n_vec, const F& f) {
  switch (chains_for<T>(n_vec)) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    default:
      return f(std::integral_constant<int, 4>{});
  }
}

// The same, inlined or not as GCC sees fit.
template <class T, class F>
inline decltype(auto) with_chains(int64_t n_vec, const F& f) {
  return with_chains_inlined<T>(n_vec, f);
}

// Whether every row of a row-major array at p with rows of `cols` values starts on a vector
// (where the vector stores of each row can stream without a scalar head).
template <class T>
inline bool vector_aligned_rows(const T* p, int64_t cols) {
  return cols % Vec<T>::width == 0 &&
         reinterpret_cast<std::uintptr_t>(p) % (Vec<T>::width * sizeof(T)) == 0;
}

// out[j] = f(j) for j in [0, n): vector_fn(j) -> Vec<T> for full vectors, scalar_fn(j) -> T
// for the ends; both must compute the same value. With kStream the vector stores bypass the
// cache (for outputs too large to stay there; saves the read-for-ownership of each line), after
// a scalar head that aligns them; call stream_fence() once the task is done.
// A cache line must not take both: one written partly by streaming and partly by ordinary
// stores left the write-combining buffer early and was read again. So where out's ends are
// not vector-aligned (rows of a length that is not a multiple of the vector, or an `out` at an
// odd address), the vectors in the line of a scalar head or tail take ordinary stores too;
// the call for the neighbouring row does the same on its side of the shared line. (Before:
// LayerNorm forward of 8192x1001 float32 10.0 ms against 2.4 ms for 8192x1008, and a
// channels-last BatchNorm inference into an `out` 48 bytes past a line 28 against 1.4 ms;
// Zen 3, AVX2.)
// vector_fn is copied into the call: held through a reference, what it captured (pointers,
// constants) was loaded again after every vector store, which may alias anything, wherever the
// call was not inlined. Through runs_elementwise, which does the same: BatchNorm inference
// 8x512x7x7 float32, 1 thread, interleaved medians of 10, 44 -> 33 us (Zen 3, AVX2).
template <class T, bool kStream, class VectorFn, class ScalarFn>
inline void elementwise(T* out, int64_t n, const VectorFn& vector_fn_in,
                        const ScalarFn& scalar_fn) {
  using V = Vec<T>;
  const VectorFn vector_fn = vector_fn_in;
  constexpr int64_t kBytes = V::width * int64_t{sizeof(T)};
  constexpr int64_t kLineValues = kCacheLineBytes / int64_t{sizeof(T)};
  static_assert(kLineValues % V::width == 0, "a cache line holds whole vectors");
  const auto address = reinterpret_cast<std::uintptr_t>(out);
  const int64_t misalign = static_cast<int64_t>(address % kBytes);
  // Streaming needs aligned vectors: possible unless out is not even aligned to T.
  const bool stream = kStream && misalign % int64_t{sizeof(T)} == 0;
  int64_t head = 0;
  if (stream && misalign != 0) head = (kBytes - misalign) / int64_t{sizeof(T)};
  if (head > n) head = n;
  for (int64_t j = 0; j < head; ++j) out[j] = scalar_fn(j);
  const int64_t n_vec = head + (n - head) / V::width * V::width;
  int64_t j = head;
  if (stream) {
    // Streamed: [stream_begin, stream_end), past the line of a scalar head and before that of
    // a scalar tail.
    int64_t stream_begin = head;
    if (head > 0) {
      const int64_t line_offset =
          static_cast<int64_t>((address + head * sizeof(T)) % kCacheLineBytes);
      if (line_offset != 0) stream_begin += (kCacheLineBytes - line_offset) / int64_t{sizeof(T)};
      if (stream_begin > n_vec) stream_begin = n_vec;
    }
    int64_t stream_end = n_vec;
    if (n_vec < n) {
      const int64_t line_offset =
          static_cast<int64_t>((address + n_vec * sizeof(T)) % kCacheLineBytes);
      stream_end -= line_offset / int64_t{sizeof(T)};
      if (stream_end < stream_begin) stream_end = stream_begin;
    }
    for (; j < stream_begin; j += V::width) vector_fn(j).store(out + j);
    for (; j < stream_end; j += V::width) vector_fn(j).stream(out + j);
  }
  for (; j < n_vec; j += V::width) vector_fn(j).store(out + j);
  for (j = n_vec; j < n; ++j) out[j] = scalar_fn(j);
}

}  // namespace NORMKIT_CPU_NS
}  // namespace normkit
