#pragma once
// Mean and centred sum of squares of a contiguous run of values, and their exact merge.
// Shared by the LayerNorm and BatchNorm kernels of one ISA build.

#include <cmath>
#include <cstdint>

#include "kernels/vec.hpp"

namespace normkit {
namespace NORMKIT_CPU_NS {

struct Moments {
  double count, mean, m2;  // m2 = sum of squared deviations from mean
};

// Moments from the sums of d = x - shift and d^2 over n values:
//   mean = shift + sum(d) / n;  m2 = sum(d^2) - sum(d)^2 / n
// (the shifted-data formula: exact up to a few roundings while |mean - shift| is within a
// couple of standard deviations; x - shift is itself exact for data near the shift).
inline Moments shifted_moments_of(double shift, double sum_d, double sum_d2, double count) {
  const double mean_d = sum_d / count;
  return {count, shift + mean_d, sum_d2 - sum_d * mean_d};
}

// True when the shift was too far from the mean for the shifted formula (> 2 std).
inline bool shift_too_far(const Moments& m, double shift) {
  const double offset = m.mean - shift;
  return offset * offset * m.count > 4.0 * m.m2;
}

// Sums of d = x - shift and d^2 over x[0, n) (sum_d, sum_d2), blocked into float64. With kAhead
// it also prefetches x `ahead` elements on into L2 (values a later call will read). also(j) is
// called at every whole vector j of x, in the same loop: other work that the pass carries along
// (normalizing the previous row; see forward_row_pairs in layer_norm_kernel.cpp).
struct ShiftedSums {
  double d, d2;
};

struct NoWork {
  template <class... Args>
  void operator()(Args...) const {}
};

// The float64 totals of shifted_sums, which can go on over several runs of values (one
// horizontal sum for them all: BatchNorm's channels of short runs, see
// train_forward_short_runs in batch_norm_kernel.cpp).
template <class T>
struct ShiftedTotals {
  WideSum<T> d = WideSum<T>::zero(), d2 = WideSum<T>::zero();
  double tail_d = 0.0, tail_d2 = 0.0;  // the values past the last whole vector of each run

  ShiftedSums sums() const { return {d.total() + tail_d, d2.total() + tail_d2}; }
};

// totals += the sums of d = x - shift and d^2 over x[0, n) (see shifted_sums).
template <class T, bool kAhead = false, class Also = NoWork>
[[gnu::always_inline]] inline void add_shifted_sums(ShiftedTotals<T>& totals, const T* x, int64_t n,
                                                    T shift, int64_t ahead = 0,
                                                    const Also& also = {}) {
  using V = Vec<T>;
  const int64_t n_vec = n - n % V::width;
  const V shift_v = V::broadcast(shift);
  with_chains<T>(n_vec, [&](auto chains) {
    constexpr int kC = decltype(chains)::value;
    Chains<T, kC> sum_d = Chains<T, kC>::zero(), sum_d2 = Chains<T, kC>::zero();
    blocked_loop<T, kC>(
        n_vec,
        [&](int64_t j, int u) {
          if constexpr (kAhead) __builtin_prefetch(x + j + ahead, 0, 2);
          also(j);
          const V d = V::load(x + j) - shift_v;
          sum_d.acc[u] = sum_d.acc[u] + d;
          sum_d2.acc[u] = fmadd(d, d, sum_d2.acc[u]);
        },
        [&] {
          sum_d.flush_into(totals.d);
          sum_d2.flush_into(totals.d2);
        });
  });
  for (int64_t j = n_vec; j < n; ++j) {
    const double d = static_cast<double>(x[j] - shift);
    totals.tail_d += d;
    totals.tail_d2 += d * d;
  }
}

template <class T, bool kAhead = false, class Also = NoWork>
[[gnu::always_inline]] inline ShiftedSums shifted_sums(const T* x, int64_t n, T shift,
                                                       int64_t ahead = 0, const Also& also = {}) {
  ShiftedTotals<T> totals;
  add_shifted_sums<T, kAhead>(totals, x, n, shift, ahead, also);
  return totals.sums();
}

// Moments of x[0, n) around shift (shifted_sums); the mean comes out relative to ref (0: the
// mean itself; see chunk_moments). kAhead, ahead: as in shifted_sums.
template <class T, bool kAhead = false, class Also = NoWork>
Moments shifted_moments(const T* x, int64_t n, T shift, T ref, int64_t ahead = 0,
                        const Also& also = {}) {
  const ShiftedSums sums = shifted_sums<T, kAhead>(x, n, shift, ahead, also);
  return shifted_moments_of(static_cast<double>(shift) - static_cast<double>(ref), sums.d, sums.d2,
                            static_cast<double>(n));
}

// Moments of the n values x[0], x[stride], ..., x[(n - 1) * stride] with every sum in float64
// (two passes; the mean relative to ref, as in chunk_moments). The other paths sum float32
// values in float32 blocks: when the squared deviations overflow float32 (values 1.8e19 or more
// from the shift) their m2 comes out inf, and they redo the values here. Float64 sums overflow
// too near the largest values, where a shift a rounding off (an ulp of 1e308 is 2e292) leaves
// deviations whose squares pass it; ref is a value of the input, so around it a constant row or
// channel gives deviations of exactly 0. Non-finite input still gives a non-finite result.
template <class T>
[[gnu::noinline, gnu::cold]] Moments wide_moments(const T* x, int64_t n, int64_t stride, T ref) {
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j)
    sum += static_cast<double>(x[j * stride]) - static_cast<double>(ref);
  const double mean = sum / static_cast<double>(n);
  double m2 = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const double d = (static_cast<double>(x[j * stride]) - static_cast<double>(ref)) - mean;
    m2 += d * d;
  }
  return {static_cast<double>(n), mean, m2};
}

// True when m came from sums that overflowed (see wide_moments).
inline bool overflowed(const Moments& m) { return !std::isfinite(m.m2); }

// shifted_moments_of, shift_too_far and overflowed for a vector of sets at once (a lane each,
// count values each): the same bits as a lane at a time. Bit k of too_far / again: set k's shift
// lay more than 2 std from its mean / that, or its sums overflowed (the set is to be done again).
struct ShiftedMomentsLanes {
  Vec<double> mean, m2;
  int too_far, again;
};

inline ShiftedMomentsLanes shifted_moments_lanes(Vec<double> shift, Vec<double> sum_d,
                                                 Vec<double> sum_d2, Vec<double> count) {
  using D = Vec<double>;
  // Scalar math: mean_d = sum_d / count;  mean = shift + mean_d;  m2 = sum_d2 - sum_d * mean_d;
  // too_far if (mean - shift)^2 * count > 4 * m2;  again if too_far or m2 is not finite.
  const D mean_d = sum_d / count;
  const D mean = shift + mean_d, m2 = sum_d2 - sum_d * mean_d;
  const D offset = mean - shift;
  const int too_far = greater_lanes(offset * offset * count, D::broadcast(4.0) * m2);
  const int again = too_far | (~finite_lanes(m2) & ((1 << D::width) - 1));
  return {mean, m2, too_far, again};
}

// 1 / Vec<T>::width in float64: a power of two, so that the values scaled by it add up to
// their sum / width with the same bits, and float64 values near the largest add up without
// overflowing (the first vectors' means below).
template <class T>
inline Vec<double> per_lane_share() {
  return Vec<double>::broadcast(1.0 / Vec<T>::width);
}

// The mean of the vector of values at x (as a shift for the moments of a run starting there),
// summed as values / width (see per_lane_share).
template <class T>
inline T first_vector_mean(const T* x) {
  return static_cast<T>(pairwise_add(Wide<T>::of(Vec<T>::load(x)).folded() * per_lane_share<T>()));
}

// The rare rest of a shifted pass over x[0, n) whose result `first` (mean relative to ref) came
// from a shift too far from the mean, or from sums that overflowed: the pass again
// around the mean found first, and in float64 (wide_moments) if the sums overflow. Out of line
// so that the common case of its callers stays small.
template <class T>
[[gnu::noinline, gnu::cold]] Moments moments_again(const T* x, int64_t n, T ref,
                                                   const Moments& first, bool too_far) {
  Moments m = first;
  if (too_far) m = shifted_moments(x, n, static_cast<T>(static_cast<double>(ref) + m.mean), ref);
  return overflowed(m) ? wide_moments(x, n, 1, ref) : m;
}

// Moments of x[0, n) (a chunk that stays in L1). The shift is the mean of the first vector of
// values: near the mean for any reasonable data, at the cost of one horizontal sum. If it
// turns out more than two standard deviations off (an outlier up front, sorted data), the
// pass is repeated around the mean just found, so the result is always exact to a few ulps.
// The mean comes out relative to ref, a value of the same row or channel that all its chunks
// share (its first value): merging chunks then subtracts small relative means, not two nearly
// equal absolute ones, which would lose digits of the between-chunk part of m2 when
// |mean| >> std (float64 rstd was off by 5e-13 on sorted rows at mean 1e4 x std).
// kAhead, ahead, also: as in shifted_sums (also runs in the first pass only).
template <class T, bool kAhead = false, class Also = NoWork>
[[gnu::always_inline]] inline Moments chunk_moments(const T* x, int64_t n, T ref, int64_t ahead = 0,
                                                    const Also& also = {}) {
  const T shift = n >= Vec<T>::width ? first_vector_mean(x) : x[0];
  const Moments m = shifted_moments<T, kAhead>(x, n, shift, ref, ahead, also);
  const bool too_far = shift_too_far(m, static_cast<double>(shift) - static_cast<double>(ref));
  if (too_far || overflowed(m)) return moments_again(x, n, ref, m, too_far);
  return m;
}

// Chan, Golub & LeVeque: moments of the union of two disjoint sets.
inline Moments merge(const Moments& a, const Moments& b) {
  const double count = a.count + b.count;
  const double delta = b.mean - a.mean;
  return {count, a.mean + delta * (b.count / count),
          a.m2 + b.m2 + delta * delta * (a.count * (b.count / count))};
}

// Values of a run longer than this are taken chunk by chunk (each chunk stays in L1 while its
// pass runs) and the chunk moments merged in order.
constexpr int64_t kChunk = 4096;  // a multiple of every vector width

template <class T>
Moments run_moments(const T* x, int64_t n) {
  const T ref = x[0];
  Moments m = chunk_moments(x, n < kChunk ? n : kChunk, ref);
  for (int64_t c0 = kChunk; c0 < n; c0 += kChunk)
    m = merge(m, chunk_moments(x + c0, n - c0 < kChunk ? n - c0 : kChunk, ref));
  m.mean += static_cast<double>(ref);
  return m;
}

}  // namespace NORMKIT_CPU_NS
}  // namespace normkit
