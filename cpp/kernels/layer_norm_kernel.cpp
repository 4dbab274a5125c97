// LayerNorm forward and backward over the last axis of a (rows, cols) row-major array.
// Compiled once per ISA (see CMakeLists.txt); the math is derived in docs/layer_norm.md.
//
// Work partition (fixed by the shape alone, so any thread count gives bitwise equal results):
//  - each row is cut into chunks of kChunk elements; a chunk's statistics come from a shifted
//    pass over the chunk while it sits in L1 (moments.hpp), and chunks merge in order;
//  - rows are grouped into at most kMaxRowBlocks blocks; each block sums its dgamma/dbeta
//    contribution into its own float64 row, and the block rows are added in order at the end.
// Tall inputs run row blocks in parallel and finish each row while it is in cache; inputs with
// too few rows to share out also split rows by chunk. Both paths do the same arithmetic.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "cpu_features.hpp"
#include "kernels/kernels.hpp"
#include "kernels/moments.hpp"
#include "kernels/scratch.hpp"
#include "kernels/vec.hpp"
#include "threading.hpp"

namespace normkit {
namespace NORMKIT_CPU_NS {
namespace {

constexpr int64_t kMaxRowBlocks = 128;  // rows are grouped into at most this many blocks ...
// ... and fewer when their dgamma/dbeta partials (2 float64 rows per block: set at the first
// flush of the accumulators, added to every kRowsPerFlush rows after, summed at the end) would
// pass kPartialsBytes, down to kMinRowBlocks. With 128 blocks of 32 rows, a 4096x4096 float32
// backward moved 8 MB of partials besides its 201 MB, much of it to and from memory: 32 blocks
// measured 8.0 -> 6.8 ms on 2 threads (interleaved medians of 7; 16 blocks no faster).
constexpr int64_t kPartialsBytes = int64_t{1} << 20;
constexpr int64_t kMinRowBlocks = 32;
// Rows whose dgamma/dbeta contributions are summed in T before going to the float64 partials
// (backward); a row block holds at least that many.
constexpr int64_t kRowsPerFlush = 16;

struct Plan {
  int64_t rows, cols, n_chunks, rows_per_block, n_blocks;

  Plan(int64_t rows_, int64_t cols_)
      : rows(rows_),
        cols(cols_),
        n_chunks((cols_ + kChunk - 1) / kChunk),
        rows_per_block(0),
        n_blocks(0) {
    int64_t max_blocks = kPartialsBytes / (2 * int64_t{sizeof(double)} * (cols_ > 0 ? cols_ : 1));
    if (max_blocks < kMinRowBlocks) max_blocks = kMinRowBlocks;
    if (max_blocks > kMaxRowBlocks) max_blocks = kMaxRowBlocks;
    // Whole flushes of the accumulators (kRowsPerFlush rows) per block, at least one.
    rows_per_block = (rows_ + max_blocks - 1) / max_blocks;
    rows_per_block = (rows_per_block + kRowsPerFlush - 1) / kRowsPerFlush * kRowsPerFlush;
    if (rows_per_block < kRowsPerFlush) rows_per_block = kRowsPerFlush;
    n_blocks = (rows + rows_per_block - 1) / rows_per_block;
  }
  int64_t chunk_begin(int64_t c) const { return c * kChunk; }
  int64_t chunk_size(int64_t c) const {
    const int64_t end = (c + 1) * kChunk;
    return (end < cols ? end : cols) - c * kChunk;
  }
  int64_t block_begin(int64_t b) const { return b * rows_per_block; }
  int64_t block_end(int64_t b) const {
    const int64_t end = (b + 1) * rows_per_block;
    return end < rows ? end : rows;
  }
  // Row-at-a-time is cache-friendly; it needs enough rows (or blocks) to keep threads busy.
  bool rows_in_parallel(int64_t units) const {
    return n_chunks == 1 || units >= 4 * static_cast<int64_t>(get_num_threads());
  }
};

// ---------------------------------------------------------------------------------------------
// Forward

// Per-row constants of the normalization. The float64 mean is split into mean_hi (in T) and a
// remainder folded into the offset, so float32 output keeps full precision when
// |mean| >> std: x - mean_hi is exact there, and xhat = (x - mean_hi) * rstd + offset rounds
// once (with FMA).
template <class T>
struct RowScale {
  T mean_hi, rstd, offset;  // offset = -(mean - mean_hi) * rstd
};

template <class T>
RowScale<T> scale_of(double mean, double rstd) {
  const T hi = static_cast<T>(mean);
  return {hi, static_cast<T>(rstd), static_cast<T>(-(mean - static_cast<double>(hi)) * rstd)};
}

template <class T>
RowScale<T> row_scale(const Moments& m, double eps) {
  double var = m.m2 / m.count;
  if (var < 0.0) var = 0.0;  // rounding; NaN passes through
  return scale_of<T>(m.mean, 1.0 / std::sqrt(var + eps));
}

// The vector of y at column j, from the row's constants as vectors (hi, r, off).
// Scalar math: y = ((x - mean_hi) * rstd + offset) * gamma + beta   (gamma, beta optional)
template <class T, bool kGamma, bool kBeta>
inline Vec<T> normalized(const T* x, const T* gamma, const T* beta, Vec<T> hi, Vec<T> r, Vec<T> off,
                         int64_t j) {
  using V = Vec<T>;
  V v = fmadd(V::load(x + j) - hi, r, off);
  if constexpr (kGamma && kBeta) v = fmadd(v, V::load(gamma + j), V::load(beta + j));
  if constexpr (kGamma && !kBeta) v = v * V::load(gamma + j);
  if constexpr (!kGamma && kBeta) v = v + V::load(beta + j);
  return v;
}

// Scalar math: y = ((x - mean_hi) * rstd + offset) * gamma + beta   (gamma, beta optional)
template <class T, bool kGamma, bool kBeta, bool kStream>
void normalize_chunk(T* y, const T* x, const T* gamma, const T* beta, RowScale<T> s, int64_t n) {
  using V = Vec<T>;
  const V hi = V::broadcast(s.mean_hi), r = V::broadcast(s.rstd), off = V::broadcast(s.offset);
  elementwise<T, kStream>(
      y, n, [&](int64_t j) { return normalized<T, kGamma, kBeta>(x, gamma, beta, hi, r, off, j); },
      [&](int64_t j) {
        T v = fma_scalar(x[j] - s.mean_hi, s.rstd, s.offset);
        if constexpr (kGamma && kBeta) v = fma_scalar(v, gamma[j], beta[j]);
        if constexpr (kGamma && !kBeta) v = v * gamma[j];
        if constexpr (!kGamma && kBeta) v = v + beta[j];
        return v;
      });
}

// Normalizes columns [c0, c0 + n) of one row; gamma and beta are indexed by column.
template <class T, bool kStream>
void normalize(T* y_row, const T* x_row, const T* gamma, const T* beta, RowScale<T> s, int64_t c0,
               int64_t n) {
  T* y = y_row + c0;
  const T* x = x_row + c0;
  if (gamma && beta)
    return normalize_chunk<T, true, true, kStream>(y, x, gamma + c0, beta + c0, s, n);
  if (gamma) return normalize_chunk<T, true, false, kStream>(y, x, gamma + c0, nullptr, s, n);
  if (beta) return normalize_chunk<T, false, true, kStream>(y, x, nullptr, beta + c0, s, n);
  normalize_chunk<T, false, false, kStream>(y, x, nullptr, nullptr, s, n);
}

Moments row_moments_from_chunks(const double* chunk_moments_row, int64_t n_chunks) {
  // chunk_moments_row holds n_chunks (count, mean, m2) triples, means relative to one value.
  Moments m{chunk_moments_row[0], chunk_moments_row[1], chunk_moments_row[2]};
  for (int64_t c = 1; c < n_chunks; ++c) {
    const double* p = chunk_moments_row + 3 * c;
    m = merge(m, Moments{p[0], p[1], p[2]});
  }
  return m;
}

// Streamed short rows prefetch the row this many bytes ahead of the one they reach, into L2.
// 65536x128 float32 from memory, AVX-512, 1 / 2 threads, medians of 5 interleaved runs: 4 KiB
// into L1 4.7 / 2.4 ms, 8 KiB into L2 3.3-3.9 / 1.9-2.0 (16 KiB: 3.6 / 1.9; 32 KiB: 3.7 / 2.2);
// later, medians of 15 in a quieter hour: 3.16 / 1.88 -> 3.14 / 1.57. 131072x64 float64:
// 8.3 / 5.4 -> 6.7 / 4.1.
constexpr int64_t kPrefetchAhead = 8192;

// Short rows (at most kShortRowBytes) go through in groups of kGroup, one float64 lane per row:
// their cost is mostly per row (reductions), not per value.
constexpr int64_t kShortRowBytes = 1024;
constexpr int kGroup = static_cast<int>(Vec<double>::width);

// Per-row float64 sums, one Vec<double> of lane partials per row of a group.
using GroupLanes = Vec<double>[kGroup];

// The backward's sums of g = dy * gamma and g * xhat over each row of a group, a lane per row.
struct GroupGradSums {
  double g[kGroup], g_xhat[kGroup];
};

// The mean and m2 of the kGroup rows of a group (each of count values), a lane per row.
struct GroupMoments {
  double mean[kGroup], m2[kGroup];
};

// The constants of RowScale for the kGroup rows of a group, a lane per row.
template <class T>
struct GroupScales {
  T mean_hi[kGroup], rstd[kGroup], offset[kGroup];
  RowScale<T> operator[](int r) const { return {mean_hi[r], rstd[r], offset[r]}; }
};

// row_scale of the kGroup rows of a group at once: one vector division and square root for all
// of them instead of one per row, and the split of the mean (scale_of) a vector at a time too;
// the same bits. Scalar math: var = max(m2 / count, 0);  rstd = 1 / sqrt(var + eps);
// mean_hi = T(mean);  offset = -(mean - mean_hi) * rstd
template <class T>
void group_scales(GroupScales<T>& s, const GroupMoments& m, double count, double eps) {
  using D = Vec<double>;
  const D var = floor_at(D::load(m.m2) / D::broadcast(count), D::broadcast(0.0));
  const D rstd = D::broadcast(1.0) / square_root(var + D::broadcast(eps));
  const D mean = D::load(m.mean);
  store_narrow(s.mean_hi, mean);
  store_narrow(s.rstd, rstd);
  // (-rstd as -1 * rstd: the sign flip of the scalar expression, zeros included)
  store_narrow(s.offset, (mean - load_wide(s.mean_hi)) * (rstd * D::broadcast(-1.0)));
}

// lanes[r] += the lanes of acc[r] in float64, for every row of the group; acc restarts at 0.
template <class T>
void flush_group(GroupLanes& lanes, Vec<T> (&acc)[kGroup]) {
  for (int r = 0; r < kGroup; ++r) {
    lanes[r] = lanes[r] + Wide<T>::of(acc[r]).folded();
    acc[r] = Vec<T>::broadcast(T(0));
  }
}

// Calls step(j, r) for every row r of a group and every full vector j of its first n_vec
// columns, block of kTermsPerLane vectors by block and row by row within a block, and flush()
// after every block (of all rows).
template <class T, class Step, class Flush>
[[gnu::always_inline]] inline void group_loop(int64_t n_vec, const Step& step, const Flush& flush) {
  constexpr int64_t kBlock = kTermsPerLane * Vec<T>::width;
  for (int64_t j0 = 0; j0 < n_vec; j0 += kBlock) {
    const int64_t j1 = j0 + kBlock < n_vec ? j0 + kBlock : n_vec;
    for (int r = 0; r < kGroup; ++r)
      for (int64_t j = j0; j < j1; j += Vec<T>::width) step(j, r);
    flush();
  }
}

// Moments of the kGroup rows row[r] (cols values each, the first n_vec of them whole vectors;
// kVectors > 0: exactly kVectors vectors), from one shifted pass over each row as in
// chunk_moments: the shift is the mean of the row's first vector (its first value if
// shorter), then the sums of d = x - shift and d^2 (pairwise trees of vectors for kVectors > 0,
// else chains in T widened every kTermsPerLane terms). The group's lane sums are reduced all
// at once (transpose_add) instead of one horizontal sum per row; every row gets the same
// arithmetic wherever it sits in a group.
// The shifts come all at once up front (one transpose_add), or with kSequential row by row as
// the pass reaches each row (the same bits): rows streamed from memory are then read strictly
// in order, which the hardware prefetchers follow much better (65536x128 float32 from DRAM,
// one thread: 50 -> 40 ns per row), at a few more instructions per row.
// With kVectors > 0, after_row(r) is called once row r has been read.
template <class T, int64_t kVectors, bool kSequential, class AfterRow>
[[gnu::always_inline]] inline void group_moments(GroupMoments& out, const T* const (&row)[kGroup],
                                                 int64_t cols, int64_t n_vec,
                                                 const AfterRow& after_row) {
  using V = Vec<T>;
  const double count = static_cast<double>(cols);
  V acc[kGroup], acc_d2[kGroup];
  GroupLanes lanes, lanes_d2;
  double sum_d[kGroup], sum_d2[kGroup];

  // Scalar math: shift = mean(x[0 .. width))
  T shift[kGroup];
  V shift_v[kGroup];
  const bool shift_from_vector = n_vec > 0;
  if (!shift_from_vector) {
    for (int r = 0; r < kGroup; ++r) shift[r] = row[r][0];
  } else if (!kSequential) {
    double first[kGroup];
    // (as first_vector_mean sums them: values / width)
    for (int r = 0; r < kGroup; ++r)
      lanes[r] = Wide<T>::of(V::load(row[r])).folded() * per_lane_share<T>();
    transpose_add(lanes).store(first);
    for (int r = 0; r < kGroup; ++r) shift[r] = static_cast<T>(first[r]);
  }
  for (int r = 0; r < kGroup; ++r) {
    if (!kSequential || !shift_from_vector) shift_v[r] = V::broadcast(shift[r]);
    acc[r] = acc_d2[r] = V::broadcast(T(0));
    lanes[r] = lanes_d2[r] = Vec<double>::broadcast(0.0);
  }
  auto shift_row_if_sequential = [&](int r) {
    if (kSequential) {
      shift[r] = first_vector_mean(row[r]);
      shift_v[r] = V::broadcast(shift[r]);
    }
  };

  // Scalar math: d = x - shift;  sum_d = sum(d);  sum_d2 = sum(d * d)
  if constexpr (kVectors > 0) {
    for (int r = 0; r < kGroup; ++r) {
      // Streamed rows also prefetch the row kPrefetchAhead bytes further on (rows of a
      // streamed array are contiguous; a prefetch past its end is dropped). The hardware
      // prefetchers alone keep up with these rows only as well as the compiler's order of the
      // row's loads lets them: two builds of this same loop with the loads in another order
      // ran 65536x128 float32 from memory at 38 and 53 ns per row; with the prefetch, both
      // at 40. (Rows of the generic path below run slower with it: 77 -> 108 ns for 256
      // floats.)
      if constexpr (kSequential) {
        const char* ahead = reinterpret_cast<const char*>(row[r]) + kPrefetchAhead;
        for (int64_t b = 0; b < kVectors * int64_t{sizeof(V)}; b += 64)
          __builtin_prefetch(ahead + b, 0, 2);  // prefetcht1
      }
      shift_row_if_sequential(r);
      V d[kVectors], d2[kVectors];
      for (int k = 0; k < kVectors; ++k) {
        d[k] = V::load(row[r] + k * V::width) - shift_v[r];
        d2[k] = d[k] * d[k];
      }
      lanes[r] = Wide<T>::of(tree_sum(d)).folded();
      lanes_d2[r] = Wide<T>::of(tree_sum(d2)).folded();
      after_row(r);
    }
  } else {
    group_loop<T>(
        n_vec,
        [&](int64_t j, int r) {
          if (j == 0) shift_row_if_sequential(r);
          const V d = V::load(row[r] + j) - shift_v[r];
          acc[r] = acc[r] + d;
          acc_d2[r] = fmadd(d, d, acc_d2[r]);
        },
        [&] {
          flush_group(lanes, acc);
          flush_group(lanes_d2, acc_d2);
        });
  }
  // The columns past the last whole vector, in rows of a vector or more: the row's last vector,
  // its lanes before n_vec zeroed, its d and d^2 added in float64 (as the scalar loop below,
  // which takes rows shorter than a vector, adds them). With the output's tail (and the
  // backward's) a vector at a time too, against a value at a time: Zen 3, AVX2, float32, 1
  // thread, interleaved medians of 11, forward 4096x60 138 -> 119 us, 4096x100 173 -> 146,
  // 4096x127 216 -> 171, 4096x200 227 -> 212; backward 4096x127 268 -> 239, 4096x60 153 -> 148
  // (4096x100 and 4096x200 the same).
  const bool tail_vector = n_vec > 0 && n_vec < cols;
  if (tail_vector) {
    const int seen = static_cast<int>(V::width - (cols - n_vec));  // lanes already summed
    for (int r = 0; r < kGroup; ++r) {
      const Wide<T> d = Wide<T>::of(
          blend_at(V::broadcast(T(0)), V::load(row[r] + cols - V::width) - shift_v[r], seen));
      lanes[r] = lanes[r] + d.folded();
      lanes_d2[r] = lanes_d2[r] + folded_products(d, d);
    }
  }
  transpose_add(lanes).store(sum_d);
  transpose_add(lanes_d2).store(sum_d2);
  for (int r = 0; r < kGroup; ++r)
    for (int64_t j = tail_vector ? cols : n_vec; j < cols; ++j) {
      const double d = static_cast<double>(row[r][j] - shift[r]);
      sum_d[r] += d;
      sum_d2[r] += d * d;
    }
  // The moments of every row at once. A shift more than 2 std off (outliers up front, sorted
  // data), or overflowed sums: the row again (absolute mean: ref 0).
  using D = Vec<double>;
  const ShiftedMomentsLanes lanes_m =
      shifted_moments_lanes(load_wide(shift), D::load(sum_d), D::load(sum_d2), D::broadcast(count));
  lanes_m.mean.store(out.mean);
  lanes_m.m2.store(out.m2);
  for (int r = 0; lanes_m.again != 0 && r < kGroup; ++r) {
    if (!(lanes_m.again >> r & 1)) continue;
    const Moments m = moments_again(row[r], cols, T(0), {count, out.mean[r], out.m2[r]},
                                    lanes_m.too_far >> r & 1);
    out.mean[r] = m.mean;
    out.m2[r] = m.m2;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward

struct GradSums {
  double g, g_xhat;  // sum(g), sum(g * xhat) over a chunk or row
};

// One vector of the first backward pass at column j: returns g and sets xhat; with kAffine
// also adds dy * xhat and dy to the accumulators dgamma_acc and dbeta_acc (in T).
// Scalar math: xhat = (x - mean) * rstd;  g = dy * gamma
template <class T, bool kAffine>
inline Vec<T> grad_step(Vec<T>& xhat, Vec<T>& dgamma_acc, Vec<T>& dbeta_acc, const T* dy,
                        const T* x, const T* gamma, Vec<T> mean, Vec<T> rstd, int64_t j) {
  using V = Vec<T>;
  xhat = (V::load(x + j) - mean) * rstd;
  const V d = V::load(dy + j);
  if constexpr (kAffine) {
    dgamma_acc = fmadd(d, xhat, dgamma_acc);
    dbeta_acc = dbeta_acc + d;
    return d * V::load(gamma + j);
  } else {
    return d;
  }
}

// grad_step with the accumulators in memory, at dgamma_acc + j and dbeta_acc + j; with kSet
// they are set to what adding to zeros gives (0 + v: a -0 comes out +0), not read.
template <class T, bool kAffine, bool kSet = false>
inline Vec<T> grad_step(Vec<T>& xhat, T* dgamma_acc, T* dbeta_acc, const T* dy, const T* x,
                        const T* gamma, Vec<T> mean, Vec<T> rstd, int64_t j) {
  using V = Vec<T>;
  V acc_g = V::broadcast(T(0)), acc_b = acc_g;
  if constexpr (kAffine && !kSet) {
    acc_g = V::load(dgamma_acc + j);
    acc_b = V::load(dbeta_acc + j);
  }
  const V g = grad_step<T, kAffine>(xhat, acc_g, acc_b, dy, x, gamma, mean, rstd, j);
  if constexpr (kAffine) {
    acc_g.store(dgamma_acc + j);
    acc_b.store(dbeta_acc + j);
  }
  return g;
}

// The same for the columns [j0, n) past the last full vector, one by one, sums in float64
// (without kAccumulate, the sums only).
template <class T, bool kAffine, bool kAccumulate = kAffine, bool kSet = false>
GradSums tail_grad_sums(T* dgamma_acc, T* dbeta_acc, const T* dy, const T* x, const T* gamma,
                        T mean, T rstd, int64_t j0, int64_t n) {
  double sum_g = 0.0, sum_gx = 0.0;
  for (int64_t j = j0; j < n; ++j) {
    const T xhat = (x[j] - mean) * rstd;
    T g = dy[j];
    if constexpr (kAffine) {
      g = dy[j] * gamma[j];
      if constexpr (kAccumulate) {
        dgamma_acc[j] = fma_scalar(dy[j], xhat, kSet ? T(0) : dgamma_acc[j]);
        dbeta_acc[j] = (kSet ? T(0) : dbeta_acc[j]) + dy[j];
      }
    }
    sum_g += static_cast<double>(g);
    sum_gx += static_cast<double>(g) * static_cast<double>(xhat);
  }
  return {sum_g, sum_gx};
}

// First backward pass over one chunk of a row; with kAffine and kAccumulate also adds this row's
// dgamma/dbeta contribution to the partial rows dgamma_acc/dbeta_acc (in T, flushed to float64
// every few rows by flush_param_partials); with kSet, sets them to the row's contribution
// (as adding it to zeros would) instead of reading them.
// Without kAccumulate, also(j, xhat, dy) is called at every whole vector j, in the same loop,
// with that vector's xhat and dy: other work that the pass carries along (see shifted_sums).
// Scalar math: xhat = (x - mean) * rstd;  g = dy * gamma;
//              sums += (g, g * xhat);  dgamma_acc += dy * xhat;  dbeta_acc += dy
template <class T, bool kAffine, bool kAccumulate = kAffine, bool kSet = false, class Also = NoWork>
GradSums chunk_grad_sums(T* dgamma_acc, T* dbeta_acc, const T* dy, const T* x, const T* gamma,
                         T mean, T rstd, int64_t n, const Also& also = {}) {
  using V = Vec<T>;
  const int64_t n_vec = n - n % V::width;
  const V mean_v = V::broadcast(mean), rstd_v = V::broadcast(rstd);
  // A copy of `also` of its own (and `also` should capture by value): the vector stores `also`
  // makes may alias anything, so what it held through references (its pointers, its row's
  // constants) was loaded again from memory for every vector. backward_row_pairs, Zen 3, AVX2,
  // float32, 2 threads, interleaved medians of 8: 4096x4096 14.8 -> 13.1 ms.
  const Also work = also;
  WideSum<T> total_g = WideSum<T>::zero(), total_gx = WideSum<T>::zero();
  with_chains<T>(n_vec, [&](auto chains) {
    constexpr int kC = decltype(chains)::value;
    Chains<T, kC> sum_g = Chains<T, kC>::zero(), sum_gx = Chains<T, kC>::zero();
    blocked_loop<T, kC>(
        n_vec,
        [&](int64_t j, int u) {
          V xhat, g;
          if constexpr (kAccumulate) {
            g = grad_step<T, kAffine, kSet>(xhat, dgamma_acc, dbeta_acc, dy, x, gamma, mean_v,
                                            rstd_v, j);
          } else {
            V unused_g = V::broadcast(T(0)), unused_b = unused_g;
            g = grad_step<T, kAffine>(xhat, unused_g, unused_b, dy, x, gamma, mean_v, rstd_v, j);
            work(j, xhat, V::load(dy + j));  // (the load grad_step made)
          }
          sum_g.acc[u] = sum_g.acc[u] + g;
          sum_gx.acc[u] = fmadd(g, xhat, sum_gx.acc[u]);
        },
        [&] {
          sum_g.flush_into(total_g);
          sum_gx.flush_into(total_gx);
        });
  });
  const GradSums tail = tail_grad_sums<T, kAffine, kAccumulate, kSet>(dgamma_acc, dbeta_acc, dy, x,
                                                                      gamma, mean, rstd, n_vec, n);
  return {total_g.total() + tail.g, total_gx.total() + tail.g_xhat};
}

// part += acc (widened to float64); acc = 0. The block's first flush (`first`) sets part
// instead, to 0 + acc, which is what adding into a zeroed part gave (a -0 sum comes out +0):
// the partials need no zeroing pass (a memset of the 4 MiB of partials of one 262144-value row
// took a fifth of its backward).
template <class T>
void flush_param_partials(double* part, T* acc, int64_t n, bool first) {
  using V = Vec<T>;
  const int64_t n_vec = n - n % V::width;
  for (int64_t j = 0; j < n_vec; j += V::width) {
    if (first) {
      const Wide<T> w = Wide<T>::of(V::load(acc + j));
      for (int k = 0; k < Wide<T>::parts; ++k)
        (Vec<double>::broadcast(0.0) + w.part[k]).store(part + j + k * Vec<double>::width);
    } else {
      accumulate_wide(part + j, V::load(acc + j));
    }
    V::broadcast(T(0)).store(acc + j);
  }
  for (int64_t j = n_vec; j < n; ++j) {
    part[j] = (first ? 0.0 : part[j]) + static_cast<double>(acc[j]);
    acc[j] = T(0);
  }
}

// Scalar math: dx = (g - mean_g - xhat * mean_gxhat) * rstd,  neg_mean_gx = -mean_gxhat
template <class T>
inline Vec<T> dx_of(Vec<T> g, Vec<T> xhat, Vec<T> mean_g, Vec<T> neg_mean_gx, Vec<T> rstd) {
  return fmadd(xhat, neg_mean_gx, g - mean_g) * rstd;
}

// dx of the vector at column j of a row, from the row's constants as vectors.
// Scalar math: xhat = (x - mean) * rstd;  g = dy * gamma (kAffine; else dy);  dx as dx_of
template <class T, bool kAffine>
inline Vec<T> dx_at(const T* dy, const T* x, const T* gamma, Vec<T> mean, Vec<T> rstd,
                    Vec<T> mean_g, Vec<T> neg_mean_gx, int64_t j) {
  using V = Vec<T>;
  const V xhat = (V::load(x + j) - mean) * rstd;
  V g = V::load(dy + j);
  if constexpr (kAffine) g = g * V::load(gamma + j);
  return dx_of(g, xhat, mean_g, neg_mean_gx, rstd);
}

// Scalar math: dx = rstd * (g - mean_g - xhat * mean_gxhat),  g = dy * gamma
template <class T, bool kAffine, bool kStream>
void chunk_dx(T* dx, const T* dy, const T* x, const T* gamma, T mean, T rstd, T mean_g,
              T mean_gxhat, int64_t n) {
  using V = Vec<T>;
  const V mean_v = V::broadcast(mean), rstd_v = V::broadcast(rstd);
  const V mean_g_v = V::broadcast(mean_g), neg_mean_gx_v = V::broadcast(-mean_gxhat);
  elementwise<T, kStream>(
      dx, n,
      [&](int64_t j) {
        return dx_at<T, kAffine>(dy, x, gamma, mean_v, rstd_v, mean_g_v, neg_mean_gx_v, j);
      },
      [&](int64_t j) {
        const T xhat = (x[j] - mean) * rstd;
        T g = dy[j];
        if constexpr (kAffine) g = g * gamma[j];
        return fma_scalar(xhat, -mean_gxhat, g - mean_g) * rstd;
      });
}

template <class T>
struct BackwardArgs {
  T* dx;
  const T* dy;
  const T* x;
  const T* mean;
  const T* rstd;
  const T* gamma;
  double* dgamma_part;  // n_blocks x cols; nullptr without gamma or partials (backward_impl)
  double* dbeta_part;
};

bool flush_due(const Plan& p, int64_t block, int64_t row) {
  return (row - p.block_begin(block) + 1) % kRowsPerFlush == 0 || row + 1 == p.block_end(block);
}

// Whether a flush after `row` is its block's first (flush_param_partials' `first`).
bool first_flush(const Plan& p, int64_t block, int64_t row) {
  return row - p.block_begin(block) < kRowsPerFlush;
}

// acc_g/acc_b: the task's T accumulators for this chunk's columns; `set`: set them (the first
// row after they were last flushed) instead of adding to them.
template <class T>
GradSums grad_sums(const BackwardArgs<T>& a, const Plan& p, int64_t row, int64_t chunk, T* acc_g,
                   T* acc_b, bool set = false) {
  const int64_t c0 = p.chunk_begin(chunk), n = p.chunk_size(chunk);
  const int64_t off = row * p.cols + c0;
  if (a.gamma && set)
    return chunk_grad_sums<T, true, true, true>(acc_g, acc_b, a.dy + off, a.x + off, a.gamma + c0,
                                                a.mean[row], a.rstd[row], n);
  if (a.gamma)
    return chunk_grad_sums<T, true>(acc_g, acc_b, a.dy + off, a.x + off, a.gamma + c0, a.mean[row],
                                    a.rstd[row], n);
  return chunk_grad_sums<T, false>(nullptr, nullptr, a.dy + off, a.x + off, nullptr, a.mean[row],
                                   a.rstd[row], n);
}

// dx of columns [c0, c0 + n) of a row.
template <class T, bool kStream>
void dx_span(const BackwardArgs<T>& a, const Plan& p, int64_t row, int64_t c0, int64_t n,
             const GradSums& row_sums) {
  const int64_t off = row * p.cols + c0;
  const double count = static_cast<double>(p.cols);
  const T mean_g = static_cast<T>(row_sums.g / count);
  const T mean_gx = static_cast<T>(row_sums.g_xhat / count);
  if (a.gamma)
    chunk_dx<T, true, kStream>(a.dx + off, a.dy + off, a.x + off, a.gamma + c0, a.mean[row],
                               a.rstd[row], mean_g, mean_gx, n);
  else
    chunk_dx<T, false, kStream>(a.dx + off, a.dy + off, a.x + off, nullptr, a.mean[row],
                                a.rstd[row], mean_g, mean_gx, n);
}

template <class T, bool kStream>
void dx_chunk(const BackwardArgs<T>& a, const Plan& p, int64_t row, int64_t chunk,
              const GradSums& row_sums) {
  dx_span<T, kStream>(a, p, row, p.chunk_begin(chunk), p.chunk_size(chunk), row_sums);
}

// The sums of a row with gamma, chunk by chunk in order, leaving the dgamma/dbeta accumulators
// alone (group_dx adds the row's contributions to those).
template <class T>
GradSums row_grad_sums(const BackwardArgs<T>& a, const Plan& p, int64_t row) {
  GradSums sums{0.0, 0.0};
  for (int64_t c = 0; c < p.n_chunks; ++c) {
    const int64_t c0 = p.chunk_begin(c), off = row * p.cols + c0;
    const GradSums s =
        chunk_grad_sums<T, true, false>(nullptr, nullptr, a.dy + off, a.x + off, a.gamma + c0,
                                        a.mean[row], a.rstd[row], p.chunk_size(c));
    sums.g += s.g;
    sums.g_xhat += s.g_xhat;
  }
  return sums;
}

// Per-row constants of dx, as dx_span computes them.
template <class T>
struct RowDx {
  T mean, rstd, mean_g, neg_mean_gx;
};

template <class T>
RowDx<T> row_dx(const BackwardArgs<T>& a, const Plan& p, int64_t row, const GradSums& s) {
  const double count = static_cast<double>(p.cols);
  return {a.mean[row], a.rstd[row], static_cast<T>(s.g / count), -static_cast<T>(s.g_xhat / count)};
}

// kN vectors of columns from j0 on, down the n_rows rows from `row` (constants in rc): dx, and
// the rows' dgamma/dbeta contributions added to acc_g/acc_b, held in registers down the rows
// (with AVX-512; AVX2's 16 registers keep part of them in L1).
// Per column the rows are added in order, as chunk_grad_sums does row by row: the same bits.
// dx is streamed with kStream (every row of dx then starts on a vector: backward_impl).
// Scalar math: xhat = (x - mean) * rstd;  dgamma_acc += dy * xhat;  dbeta_acc += dy;
//              dx = (dy * gamma - mean_g - xhat * mean_gxhat) * rstd
template <class T, bool kStream, int kN>
[[gnu::always_inline]] inline void tile_dx(const BackwardArgs<T>& a, int64_t cols, int64_t row,
                                           int64_t n_rows, const RowDx<T>* rc, T* acc_g, T* acc_b,
                                           int64_t j0) {
  using V = Vec<T>;
  V gamma_v[kN], sum_g[kN], sum_b[kN];
  for (int u = 0; u < kN; ++u) {
    gamma_v[u] = V::load(a.gamma + j0 + u * V::width);
    sum_g[u] = V::load(acc_g + j0 + u * V::width);
    sum_b[u] = V::load(acc_b + j0 + u * V::width);
  }
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t off = (row + r) * cols + j0;
    const V mean = V::broadcast(rc[r].mean), rstd = V::broadcast(rc[r].rstd);
    const V mean_g = V::broadcast(rc[r].mean_g), neg_mean_gx = V::broadcast(rc[r].neg_mean_gx);
    T* dx = a.dx + off;
    for (int u = 0; u < kN; ++u) {
      const int64_t j = u * V::width;
      const V xhat = (V::load(a.x + off + j) - mean) * rstd;
      const V d = V::load(a.dy + off + j);
      sum_g[u] = fmadd(d, xhat, sum_g[u]);
      sum_b[u] = sum_b[u] + d;
      const V v = dx_of(d * gamma_v[u], xhat, mean_g, neg_mean_gx, rstd);
      if constexpr (kStream)
        v.stream(dx + j);
      else
        v.store(dx + j);
    }
  }
  for (int u = 0; u < kN; ++u) {
    sum_g[u].store(acc_g + j0 + u * V::width);
    sum_b[u].store(acc_b + j0 + u * V::width);
  }
}

// Second pass over a group of n_rows rows from `row` whose sums are done (constants in rc): dx
// and the dgamma/dbeta contributions, a tile of 256 bytes of columns at a time down the rows,
// so that each accumulator vector is loaded and stored once per group rather than once per row
// (long rows do not fit in L1 with gamma and the two accumulator rows, so row by row those
// loads and stores come from L2). After each tile, the same columns of the n_next rows after
// the group are prefetched into L2 (prefetcht1), for the reason given in forward_impl.
template <class T, bool kStream>
void group_dx(const BackwardArgs<T>& a, int64_t cols, int64_t row, int64_t n_rows,
              const RowDx<T>* rc, T* acc_g, T* acc_b, int64_t n_next) {
  using V = Vec<T>;
  constexpr int kTile = 256 / static_cast<int>(sizeof(V));
  constexpr int64_t kTileCols = kTile * V::width;
  const int64_t n_vec = cols - cols % V::width;
  auto prefetch_next = [&](int64_t j0, int64_t n) {
    for (int64_t r = row + n_rows; r < row + n_rows + n_next; ++r) {
      const char* x = reinterpret_cast<const char*>(a.x + r * cols + j0);
      const char* dy = reinterpret_cast<const char*>(a.dy + r * cols + j0);
      for (int64_t byte = 0; byte < n * int64_t{sizeof(T)}; byte += 64) {
        __builtin_prefetch(x + byte, 0, 2);
        __builtin_prefetch(dy + byte, 0, 2);
      }
    }
  };
  int64_t j0 = 0;
  for (; j0 + kTileCols <= n_vec; j0 += kTileCols) {
    tile_dx<T, kStream, kTile>(a, cols, row, n_rows, rc, acc_g, acc_b, j0);
    prefetch_next(j0, kTileCols);
  }
  const int64_t tiles_end = j0;
  for (; j0 < n_vec; j0 += V::width)
    tile_dx<T, kStream, 1>(a, cols, row, n_rows, rc, acc_g, acc_b, j0);
  // Scalar math as above, for the columns past the last full vector.
  for (int64_t r = 0; r < n_rows; ++r)
    for (int64_t j = n_vec; j < cols; ++j) {
      const int64_t off = (row + r) * cols + j;
      const T xhat = (a.x[off] - rc[r].mean) * rc[r].rstd;
      const T d = a.dy[off];
      acc_g[j] = fma_scalar(d, xhat, acc_g[j]);
      acc_b[j] += d;
      a.dx[off] = fma_scalar(xhat, rc[r].neg_mean_gx, d * a.gamma[j] - rc[r].mean_g) * rc[r].rstd;
    }
  prefetch_next(tiles_end, cols - tiles_end);
}

// dgamma[j] = sum over blocks of dgamma_part[b][j], added in block order (likewise dbeta).
template <class T>
void reduce_param_grads(T* dgamma, T* dbeta, const double* dgamma_part, const double* dbeta_part,
                        const Plan& p) {
  constexpr int64_t kTile = 512;
  const int64_t n_tiles = (p.cols + kTile - 1) / kTile;
  parallel_for(n_tiles, kTile * p.n_blocks, [&](int64_t t0, int64_t t1) {
    double acc_g[kTile], acc_b[kTile];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j0 = t * kTile;
      const int64_t n = (j0 + kTile < p.cols ? j0 + kTile : p.cols) - j0;
      zero(acc_g, n);
      zero(acc_b, n);
      for (int64_t b = 0; b < p.n_blocks; ++b) {
        const double* pg = dgamma_part + b * p.cols + j0;
        const double* pb = dbeta_part + b * p.cols + j0;
        for (int64_t j = 0; j < n; ++j) acc_g[j] += pg[j];
        for (int64_t j = 0; j < n; ++j) acc_b[j] += pb[j];
      }
      for (int64_t j = 0; j < n; ++j) dgamma[j0 + j] = static_cast<T>(acc_g[j]);
      for (int64_t j = 0; j < n; ++j) dbeta[j0 + j] = static_cast<T>(acc_b[j]);
    }
  });
}

template <class T>
bool stream_output(int64_t rows, int64_t cols) {
  return rows * cols * int64_t{sizeof(T)} >= stream_threshold_bytes();
}

// The backward streams dx once its three arrays (x, dy, dx) pass twice the threshold, the
// forward's two arrays at the threshold: the bytes a call moves, not its output's size, decide
// whether its arrays can stay in the last-level cache. Arrays of 4-8 MiB, below the forward's
// threshold (8 MiB on Zen 3's 32 MiB L3), went through the cache at memory speed or slower.
// Zen 3, AVX2, float32, interleaved medians of 7, through the cache -> streamed, 1 / 2 threads:
// 1000x1536 1.65 -> 0.92 / 0.55 -> 0.45 ms, 500x3000 1.59 -> 0.86 / 0.76 -> 0.47, 2600x768
// 2.13 -> 1.19 / 1.06 -> 0.76, 400x5000 2.8 -> 2.1 / 1.62 -> 0.97; float64 250x3000 1.37 ->
// 0.74 / 0.63 -> 0.47. At 4-5 MiB, 1 thread gained (1576x768 0.84 -> 0.66 ms) and 2 did not
// (0.375 against 0.388; 2000x512 0.32 against 0.34), so the line stays at 2/3 of the threshold.
template <class T>
bool stream_dx(int64_t rows, int64_t cols) {
  return 3 * rows * cols * int64_t{sizeof(T)} >= 2 * stream_threshold_bytes();
}

// One short row: y = ((x - mean_hi) * rstd + offset) * gamma + beta, the first n_vec columns
// as vectors (streamed with kStream: y aligned to the vector size), the rest one by one.
template <class T, bool kStream>
inline void normalize_short_row(T* y, const T* x, const T* gamma, const T* beta,
                                const RowScale<T>& s, int64_t n_vec, int64_t cols) {
  using V = Vec<T>;
  const V hi = V::broadcast(s.mean_hi), r = V::broadcast(s.rstd), off = V::broadcast(s.offset);
  auto normalized_at = [&](int64_t j) {
    return normalized<T, true, true>(x, gamma, beta, hi, r, off, j);
  };
  // The columns past the last whole vector, in rows of a vector or more: the row's last vector
  // (computed before the others are stored, stored after them over the same values they wrote).
  const int64_t last = cols - V::width;
  const bool tail_vector = n_vec > 0 && n_vec < cols;
  const V tail = tail_vector ? normalized_at(last) : V::broadcast(T(0));
  for (int64_t j = 0; j < n_vec; j += V::width) {
    const V v = normalized_at(j);
    if constexpr (kStream)
      v.stream(y + j);
    else
      v.store(y + j);
  }
  if (tail_vector) tail.store(y + last);
  for (int64_t j = tail_vector ? cols : n_vec; j < cols; ++j)
    y[j] = fma_scalar(fma_scalar(x[j] - s.mean_hi, s.rstd, s.offset), gamma[j], beta[j]);
}

// The same for a row of exactly kVectors vectors, gamma and beta held in registers.
template <class T, bool kStream, int64_t kVectors>
inline void normalize_held_row(T* y, const T* x, const Vec<T> (&gamma)[kVectors],
                               const Vec<T> (&beta)[kVectors], const RowScale<T>& s) {
  using V = Vec<T>;
  const V hi = V::broadcast(s.mean_hi), r = V::broadcast(s.rstd), off = V::broadcast(s.offset);
  for (int64_t k = 0; k < kVectors; ++k) {
    const V v = fmadd(fmadd(V::load(x + k * V::width) - hi, r, off), gamma[k], beta[k]);
    if constexpr (kStream)
      v.stream(y + k * V::width);
    else
      v.store(y + k * V::width);
  }
}

// Rows of at most kShortRowBytes, kGroup at a time. kVectors > 0: rows are exactly kVectors
// vectors long (the loops then unroll, gamma and beta stay in registers); 0: any length.
template <class T, bool kStream, int64_t kVectors>
void forward_short_rows_of(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta,
                           int64_t rows, int64_t cols, double eps) {
  const int64_t n_vec = kVectors > 0 ? kVectors * Vec<T>::width : cols - cols % Vec<T>::width;
  const int64_t n_groups = (rows + kGroup - 1) / kGroup;
  // Missing gamma or beta become ones or zeros: y * 1 + 0 rounds to y, the same bits.
  TaskBuffer<T> unit((gamma ? 0 : cols) + (beta ? 0 : cols));
  if (!gamma) {
    for (int64_t j = 0; j < cols; ++j) unit.data()[j] = T(1);
    gamma = unit.data();
  }
  if (!beta) beta = unit.data() + (gamma == unit.data() ? cols : 0);
  const bool aligned_rows = vector_aligned_rows(y, cols);
  parallel_for(n_groups, kGroup * cols, [&](int64_t g0, int64_t g1) {
    GroupMoments m;
    const T* row[kGroup];
    constexpr int64_t kHeld = kVectors > 0 ? kVectors : 1;
    Vec<T> gamma_v[kHeld], beta_v[kHeld];
    for (int64_t k = 0; kVectors > 0 && k < kHeld; ++k) {
      gamma_v[k] = Vec<T>::load(gamma + k * Vec<T>::width);
      beta_v[k] = Vec<T>::load(beta + k * Vec<T>::width);
    }
    // Rows of exactly kVectors vectors: the previous group is normalized row by row while the
    // next group's rows are read, so that the output's stores go out between the input's loads
    // instead of in bursts (65536x128 float32 from memory, 1 / 2 threads: 2.85 / 1.57 ->
    // 2.57 / 1.45 ms). Other rows (65536x128 float64: 5.3 / 3.5 -> 7.8 / 4.4) are normalized
    // right after their group's statistics.
    constexpr bool kOverlap = kVectors > 0;
    GroupScales<T> prev;
    const T* prev_row[kGroup];
    int64_t prev_r0 = -1;
    auto finish_row = [&](int r) {
      const int64_t i = prev_r0 + r;
      if (prev_r0 < 0 || i >= rows) return;
      const RowScale<T> s = prev[r];
      T* y_row = y + i * cols;
      mean[i] = s.mean_hi;
      rstd[i] = s.rstd;
      if (kStream && !aligned_rows)  // each row streamed after its own aligning head
        normalize<T, true>(y_row, prev_row[r], gamma, beta, s, 0, cols);
      else if constexpr (kVectors > 0)
        normalize_held_row<T, kStream>(y_row, prev_row[r], gamma_v, beta_v, s);
      else
        normalize_short_row<T, kStream>(y_row, prev_row[r], gamma, beta, s, n_vec, cols);
    };
    for (int64_t group = g0; group < g1; ++group) {
      const int64_t r0 = group * kGroup;
      for (int r = 0; r < kGroup; ++r)  // past the last row, row r0 again (not used)
        row[r] = x + (r0 + r < rows ? r0 + r : r0) * cols;
      group_moments<T, kVectors, kStream>(m, row, cols, n_vec, [&](int r) {
        if constexpr (kOverlap) finish_row(r);
      });
      group_scales<T>(prev, m, static_cast<double>(cols), eps);
      for (int r = 0; r < kGroup; ++r) prev_row[r] = row[r];
      prev_r0 = r0;
      if constexpr (!kOverlap)
        for (int r = 0; r < kGroup; ++r) finish_row(r);
    }
    if constexpr (kOverlap)
      for (int r = 0; r < kGroup; ++r) finish_row(r);
    if constexpr (kStream) stream_fence();
  });
}

template <class T, bool kStream>
void forward_short_rows(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta,
                        int64_t rows, int64_t cols, double eps) {
  const int64_t vectors = cols % Vec<T>::width == 0 ? cols / Vec<T>::width : 0;
  switch (vectors) {
    case 4:
      return forward_short_rows_of<T, kStream, 4>(y, mean, rstd, x, gamma, beta, rows, cols, eps);
    case 8:
      return forward_short_rows_of<T, kStream, 8>(y, mean, rstd, x, gamma, beta, rows, cols, eps);
    case 16:  // AVX2's 128 float32 or 64 float64 columns (measured on Zen 3: 65536x128 float32
              // from memory, 1 / 2 threads, 7.1 / 3.8 -> 4.3 / 2.7 ms; 256x64 float64 in cache
              // 14 -> 10 us); AVX-512 and SSE2 rows of 16 vectors, unmeasured, stay generic
      if constexpr (sizeof(Vec<T>) == 32)
        return forward_short_rows_of<T, kStream, 16>(y, mean, rstd, x, gamma, beta, rows, cols,
                                                     eps);
      [[fallthrough]];
    default:
      return forward_short_rows_of<T, kStream, 0>(y, mean, rstd, x, gamma, beta, rows, cols, eps);
  }
}

// Rows [r0, r1) of a forward whose rows are one chunk each (cols <= kChunk) and whose rows of y
// start on vectors, in pairs: the loop that sums row i + 1 for its moments (chunk_moments) also
// normalizes row i, which the previous loop left in L1, vector for vector. The loads of x and
// the stores of y then go out together instead of in turns (a group of rows read, then written),
// and the hardware prefetchers never see the reads stop. Each line of row i + 1 also prefetches
// the line about kRowPairAheadBytes further on into L2. The same arithmetic as run_moments and
// normalize_chunk: the same bits.
// Replacing those groups, AVX-512, float32, 2 threads, medians of 200 calls in three rounds:
// 8192x768 from memory 1.58-2.29 -> 1.34-1.52 ms (a copy of its bytes: 1.11-1.36), 1 thread
// 3.6-4.2 -> 2.7-3.2; in cache, 512x768 0.068-0.084 -> 0.059-0.064 ms, 2048x1024 (8 MiB, not
// streamed) 0.54-0.65 -> 0.47-0.56. 8 or 32 KiB ahead measured the same as 16.
// Scalar math: y = ((x - mean_hi) * rstd + offset) * gamma + beta   (gamma, beta optional)
constexpr int64_t kRowPairAheadBytes = 16384;

template <class T, bool kStream, bool kGamma, bool kBeta>
void forward_row_pairs(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta,
                       int64_t r0, int64_t r1, int64_t cols, double eps) {
  using V = Vec<T>;
  if (r0 >= r1) return;
  // (whole rows ahead: the prefetches fall on the same columns as the loads)
  const int64_t ahead = (kRowPairAheadBytes / int64_t{sizeof(T)} + cols - 1) / cols * cols;
  RowScale<T> s = row_scale<T>(run_moments(x + r0 * cols, cols), eps);
  for (int64_t i = r0; i < r1; ++i) {
    mean[i] = s.mean_hi;
    rstd[i] = s.rstd;
    const T* x_row = x + i * cols;
    T* y_row = y + i * cols;
    const V hi = V::broadcast(s.mean_hi), r = V::broadcast(s.rstd), off = V::broadcast(s.offset);
    auto normalize_vector = [&](int64_t j) {
      const V v = normalized<T, kGamma, kBeta>(x_row, gamma, beta, hi, r, off, j);
      if constexpr (kStream)
        v.stream(y_row + j);
      else
        v.store(y_row + j);
    };
    if (i + 1 == r1) {
      for (int64_t j = 0; j < cols; j += V::width) normalize_vector(j);
      break;
    }
    const T* next = x_row + cols;
    Moments m = chunk_moments<T>(next, cols, next[0], 0, [&](int64_t j) {
      if ((j * int64_t{sizeof(T)}) % kCacheLineBytes == 0)
        __builtin_prefetch(next + ahead + j, 0, 2);  // prefetcht1
      normalize_vector(j);
    });
    m.mean += static_cast<double>(next[0]);
    s = row_scale<T>(m, eps);
  }
  if constexpr (kStream) stream_fence();
}

template <class T, bool kStream>
void forward_impl(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int64_t rows,
                  int64_t cols, double eps) {
  const Plan p(rows, cols);

  auto finish_row = [&](int64_t i, const RowScale<T>& s) {
    mean[i] = s.mean_hi;
    rstd[i] = s.rstd;
  };

  if (cols * int64_t{sizeof(T)} <= kShortRowBytes) {
    forward_short_rows<T, kStream>(y, mean, rstd, x, gamma, beta, rows, cols, eps);
    return;
  }
  if (p.n_chunks == 1 && p.rows_in_parallel(rows) && vector_aligned_rows(y, cols)) {
    parallel_for(rows, cols, [&](int64_t r0, int64_t r1) {
      if (gamma && beta)
        forward_row_pairs<T, kStream, true, true>(y, mean, rstd, x, gamma, beta, r0, r1, cols, eps);
      else if (gamma)
        forward_row_pairs<T, kStream, true, false>(y, mean, rstd, x, gamma, beta, r0, r1, cols,
                                                   eps);
      else if (beta)
        forward_row_pairs<T, kStream, false, true>(y, mean, rstd, x, gamma, beta, r0, r1, cols,
                                                   eps);
      else
        forward_row_pairs<T, kStream, false, false>(y, mean, rstd, x, gamma, beta, r0, r1, cols,
                                                    eps);
    });
    return;
  }
  if (p.rows_in_parallel(rows)) {
    // Rows that forward_row_pairs does not take (longer than a chunk, or rows of y that do not
    // start on vectors) go in groups (that fit in L1): statistics of the whole group first, so
    // the CPU overlaps the reductions of independent rows, then their normalization.
    constexpr int64_t kMaxGroup = 16;
    // From memory, the hardware prefetchers stop following x while the core only normalizes
    // a group from cache and streams it out, and the next group's statistics pass starts on
    // misses. So a streamed row is normalized a KiB at a time, each KiB followed by a prefetch
    // of the same KiB of the matching row of the next group into L2 (not into L1, where it
    // would evict the rows, gamma and beta being read: 30-50 % slower than no prefetch).
    // float32 from memory, 1 / 2 threads: 4096x4096 6.0 -> 4.9 / 4.0 -> 3.6 ms, 8192x768
    // 2.1 -> 1.7 / 1.3 -> 1.1 ms.
    constexpr int64_t kPrefetchSpan = 1024 / int64_t{sizeof(T)};
    const int64_t group = cols >= 4096 ? 1 : (4096 / cols < kMaxGroup ? 4096 / cols : kMaxGroup);
    parallel_for(rows, cols, [&](int64_t r0, int64_t r1) {
      RowScale<T> scales[kMaxGroup];
      for (int64_t g0 = r0; g0 < r1; g0 += group) {
        const int64_t g1 = g0 + group < r1 ? g0 + group : r1;
        for (int64_t i = g0; i < g1; ++i) {
          scales[i - g0] = row_scale<T>(run_moments(x + i * cols, cols), eps);
          finish_row(i, scales[i - g0]);
        }
        for (int64_t i = g0; i < g1; ++i) {
          if (!kStream || i + group >= r1) {
            normalize<T, kStream>(y + i * cols, x + i * cols, gamma, beta, scales[i - g0], 0, cols);
            continue;
          }
          // (the matching row of the next group: see kPrefetchSpan)
          const char* next = reinterpret_cast<const char*>(x + (i + group) * cols);
          // Spans end on cache lines of y (the first takes up the row's offset into its line):
          // one that does not, as in rows whose length is not a whole number of lines, costs
          // a scalar tail and an ordinarily stored line, and the next span a scalar head
          // (8192x1001 float32, 2 threads, through Python: 3.3-3.9 -> 2.7-3.4 ms; 8192x1008
          // 2.5-3.0).
          for (int64_t c0 = 0, c1 = kPrefetchSpan - line_lead(y + i * cols); c0 < cols;
               c0 = c1, c1 += kPrefetchSpan) {
            const int64_t n = (c1 < cols ? c1 : cols) - c0;
            normalize<T, true>(y + i * cols, x + i * cols, gamma, beta, scales[i - g0], c0, n);
            for (int64_t b = 0; b < n * int64_t{sizeof(T)}; b += 64)
              __builtin_prefetch(next + c0 * int64_t{sizeof(T)} + b, 0, 2);  // prefetcht1
          }
        }
      }
      if constexpr (kStream) stream_fence();
    });
    return;
  }

  // Few, long rows: chunk moments in parallel, merged per row, then normalize in parallel.
  const int64_t n_tasks = rows * p.n_chunks;
  Workspace ws(static_cast<std::size_t>(3 * n_tasks + 2 * rows));
  double* moments = ws.data();                // (rows, n_chunks, 3)
  double* row_stats = moments + 3 * n_tasks;  // (rows, 2): mean, m2
  parallel_phases(
      n_tasks, n_tasks, rows * cols,
      [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t i = t / p.n_chunks, c = t % p.n_chunks;
          const T* row = x + i * cols;
          const Moments m = chunk_moments(row + p.chunk_begin(c), p.chunk_size(c), row[0]);
          moments[3 * t] = m.count;
          moments[3 * t + 1] = m.mean;
          moments[3 * t + 2] = m.m2;
        }
      },
      [&] {
        for (int64_t i = 0; i < rows; ++i) {
          Moments m = row_moments_from_chunks(moments + 3 * i * p.n_chunks, p.n_chunks);
          m.mean += static_cast<double>(x[i * cols]);  // the chunks' reference
          finish_row(i, row_scale<T>(m, eps));
          row_stats[2 * i] = m.mean;
          row_stats[2 * i + 1] = m.m2;
        }
      },
      [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t i = t / p.n_chunks, c = t % p.n_chunks;
          const Moments m{static_cast<double>(cols), row_stats[2 * i], row_stats[2 * i + 1]};
          normalize<T, kStream>(y + i * cols, x + i * cols, gamma, beta, row_scale<T>(m, eps),
                                p.chunk_begin(c), p.chunk_size(c));
        }
        if constexpr (kStream) stream_fence();
      });
}

// Backward sums of the g <= kGroup rows from row i0, side by side (see group_moments):
// sums[r] = (sum(g), sum(g * xhat)) of row i0 + r. With kAffine, each row's dy * xhat and dy are
// also added to acc_g and acc_b (per column, in T), rows in order.
// Scalar math: xhat = (x - mean) * rstd;  g = dy * gamma
// kVectors > 0 (rows of exactly that many vectors) keeps the group's accumulators in registers,
// where they fit beside the loop's own, instead of loading and storing them for every row
// (same arithmetic, same order).
template <class T, bool kAffine, int64_t kVectors>
[[gnu::always_inline]] inline void group_grad_sums(GroupGradSums& sums, const BackwardArgs<T>& a,
                                                   int64_t cols, int64_t n_vec, int64_t i0, int g,
                                                   T* acc_g, T* acc_b) {
  using V = Vec<T>;
  constexpr int64_t kBlock = kTermsPerLane * V::width;
  GroupLanes lanes_g, lanes_gx;
  for (int r = 0; r < kGroup; ++r) lanes_g[r] = lanes_gx[r] = Vec<double>::broadcast(0.0);
  const bool tail_vector = n_vec > 0 && n_vec < cols;
  const int seen = static_cast<int>(V::width - (cols - n_vec));  // (of the last vector)
  constexpr bool kInRegisters = kVectors > 0 && 4 * kVectors <= kVectorRegisters;
  if constexpr (kInRegisters) {
    static_assert(kVectors * V::width <= kBlock, "a row is one block");
    V held_g[kVectors], held_b[kVectors];
    for (int k = 0; k < kVectors; ++k) {
      held_g[k] = kAffine ? V::load(acc_g + k * V::width) : V::broadcast(T(0));
      held_b[k] = kAffine ? V::load(acc_b + k * V::width) : V::broadcast(T(0));
    }
    for (int r = 0; r < g; ++r) {
      const T* x = a.x + (i0 + r) * cols;
      const T* dy = a.dy + (i0 + r) * cols;
      const V mean_v = V::broadcast(a.mean[i0 + r]), rstd_v = V::broadcast(a.rstd[i0 + r]);
      V sum_g = V::broadcast(T(0)), sum_gx = V::broadcast(T(0));
      for (int k = 0; k < kVectors; ++k) {
        V xhat;
        const V gj = grad_step<T, kAffine>(xhat, held_g[k], held_b[k], dy, x, a.gamma, mean_v,
                                           rstd_v, k * V::width);
        sum_g = sum_g + gj;
        sum_gx = fmadd(gj, xhat, sum_gx);
      }
      lanes_g[r] = Wide<T>::of(sum_g).folded();
      lanes_gx[r] = Wide<T>::of(sum_gx).folded();
    }
    if constexpr (kAffine)
      for (int k = 0; k < kVectors; ++k) {
        held_g[k].store(acc_g + k * V::width);
        held_b[k].store(acc_b + k * V::width);
      }
  } else {
    for (int r = 0; r < g; ++r) {
      const T* x = a.x + (i0 + r) * cols;
      const T* dy = a.dy + (i0 + r) * cols;
      const V mean_v = V::broadcast(a.mean[i0 + r]), rstd_v = V::broadcast(a.rstd[i0 + r]);
      for (int64_t j0 = 0; j0 < n_vec; j0 += kBlock) {
        const int64_t j1 = j0 + kBlock < n_vec ? j0 + kBlock : n_vec;
        V sum_g = V::broadcast(T(0)), sum_gx = V::broadcast(T(0));
        for (int64_t j = j0; j < j1; j += V::width) {
          V xhat;
          const V gj = grad_step<T, kAffine>(xhat, acc_g, acc_b, dy, x, a.gamma, mean_v, rstd_v, j);
          sum_g = sum_g + gj;
          sum_gx = fmadd(gj, xhat, sum_gx);
        }
        lanes_g[r] = lanes_g[r] + Wide<T>::of(sum_g).folded();
        lanes_gx[r] = lanes_gx[r] + Wide<T>::of(sum_gx).folded();
      }
      // The columns past the last whole vector, in rows of a vector or more: the row's last
      // vector, its lanes before n_vec left out (of the accumulators too), its g and g * xhat
      // added in float64 (as tail_grad_sums below, which takes rows shorter than a vector).
      if (tail_vector) {
        const int64_t j = cols - V::width;
        const V zero = V::broadcast(T(0));
        V acc_gv = zero, acc_bv = zero;
        if constexpr (kAffine) {
          acc_gv = V::load(acc_g + j);
          acc_bv = V::load(acc_b + j);
        }
        V xhat, new_g = acc_gv, new_b = acc_bv;
        const V gj = grad_step<T, kAffine>(xhat, new_g, new_b, dy, x, a.gamma, mean_v, rstd_v, j);
        if constexpr (kAffine) {
          blend_at(acc_gv, new_g, seen).store(acc_g + j);
          blend_at(acc_bv, new_b, seen).store(acc_b + j);
        }
        const Wide<T> g_wide = Wide<T>::of(blend_at(zero, gj, seen));
        lanes_g[r] = lanes_g[r] + g_wide.folded();
        lanes_gx[r] = lanes_gx[r] + folded_products(g_wide, Wide<T>::of(xhat));
      }
    }
  }
  transpose_add(lanes_g).store(sums.g);
  transpose_add(lanes_gx).store(sums.g_xhat);
  for (int r = 0; !tail_vector && r < g; ++r) {
    const int64_t off = (i0 + r) * cols;
    const GradSums tail = tail_grad_sums<T, kAffine>(acc_g, acc_b, a.dy + off, a.x + off, a.gamma,
                                                     a.mean[i0 + r], a.rstd[i0 + r], n_vec, cols);
    sums.g[r] += tail.g;
    sums.g_xhat[r] += tail.g_xhat;
  }
}

// dx of one row of exactly kVectors vectors, its constants given (see row_dx). Scalar math:
// xhat = (x - mean) * rstd;  g = dy * gamma;  dx = (g - mean_g - xhat * mean_gx) * rstd
template <class T, bool kAffine, bool kStream, int64_t kVectors>
[[gnu::always_inline]] inline void dx_held_row(T* dx, const T* dy, const T* x, const T* gamma,
                                               const RowDx<T>& rc) {
  using V = Vec<T>;
  const V mean = V::broadcast(rc.mean), rstd = V::broadcast(rc.rstd);
  const V mean_g = V::broadcast(rc.mean_g), neg_mean_gx = V::broadcast(rc.neg_mean_gx);
  for (int64_t k = 0; k < kVectors; ++k) {
    const int64_t j = k * V::width;
    const V v = dx_at<T, kAffine>(dy, x, gamma, mean, rstd, mean_g, neg_mean_gx, j);
    if constexpr (kStream)
      v.stream(dx + j);
    else
      v.store(dx + j);
  }
}

// dx of one row of a vector or more whose length (cols) is not a whole number of vectors, its
// constants given, not streamed: its n_vec whole vectors, then its last vector, computed before
// the others are stored and stored after them, over the same values they wrote. Scalar math: as
// dx_held_row.
template <class T, bool kAffine>
[[gnu::always_inline]] inline void dx_row_with_tail(T* dx, const T* dy, const T* x, const T* gamma,
                                                    const RowDx<T>& rc, int64_t n_vec,
                                                    int64_t cols) {
  using V = Vec<T>;
  const V mean = V::broadcast(rc.mean), rstd = V::broadcast(rc.rstd);
  const V mean_g = V::broadcast(rc.mean_g), neg_mean_gx = V::broadcast(rc.neg_mean_gx);
  auto row_dx_at = [&](int64_t j) {
    return dx_at<T, kAffine>(dy, x, gamma, mean, rstd, mean_g, neg_mean_gx, j);
  };
  const int64_t last = cols - V::width;
  const V tail = row_dx_at(last);
  for (int64_t j = 0; j < n_vec; j += V::width) row_dx_at(j).store(dx + j);
  tail.store(dx + last);
}

// dx of the g rows of a group from i0 (row_dx's divisions a vector of rows at a time: the same
// bits): rows of exactly kVectors vectors inline (streamed only where dx's rows are aligned),
// rows with a tail past their last whole vector, not streamed, by dx_row_with_tail, others by
// chunk_dx.
template <class T, bool kAffine, bool kStream, int64_t kVectors>
[[gnu::always_inline]] inline void short_rows_dx(const BackwardArgs<T>& a, int64_t cols, int64_t i0,
                                                 int g, const GroupGradSums& sums,
                                                 bool aligned_rows) {
  using D = Vec<double>;
  const int64_t n_vec = cols - cols % Vec<T>::width;
  const D count = D::broadcast(static_cast<double>(cols));
  T mean_g[kGroup], mean_gx[kGroup];
  store_narrow(mean_g, D::load(sums.g) / count);
  store_narrow(mean_gx, D::load(sums.g_xhat) / count);
  for (int r = 0; r < g; ++r) {
    const int64_t i = i0 + r, off = i * cols;
    if (kVectors > 0 && (!kStream || aligned_rows))
      dx_held_row<T, kAffine, kStream, kVectors>(a.dx + off, a.dy + off, a.x + off, a.gamma,
                                                 {a.mean[i], a.rstd[i], mean_g[r], -mean_gx[r]});
    else if (!kStream && n_vec > 0 && n_vec < cols)
      dx_row_with_tail<T, kAffine>(a.dx + off, a.dy + off, a.x + off, a.gamma,
                                   {a.mean[i], a.rstd[i], mean_g[r], -mean_gx[r]}, n_vec, cols);
    else
      chunk_dx<T, kAffine, kStream>(a.dx + off, a.dy + off, a.x + off, a.gamma, a.mean[i],
                                    a.rstd[i], mean_g[r], mean_gx[r], cols);
  }
}

// Backward of rows of at most kShortRowBytes, kGroup rows at a time within each row block.
// kVectors as in forward_short_rows_of.
template <class T, bool kStream, int64_t kVectors>
void backward_short_rows_of(const BackwardArgs<T>& a, const Plan& p) {
  static_assert(kRowsPerFlush % kGroup == 0, "a flush falls on the last row of a group");
  const int64_t cols = p.cols;
  const int64_t n_vec = kVectors > 0 ? kVectors * Vec<T>::width : cols - cols % Vec<T>::width;
  const bool affine = a.gamma != nullptr;
  const bool aligned_rows = vector_aligned_rows(a.dx, cols);
  parallel_for(p.n_blocks, p.rows_per_block * cols, [&](int64_t b0, int64_t b1) {
    TaskBuffer<T> acc(affine ? 2 * cols : 0);
    T* acc_g = acc.data();
    T* acc_b = acc_g + cols;
    GroupGradSums sums;
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t i0 = p.block_begin(b); i0 < p.block_end(b); i0 += kGroup) {
        const int g = static_cast<int>(p.block_end(b) - i0 < kGroup ? p.block_end(b) - i0 : kGroup);
        if (affine) {
          group_grad_sums<T, true, kVectors>(sums, a, cols, n_vec, i0, g, acc_g, acc_b);
          if (flush_due(p, b, i0 + g - 1)) {
            const bool first = first_flush(p, b, i0 + g - 1);
            flush_param_partials(a.dgamma_part + b * cols, acc_g, cols, first);
            flush_param_partials(a.dbeta_part + b * cols, acc_b, cols, first);
          }
          short_rows_dx<T, true, kStream, kVectors>(a, cols, i0, g, sums, aligned_rows);
        } else {
          group_grad_sums<T, false, kVectors>(sums, a, cols, n_vec, i0, g, nullptr, nullptr);
          short_rows_dx<T, false, kStream, kVectors>(a, cols, i0, g, sums, aligned_rows);
        }
      }
    }
    if constexpr (kStream) stream_fence();
  });
}

template <class T, bool kStream>
void backward_short_rows(const BackwardArgs<T>& a, const Plan& p) {
  const int64_t vectors = p.cols % Vec<T>::width == 0 ? p.cols / Vec<T>::width : 0;
  switch (vectors) {
    case 4:
      return backward_short_rows_of<T, kStream, 4>(a, p);
    case 8:
      return backward_short_rows_of<T, kStream, 8>(a, p);
    case 16:
      return backward_short_rows_of<T, kStream, 16>(a, p);
    default:
      return backward_short_rows_of<T, kStream, 0>(a, p);
  }
}

// The row-parallel backward of blocks [b0, b1), row by row: the row's sums (and its
// dgamma/dbeta contributions to the task's accumulators), then its dx.
template <class T, bool kStream>
void backward_rows(const BackwardArgs<T>& a, const Plan& p, int64_t b0, int64_t b1) {
  const int64_t cols = p.cols;
  const bool affine = a.gamma != nullptr;
  TaskBuffer<T> acc(affine ? 2 * cols : 0);
  T* acc_g = acc.data();
  T* acc_b = acc_g + cols;
  const int64_t last_row = p.block_end(b1 - 1) - 1;
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t i = p.block_begin(b); i < p.block_end(b); ++i) {
      GradSums row{0.0, 0.0};
      for (int64_t c = 0; c < p.n_chunks; ++c) {
        const int64_t c0 = p.chunk_begin(c);
        const GradSums s = grad_sums(a, p, i, c, acc_g + c0, acc_b + c0);
        row.g += s.g;
        row.g_xhat += s.g_xhat;
      }
      if (affine && flush_due(p, b, i)) {
        flush_param_partials(a.dgamma_part + b * cols, acc_g, cols, first_flush(p, b, i));
        flush_param_partials(a.dbeta_part + b * cols, acc_b, cols, first_flush(p, b, i));
      }
      if (!kStream || i == last_row) {
        for (int64_t c = 0; c < p.n_chunks; ++c) dx_chunk<T, kStream>(a, p, i, c, row);
        continue;
      }
      // Streamed: dx a KiB at a time, each KiB followed by a prefetch of the same KiB of the
      // next row's x and dy into L2, for the reason given in forward_impl (the prefetchers idle
      // while the core only streams dx out). float32 from memory, 1 / 2 threads: 4096x4096
      // 15.1 -> 12.5 / 8.3 -> 7.5 ms, 8192x768 4.6 -> 4.3 / 2.4 -> 2.2.
      // Spans end on cache lines of dx, as forward_impl's do.
      constexpr int64_t kSpan = 1024 / int64_t{sizeof(T)};
      const char* next_x = reinterpret_cast<const char*>(a.x + (i + 1) * cols);
      const char* next_dy = reinterpret_cast<const char*>(a.dy + (i + 1) * cols);
      for (int64_t c0 = 0, c1 = kSpan - line_lead(a.dx + i * cols); c0 < cols;
           c0 = c1, c1 += kSpan) {
        const int64_t n = (c1 < cols ? c1 : cols) - c0;
        dx_span<T, true>(a, p, i, c0, n, row);
        const int64_t end = (c0 + n) * int64_t{sizeof(T)};
        for (int64_t byte = c0 * int64_t{sizeof(T)}; byte < end; byte += 64) {
          __builtin_prefetch(next_x + byte, 0, 2);  // prefetcht1
          __builtin_prefetch(next_dy + byte, 0, 2);
        }
      }
    }
  }
}

// The row-parallel backward of blocks [b0, b1) of a streamed dx whose rows are one chunk each
// and start on vectors, in pairs as forward_row_pairs: the loop that sums row i + 1
// (chunk_grad_sums) also writes dx of row i, which the previous loop left in L1, and adds row
// i's dgamma/dbeta contributions to the task's accumulators (in L1 too); each line of row i + 1
// also prefetches the lines of x and dy about kRowPairAheadBytes on into L2. Every other loop
// adds row i + 1's contributions too, right after row i's, so that one load and one store of
// the accumulators serve two rows (they spill out of L1 on long rows). Per column the rows are
// added in order and flushed after the same rows, with the arithmetic of backward_rows: the
// same bits. AVX-512, float32, from memory, interleaved medians of 20-100 calls in three
// rounds, against row groups (backward_row_groups) or rows one by one (backward_rows): 2
// threads 8192x768 3.0-3.8 -> 2.0-2.5 ms, 4096x4096 8.2-10.7 -> 7.0-8.3, 16384x512 5.4 ->
// 3.6-3.9, 4096x1536 3.5-3.7 -> 2.6-2.7; 1 thread 8192x768 6.0-7.6 -> 4.2-4.5. In cache the
// groups' accumulators in registers win (512x768 on 1 thread 0.25-0.30 -> 0.32-0.35 ms in
// pairs; 2048x1024 0.75-0.86 -> 1.06-1.15 on 2), so arrays that are not streamed do not pair.
// Two rows per load of the accumulators instead of one (chunk_grad_sums' own copy of `also`
// in both), Zen 3, AVX2, float32, interleaved medians of 6-8: 4096x4096 2 threads 13.1 -> 11.7
// ms (inputs 16 bytes past a line 13.4 -> 13.0), 1 thread 22.4 -> 20.7; 8192x768 2 threads 4.5
// -> 3.9.
// Scalar math: xhat = (x - mean) * rstd;  dgamma_acc += dy * xhat;  dbeta_acc += dy;
//              dx = (dy * gamma - mean_g - xhat * mean_gxhat) * rstd   (gamma optional)
template <class T, bool kStream, bool kAffine>
void backward_row_pairs(const BackwardArgs<T>& a, const Plan& p, int64_t b0, int64_t b1) {
  using V = Vec<T>;
  const int64_t cols = p.cols;
  TaskBuffer<T> acc(kAffine ? 2 * cols : 0);
  T* acc_g = acc.data();
  T* acc_b = acc_g + cols;
  const int64_t ahead = (kRowPairAheadBytes / int64_t{sizeof(T)} + cols - 1) / cols * cols;
  auto row_sums = [&](int64_t i, const auto& also) {
    const int64_t off = i * cols;
    return chunk_grad_sums<T, kAffine, false>(nullptr, nullptr, a.dy + off, a.x + off, a.gamma,
                                              a.mean[i], a.rstd[i], cols, also);
  };
  const int64_t end = p.block_end(b1 - 1);
  GradSums sums = row_sums(p.block_begin(b0), NoWork{});
  bool added = false;  // row i's dgamma/dbeta contributions are in (with row i - 1's)
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t i = p.block_begin(b); i < p.block_end(b); ++i) {
      const RowDx<T> rc = row_dx(a, p, i, sums);
      const V mean = V::broadcast(rc.mean), rstd = V::broadcast(rc.rstd);
      const V mean_g = V::broadcast(rc.mean_g), neg_mean_gx = V::broadcast(rc.neg_mean_gx);
      const T* x = a.x + i * cols;
      const T* dy = a.dy + i * cols;
      T* dx = a.dx + i * cols;
      // dx of row i at column j, adding kRows rows' dgamma/dbeta contributions to the
      // accumulators: none (row i's went in with row i - 1's), row i's (1), or row i's and
      // then row i + 1's (2: xhat_next and dy_next). Captures by value: see chunk_grad_sums.
      auto dx_vector = [=, acc_g = acc_g, acc_b = acc_b, gamma = a.gamma](int64_t j, auto k_rows,
                                                                          V xhat_next, V dy_next) {
        constexpr int kRows = decltype(k_rows)::value;
        const V xhat = (V::load(x + j) - mean) * rstd;
        const V d = V::load(dy + j);
        V g = d;
        if constexpr (kAffine) {
          if constexpr (kRows > 0) {
            V acc_gv = fmadd(d, xhat, V::load(acc_g + j)), acc_bv = V::load(acc_b + j) + d;
            if constexpr (kRows == 2) {
              acc_gv = fmadd(dy_next, xhat_next, acc_gv);
              acc_bv = acc_bv + dy_next;
            }
            acc_gv.store(acc_g + j);
            acc_bv.store(acc_b + j);
          }
          g = d * V::load(gamma + j);
        }
        const V v = dx_of(g, xhat, mean_g, neg_mean_gx, rstd);
        if constexpr (kStream)
          v.stream(dx + j);
        else
          v.store(dx + j);
      };
      // Row i + 1's contributions go in with row i's (one load and store of the accumulators
      // for both) unless a flush falls between them. Blocks hold whole flushes of an even
      // number of rows, so that stops a pair only at the array's last row, after an odd count.
      const bool pair = kAffine && !added && !flush_due(p, b, i);
      const auto with_rows = [&](auto go) {  // go(kRows): see dx_vector
        if (pair) return go(std::integral_constant<int, 2>{});
        if (added) return go(std::integral_constant<int, 0>{});
        return go(std::integral_constant<int, 1>{});
      };
      with_rows([&](auto k) {
        if (i + 1 == end) {
          const V none = V::broadcast(T(0));
          for (int64_t j = 0; j < cols; j += V::width) dx_vector(j, k, none, none);
          return;
        }
        sums = row_sums(i + 1, [=](int64_t j, V xhat_next, V dy_next) {
          if ((j * int64_t{sizeof(T)}) % kCacheLineBytes == 0) {
            __builtin_prefetch(x + cols + ahead + j, 0, 2);  // prefetcht1
            __builtin_prefetch(dy + cols + ahead + j, 0, 2);
          }
          dx_vector(j, k, xhat_next, dy_next);
        });
      });
      added = pair;
      if (kAffine && flush_due(p, b, i)) {
        flush_param_partials(a.dgamma_part + b * cols, acc_g, cols, first_flush(p, b, i));
        flush_param_partials(a.dbeta_part + b * cols, acc_b, cols, first_flush(p, b, i));
      }
    }
  }
}

// The same with gamma, rows in groups of up to 256 KiB of x and dy (at most a flush group of
// dgamma/dbeta partials): the sums of each row of the group, then dx and the rows'
// dgamma/dbeta contributions a tile of columns at a time down the group (group_dx), while the
// group's x and dy are in L2. The same bits as backward_rows. AVX-512, 1 / 2 threads, from
// memory: float64 8192x768 8.5 -> 6.6 / 5.4 -> 4.3 ms. Which rows it suits: groups_pay.
template <class T, bool kStream>
void backward_row_groups(const BackwardArgs<T>& a, const Plan& p, int64_t b0, int64_t b1) {
  const int64_t cols = p.cols;
  constexpr int64_t kGroupBytes = int64_t{256} << 10;
  int64_t group_rows = kGroupBytes / (2 * cols * int64_t{sizeof(T)});
  if (group_rows > kRowsPerFlush) group_rows = kRowsPerFlush;
  if (group_rows < 1) group_rows = 1;
  TaskBuffer<T> acc(2 * cols);
  T* acc_g = acc.data();
  T* acc_b = acc_g + cols;
  const int64_t task_end = p.block_end(b1 - 1);
  RowDx<T> rc[kRowsPerFlush];
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t i = p.block_begin(b); i < p.block_end(b);) {
      // the group: rows [i, i1), ending at the next flush or before
      const int64_t in_block = i - p.block_begin(b);
      int64_t i1 = p.block_begin(b) + (in_block / kRowsPerFlush + 1) * kRowsPerFlush;
      if (i1 > i + group_rows) i1 = i + group_rows;
      if (i1 > p.block_end(b)) i1 = p.block_end(b);
      for (int64_t r = i; r < i1; ++r) rc[r - i] = row_dx(a, p, r, row_grad_sums(a, p, r));
      int64_t n_next = kStream ? task_end - i1 : 0;
      if (n_next > group_rows) n_next = group_rows;
      group_dx<T, kStream>(a, cols, i, i1 - i, rc, acc_g, acc_b, n_next);
      if (flush_due(p, b, i1 - 1)) {
        flush_param_partials(a.dgamma_part + b * cols, acc_g, cols, first_flush(p, b, i1 - 1));
        flush_param_partials(a.dbeta_part + b * cols, acc_b, cols, first_flush(p, b, i1 - 1));
      }
      i = i1;
    }
  }
}

// Whether backward_row_groups beats backward_rows on rows of `cols` values (with gamma):
//  - AVX-512 always, AVX2 only with dx streamed: a tile's accumulators fill AVX-512's 32
//    registers, but spill from AVX2's 16 (see tile_dx), and SSE2's 16 of 16 bytes cannot hold
//    them (rows one by one measured 10-35 % faster there). Through the cache, rows one by one
//    measured faster on AVX2 at every width tried. Zen 3, interleaved medians of 7, grouped ->
//    one by one, float32, 1 / 2 threads: 256x768 110 -> 99 / 68 -> 61 us, 1000x768 479 -> 407 /
//    295 -> 263, 1576x768 (8x197x768) 1.26 -> 0.84 / 0.43 -> 0.38 ms, 400x512 112 -> 102 / 68
//    -> 61 us, 200x1536 180 -> 155 / 103 -> 94, 64x4000 154 -> 135 / 102 -> 89; float64 800x768
//    1.59 -> 1.06 / 0.51 -> 0.45 ms. Streamed rows longer than a chunk still gained grouped
//    (float32 1000x5000 5.8 -> 4.7 / 3.4 -> 3.1 ms, 500x8000 5.2 -> 4.5 / 2.7 -> 2.6).
//  - unless the row stride is within 128 bytes of a multiple of 4 KiB (1024, 2048, 4096
//    columns of float32; 1000). There the walk down a tile of columns has every row's loads
//    4 KiB from the row above it, and grouped measured 5-30 % slower in cache (32x4096,
//    256x1024; offsetting one of x, dy and dx by 256 bytes removed it, moving dx's stores after
//    the walk did not) and no faster from memory (4096x4096, 16384x1000). Elsewhere grouped
//    measured 0-35 % faster (float32, AVX-512; 4000x4000 on 2 threads 7.3 -> 6.2 ms, 8000x2000
//    5.7 -> 5.0).
template <class T, bool kStream>
bool groups_pay(int64_t cols) {
  if (sizeof(Vec<T>) < (kStream ? 32 : 64)) return false;
  const int64_t skew = cols * int64_t{sizeof(T)} % 4096;
  return skew >= 128 && skew <= 4096 - 128;
}

template <class T, bool kStream>
void backward_impl(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                   const T* rstd, const T* gamma, int64_t rows, int64_t cols) {
  const Plan p(rows, cols);
  const bool affine = gamma != nullptr;
  // Few long rows (one block, one flush): each chunk's T accumulators are dgamma and dbeta
  // themselves, which is what the block's one flush to float64 and the reduction over one block
  // gave (the accumulators, summed from +0, never hold -0). A 262144-value row spent two
  // thirds of its backward on those partials: float32, 1 / 2 threads, 0.48 -> 0.16 / 0.29 ->
  // 0.09 ms (Zen 3, AVX2).
  const bool short_rows = cols * int64_t{sizeof(T)} <= kShortRowBytes;
  const bool by_rows = !short_rows && p.rows_in_parallel(p.n_blocks);
  const bool direct = affine && !short_rows && !by_rows && p.n_blocks == 1 && rows <= kRowsPerFlush;

  Workspace parts(affine && !direct ? static_cast<std::size_t>(2 * p.n_blocks * cols) : 0);
  BackwardArgs<T> a{dx,
                    dy,
                    x,
                    mean,
                    rstd,
                    gamma,
                    affine && !direct ? parts.data() : nullptr,
                    affine && !direct ? parts.data() + p.n_blocks * cols : nullptr};

  if (short_rows) {
    backward_short_rows<T, kStream>(a, p);
  } else if (by_rows) {
    parallel_for(p.n_blocks, p.rows_per_block * cols, [&](int64_t b0, int64_t b1) {
      // Streamed rows of one chunk that start on vectors go in pairs (backward_row_pairs).
      // Otherwise, grouping pays for itself through the dgamma/dbeta accumulators (without gamma,
      // rows in cache went 1.7x slower grouped) where groups_pay says so. A tile walks the same
      // columns down every row, so it streams dx only if every row of dx starts on a vector;
      // else the rows go one by one (8192x3001 float32, 2 threads, through Python: 21-25 ->
      // 16.6-18.5 ms).
      const bool pairs = kStream && p.n_chunks == 1 && vector_aligned_rows(dx, cols);
      if (pairs && affine)
        backward_row_pairs<T, kStream, true>(a, p, b0, b1);
      else if (pairs)
        backward_row_pairs<T, kStream, false>(a, p, b0, b1);
      else if (affine && groups_pay<T, kStream>(cols) &&
               (!kStream || vector_aligned_rows(dx, cols)))
        backward_row_groups<T, kStream>(a, p, b0, b1);
      else
        backward_rows<T, kStream>(a, p, b0, b1);
      if constexpr (kStream) stream_fence();
    });
  } else {
    // Few rows: split each block's rows by chunk as well; same sums, same order.
    Workspace ws(static_cast<std::size_t>(2 * rows * p.n_chunks));
    double* sums = ws.data();  // (rows, n_chunks, 2)
    parallel_for(p.n_blocks * p.n_chunks, p.rows_per_block * kChunk, [&](int64_t t0, int64_t t1) {
      TaskBuffer<T> acc(affine && !direct ? 2 * kChunk : 0);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / p.n_chunks, c = t % p.n_chunks;
        const int64_t c0 = p.chunk_begin(c), n = p.chunk_size(c);
        T* acc_g = direct ? dgamma + c0 : acc.data();
        T* acc_b = direct ? dbeta + c0 : acc.data() + kChunk;
        for (int64_t i = p.block_begin(b); i < p.block_end(b); ++i) {
          // direct: the block's first row sets dgamma and dbeta (no zeroing pass)
          const GradSums s = grad_sums(a, p, i, c, acc_g, acc_b, direct && i == p.block_begin(b));
          sums[2 * (i * p.n_chunks + c)] = s.g;
          sums[2 * (i * p.n_chunks + c) + 1] = s.g_xhat;
          if (affine && !direct && flush_due(p, b, i)) {
            flush_param_partials(a.dgamma_part + b * cols + c0, acc_g, n, first_flush(p, b, i));
            flush_param_partials(a.dbeta_part + b * cols + c0, acc_b, n, first_flush(p, b, i));
          }
        }
      }
    });
    parallel_for(rows * p.n_chunks, kChunk, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i = t / p.n_chunks, c = t % p.n_chunks;
        GradSums row{0.0, 0.0};
        for (int64_t k = 0; k < p.n_chunks; ++k) {
          row.g += sums[2 * (i * p.n_chunks + k)];
          row.g_xhat += sums[2 * (i * p.n_chunks + k) + 1];
        }
        dx_chunk<T, kStream>(a, p, i, c, row);
      }
      if constexpr (kStream) stream_fence();
    });
  }

  if (affine && !direct) reduce_param_grads(dgamma, dbeta, a.dgamma_part, a.dbeta_part, p);
}

}  // namespace

template <class T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta,
                        int64_t rows, int64_t cols, double eps) {
  if (rows <= 0 || cols <= 0) return;
  if (stream_output<T>(rows, cols))
    forward_impl<T, true>(y, mean, rstd, x, gamma, beta, rows, cols, eps);
  else
    forward_impl<T, false>(y, mean, rstd, x, gamma, beta, rows, cols, eps);
}

template <class T>
void layer_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                         const T* rstd, const T* gamma, int64_t rows, int64_t cols) {
  if (cols <= 0) return;
  if (rows <= 0) {
    if (gamma) {
      for (int64_t j = 0; j < cols; ++j) dgamma[j] = dbeta[j] = T(0);
    }
    return;
  }
  if (stream_dx<T>(rows, cols))
    backward_impl<T, true>(dx, dgamma, dbeta, dy, x, mean, rstd, gamma, rows, cols);
  else
    backward_impl<T, false>(dx, dgamma, dbeta, dy, x, mean, rstd, gamma, rows, cols);
}

template void layer_norm_forward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, int64_t, int64_t, double);
template void layer_norm_forward<double>(double*, double*, double*, const double*, const double*,
                                         const double*, int64_t, int64_t, double);
template void layer_norm_backward<float>(float*, float*, float*, const float*, const float*,
                                         const float*, const float*, const float*, int64_t,
                                         int64_t);
template void layer_norm_backward<double>(double*, double*, double*, const double*, const double*,
                                          const double*, const double*, const double*, int64_t,
                                          int64_t);

}  // namespace NORMKIT_CPU_NS
}  // namespace normkit
