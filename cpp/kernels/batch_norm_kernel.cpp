// BatchNorm kernels over x viewed as (n, c, s): c channels, statistics over n * s values each.
// Compiled once per ISA (see CMakeLists.txt); the orchestration (which statistics, running
// averages, per-channel constants) is in cpp/batch_norm.cpp.
//
// Two layouts, both read in memory order:
//  - runs (s >= kMinRun, NCHW-like): channel ch owns n contiguous runs of s values. Work units
//    are chunks of runs (at most kChunk values); each unit's moments or sums go to a slot, and
//    each channel combines its slots in order.
//  - columns (s < kMinRun: channels-last tables with s == 1, or tiny spatial sizes): x is a
//    (n, c * s) table, or (n / fold, fold * c * s) where c * s is not a multiple of the vector
//    width (see folded). Work units are blocks of rows; within a block, register tiles of
//    columns accumulate down the rows (or the sums go along the rows). Block results combine in
//    block order, and a channel's columns in column order.
// Units and blocks are sized from the shape alone: any thread count gives the same bits.
// Training on large arrays with small channels may instead go a channel at a time per thread
// (by_channel), adding the same units in the same order; training on short runs in cache goes
// a channel at a time with one sum per channel (short_runs_in_cache), chosen by shape alone.

#include <cmath>
#include <cstdint>
#include <numeric>

#include "cpu_features.hpp"
#include "kernels/channel_affine.hpp"
#include "kernels/kernels.hpp"
#include "kernels/moments.hpp"
#include "kernels/scratch.hpp"
#include "kernels/vec.hpp"
#include "threading.hpp"

namespace normkit {
namespace NORMKIT_CPU_NS {
namespace {

constexpr int64_t kMinRun = 16;        // shorter runs use the column layout
constexpr int64_t kBlockRows = 256;    // column layout: a task takes kBlockRows rows
constexpr int64_t kColGroup = 256;     // ... of kColGroup columns (a multiple of every tile width)
constexpr int64_t kRowsPerFlush = 16;  // rows summed in T before float64 (columns)
constexpr int64_t kSubRows = 2;        // rows per vector of columns, along the rows (columns)
constexpr int64_t kValuesPerChannel = 16;  // a channel's constants cost about 16 values of a pass
static_assert(kRowsPerFlush % kSubRows == 0, "a flush ends a group of rows");

struct Shape {
  int64_t n, c, s;
  int64_t fold = 1;  // column layout: rows of x per row of the table (see folded)

  bool columns() const { return s < kMinRun; }
  // runs layout
  int64_t chunks_per_run() const { return (s + kChunk - 1) / kChunk; }
  int64_t n_units() const { return n * c * chunks_per_run(); }
  // columns layout: a table of rows() rows of cols() values (fold rows of x each), then
  // rest_rows() rows of x
  int64_t row_values() const { return c * s; }  // of a row of x
  int64_t cols() const { return c * s * fold; }
  int64_t rows() const { return n / fold; }
  int64_t rest_rows() const { return n % fold; }
  int64_t n_blocks() const { return (rows() + kBlockRows - 1) / kBlockRows; }
  int64_t n_col_groups() const { return (cols() + kColGroup - 1) / kColGroup; }
  // The column layout's tasks of `span` column groups each: a block's rows, and columns
  // [j0, j1) of task t: rows [r0, r1).
  int64_t n_tasks(int64_t span) const { return n_blocks() * ((n_col_groups() + span - 1) / span); }
  void task(int64_t t, int64_t span, int64_t& r0, int64_t& r1, int64_t& j0, int64_t& j1) const {
    const int64_t per_block = (n_col_groups() + span - 1) / span;
    const int64_t b = t / per_block, g = t % per_block;
    r0 = b * kBlockRows;
    r1 = r0 + kBlockRows < rows() ? r0 + kBlockRows : rows();
    j0 = g * span * kColGroup;
    j1 = j0 + span * kColGroup < cols() ? j0 + span * kColGroup : cols();
  }
  // The element-wise passes go over rows() rows of cols() values and, if rest_rows(), one
  // piece of rest_rows() rows of x after them (the table's columns, cut short).
  int64_t pieces() const { return rows() + (rest_rows() > 0 ? 1 : 0); }
  int64_t piece_values(int64_t r) const { return r < rows() ? cols() : rest_rows() * row_values(); }
};

// sh with rows of x folded into the rows of its column table, so that they hold whole vectors
// and at least kMinRowValues values: a table of c * s values per row takes a multiple of
// W / gcd(c * s, W) rows of x per row (while that fits a column group). Column j of the folded
// table holds channel (j mod c * s) / s. Through Python, Zen 3, float32, (1333333, 3)
// inference / training forward / backward: 10.4 / 14.9-18.7 / 18.8-19.1 ms in scalar code (a
// row of 3 values holds no vector), 1.2-1.4 / 2.3-2.7 / 3.0-3.8 folded 8 rows to 24 values,
// 0.7 / 1.4 / 2.1 folded 24 rows to 72 values (a copy: 2.2-2.6 ms). (250000, 16), whole vectors
// already: 1.6-1.7 / 2.8-3.1 / 4.0-4.7 -> 0.9 / 1.4 / 2.4 folded to 64 values; 128 measured no
// better.
template <class T>
Shape folded(Shape sh) {
  constexpr int64_t W = Vec<T>::width;
  constexpr int64_t kMinRowValues = 64;
  if (!sh.columns()) return sh;
  const int64_t values = sh.row_values();
  const int64_t whole = W / std::gcd(values, W);
  int64_t fold = whole;
  while (values * fold < kMinRowValues && values * (fold + whole) <= kColGroup) fold += whole;
  if (values * fold <= kColGroup) sh.fold = fold;
  return sh;
}

template <class T>
bool stream_output(const Shape& sh) {
  return sh.n * sh.c * sh.s * int64_t{sizeof(T)} >= stream_threshold_bytes();
}

// Fetches [p, p + bytes) into L2 (prefetcht1).
inline void prefetch_l2(const void* p, int64_t bytes) {
  const char* b = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(b + i, 0, 2);
}

// The whole-array passes over arrays this large (streamed: they come from memory) prefetch
// their inputs (x, dy) this many bytes ahead of the vector they reach, into L2. The hardware
// prefetchers alone fall behind whenever the core stops issuing loads: at every run's end (its
// sums are folded into float64 and stored) and behind the arithmetic of the normalization.
// Zen 3, AVX2, float32, interleaved medians of 3-7, none -> 4 / 8 / 16 KiB ahead, 2 threads:
// 256x256x14x14 training forward 8.5 -> 6.8 / 6.7 / 6.6 ms, inference 4.2 -> 3.4 / 3.3 / 3.4;
// 32x64x56x56 forward 3.3 -> 2.4 / 2.4 / 2.3, inference 1.8 -> 1.5 / 1.4 / 1.0; channels-last
// 32x56x56x64 inference 2.2 -> 1.5 / 1.6 / 1.5. None -> 8 KiB: 256x256x14x14 backward
// 12.6 -> 10.3 ms (1 thread 20.9 -> 17.6); channels-last backward's dx pass 6.7 -> 6.2 ms
// (float64 15.2 -> 13.8). (A STREAM-style copy measured 5-13 % faster with a prefetch 2-8 KiB
// ahead; a pass that only sums, -6 to +18 %.)
constexpr int64_t kAheadBytes = 8192;
template <class T>
constexpr int64_t kAheadValues = kAheadBytes / int64_t{sizeof(T)};

// The column layout's form of that prefetch, for tables whose tasks take whole rows (at most
// kColGroup columns: channels-last), so that a thread's rows lie back to back: a task fetches,
// with each row it reaches (in its first register tile, or along the rows), the row about
// 8 KiB on (`rows` rows), whose other tiles then come from cache too. Channels-last 32x56x56x64,
// interleaved medians of 3, none -> 8 KiB ahead, 2 threads: training forward float32 4.5 -> 3.7 ms,
// float64 9.6 -> 7.9; backward float32 7.4 -> 6.5, float64 19.3 -> 14.7 (16 / 32 / 64 rows
// of 256 bytes ahead: forward 3.7 / 3.5 / 3.4 ms). 1024x1024 float64 (8 MiB, four tasks per
// row) ran 10 % slower with it on 2 threads: wider tables take none, but for the statistics
// (`wider`) of tables whose tasks take whole rows (see kRowTaskGroups). Training forward,
// float32, 2 threads, none -> 8 KiB ahead: 4096x1024 aligned 1.9-2.3 -> 1.3-1.8 ms, inputs 16
// bytes past a line 1.4-2.1 -> 1.4-1.9 (faster in 5 of 7 rounds); 8192x512 aligned 1.1-2.9 ->
// 1.2-1.9, inputs 16 bytes past a line 1.8-3.0 -> 1.2-1.6. The backward's sums, which read x
// and dy, ran slower with it in 9 of 10 rounds (4096x1024 aligned 2.8-3.8 -> 3.5-4.3 ms; Zen
// 3, AVX2).
struct RowsAhead {
  int64_t rows = 0, bytes = 0;  // rows ahead, bytes of each row fetched (0: no prefetch)

  template <class T>
  static RowsAhead of(const Shape& sh, int64_t j0, int64_t j1, bool first_tile = true,
                      bool wider = false) {
    if (!first_tile || !stream_output<T>(sh)) return {};
    if (sh.n_col_groups() > 1 && (!wider || j1 - j0 < sh.cols())) return {};
    const int64_t bytes = (j1 - j0) * int64_t{sizeof(T)};
    return {(kAheadBytes + bytes - 1) / bytes, bytes};
  }
  void fetch(const void* row_start, int64_t row_stride_bytes) const {
    prefetch_l2(static_cast<const char*>(row_start) + rows * row_stride_bytes, bytes);
  }
};

void store_moments(double* p, const Moments& m) {
  p[0] = m.count;
  p[1] = m.mean;
  p[2] = m.m2;
}

double biased_variance(const Moments& m) {
  const double var = m.m2 / m.count;
  return var < 0.0 ? 0.0 : var;  // rounding can leave a tiny negative; NaN passes through
}

// The batch mean and biased variance of channels [ch0, ch1) from their parts (a count, a mean
// relative to the channel's first value x[ch * s], and an m2 each), channel ch's part q at
// parts + 3 * (ch - ch0) * s + part(q), merged in part order in two passes (no division per
// part, unlike merge). Scalar math per channel:
//   N = sum(count_q);  mean = sum(count_q * mean_q) / N;  m2 = sum(m2_q + count_q * (mean_q -
//   mean)^2);  batch_mean = x[ch * s] + mean;  batch_var = max(m2 / N, 0)
// The sums go a channel at a time, the divisions a vector of channels at a time (the same bits):
// one channel at a time, each channel's two divisions held up its next sums on tables of a few
// rows and many channels. Float32 training forward, fastest of 31 batches, 3 interleaved rounds,
// 1 thread: (32, 16384) 438-562 -> 320-385 us, (8, 25088) 312-512 -> 216-261; 2 threads: (32,
// 16384) 203-286 -> 169-229, (1024, 1024) 422-471 -> 377-428. (4, 4096, 6), whose channels add
// 6 parts each, unchanged (Sapphire Rapids, AVX-512).
template <class T, class Part>
void channel_moments(double* batch_mean, double* batch_var, const T* x, int64_t s, int64_t ch0,
                     int64_t ch1, const double* parts, int64_t n_parts, const Part& part) {
  using D = Vec<double>;
  constexpr int64_t kGroup = 8 * D::width;  // channels at a time
  for (int64_t g0 = ch0; g0 < ch1; g0 += kGroup) {
    const int64_t m = ch1 - g0 < kGroup ? ch1 - g0 : kGroup;
    const int64_t m_vec = (m + D::width - 1) / D::width * D::width;
    alignas(64) double count[kGroup], mean[kGroup], m2[kGroup];
    for (int64_t k = 0; k < m; ++k) {
      const double* channel = parts + 3 * (g0 - ch0 + k) * s;
      double n = 0.0, weighted = 0.0;
      for (int64_t q = 0; q < n_parts; ++q) {
        const double* p = channel + part(q);
        n += p[0];
        weighted += p[0] * p[1];
      }
      count[k] = n;
      mean[k] = weighted;  // (divided below)
    }
    for (int64_t k = m; k < m_vec; ++k) count[k] = 1.0, mean[k] = m2[k] = 0.0;  // (past the last)
    // mean = weighted / N
    for (int64_t k = 0; k < m_vec; k += D::width)
      (D::load(mean + k) / D::load(count + k)).store(mean + k);
    for (int64_t k = 0; k < m; ++k) {
      const double* channel = parts + 3 * (g0 - ch0 + k) * s;
      double sum = 0.0;
      for (int64_t q = 0; q < n_parts; ++q) {
        const double* p = channel + part(q);
        const double delta = p[1] - mean[k];
        sum += p[2] + p[0] * delta * delta;
      }
      m2[k] = sum;
    }
    // batch_var = max(m2 / N, 0)   (rounding can leave a tiny negative; NaN passes through)
    const D zero = D::broadcast(0.0);
    for (int64_t k = 0; k < m_vec; k += D::width)
      floor_at(D::load(m2 + k) / D::load(count + k), zero).store(m2 + k);
    for (int64_t k = 0; k < m; ++k) {
      batch_mean[g0 + k] = static_cast<double>(x[(g0 + k) * s]) + mean[k];
      batch_var[g0 + k] = m2[k];
    }
  }
}

// The runs layout's statistics take one shift per channel: its reference value ref (channel_ref,
// below). A unit stores only the sums of d = x - ref and d^2 over its values (shifted_sums);
// the channel adds its units' sums in unit order and turns them into moments once
// (shifted_moments_of), exact to a few roundings while ref lies within two standard deviations
// of the channel's mean. A channel whose ref lies farther (an outlying start, data sorted by
// image) is summed again around the mean found, and one whose sums overflowed in float64 around
// ref (runs_moments_again; see wide_moments). A shift per unit (the mean of its first vector, as
// LayerNorm's rows take) cost a horizontal sum, a division and a check per unit, a third of the
// training forward on 49-value runs: 8x512x7x7 float32, 1 / 2 threads, 0.153 -> 0.099 / 0.088 ->
// 0.070 ms (float64 1 thread 0.182 -> 0.121); arrays from memory unchanged within the noise (Zen 3,
// AVX2, interleaved medians of 3-5).
template <class T, bool kAhead = false>
[[gnu::always_inline]] inline void store_unit_sums(double* p, const T* x, int64_t n, T ref,
                                                   int64_t ahead = 0) {
  const ShiftedSums sums = shifted_sums<T, kAhead>(x, n, ref, ahead);
  p[0] = sums.d;
  p[1] = sums.d2;
}

// Runs shorter than kGroupedRunBytes (7x7 to 11x11 float32 planes; a unit each) go four at a
// time through their sums (store_unit_sums4, grad_sums4): each run keeps a vector of its own,
// and the four runs' lanes are added together at the end (lane_totals4). One at a time, each run
// ended in horizontal sums, widenings and float64 adds of its own, a chain of dependent steps
// longer than its loads: the statistics of 49-value float32 runs in cache ran at a third of the
// speed of a plain read of them. Zen 3, AVX2, float32, the units' sums alone, 1 thread,
// 39x256x7x7: 84 -> 43 us (a read: 34). Whole passes, interleaved medians of 9, 1 / 2 threads:
// 8x512x7x7 forward 102 / 54 -> 58 / 39 us, backward 127 / 76 -> 100 / 57; 39x256x7x7 backward
// 327 / 177 -> 202 / 138; from memory, 128x512x7x7 forward 1.23 -> 1.05 ms and backward 1.81 ->
// 1.61 on 2 threads. Runs of 784 bytes (14x14 float32) four at a time read eight streams a run
// apart, and the backward of 64x256x14x14 from memory took 1.5 times as long (1 thread, 2.5 ->
// 3.7 ms; its sums pass twice), with or without prefetching; in cache they gained nothing
// measurable as a whole (16x256x14x14). So the rule is the run's length alone, as each unit's bits
// must be: the whole-array passes, by_channel and the short-runs backward take such runs four at a
// time, and the channel blocks (runs of kMinBlockRunBytes or more) take none.
constexpr int64_t kGroupedRunBytes = 512;
constexpr int kGroupRuns = 4;
static_assert(kMinRun >= 16, "a run holds a whole vector (tails load the run's last one)");

template <class T>
bool grouped_runs(const Shape& sh) {
  return !sh.columns() && sh.s * int64_t{sizeof(T)} < kGroupedRunBytes;
}

// 1 in the last len % W lanes, 0 before: applied to a run's last W values, it keeps those past
// its last whole vector (grouped runs' tails).
template <class T>
Vec<T> tail_keep(int64_t len) {
  constexpr int64_t W = Vec<T>::width;
  T keep[W];
  for (int64_t l = 0; l < W; ++l) keep[l] = l >= W - len % W ? T(1) : T(0);
  return Vec<T>::load(keep);
}

// A vector per run of a group (Chains: zeroed without a memset), and a[0, 4) broadcast into one.
template <class T>
using PerRun = Chains<T, kGroupRuns>;
template <class T>
PerRun<T> broadcast_each(const T* a) {
  using V = Vec<T>;
  return {{V::broadcast(a[0]), V::broadcast(a[1]), V::broadcast(a[2]), V::broadcast(a[3])}};
}

// Two sums per run of a group (d and d^2, or dy and dy * xhat): a vector per run in T, added
// into float64 totals four runs at once by flush (lane_totals4); store writes the runs' pairs.
template <class T>
struct GroupPairSums {
  PerRun<T> first = PerRun<T>::zero(), second = PerRun<T>::zero();
  Quad first_total = quad_zero(), second_total = quad_zero();

  void flush() {
    first_total = first_total + lane_totals4(first.acc);
    second_total = second_total + lane_totals4(second.acc);
    first = second = PerRun<T>::zero();
  }
  // p[2k] and p[2k + 1]: run k's two totals
  void store(double* p) const { store_pairs(p, first_total, second_total); }
};

// Calls step(j, keep_lanes) for the vectors of a run of len values (len >= W) in blocks of at
// most kTermsPerLane, then done() after each block: the whole vectors at j, then a last one at
// len - W, keep_lanes true, whose lanes before len - len % W the caller zeroes with keep.
template <class T, class Step, class Done>
[[gnu::always_inline]] inline void run_blocks(int64_t len, const Step& step, const Done& done) {
  constexpr int64_t W = Vec<T>::width;
  constexpr int64_t kBlock = (kTermsPerLane - 1) * W;  // leaves a term for the tail
  const int64_t n_vec = len - len % W;
  for (int64_t j0 = 0;; j0 += kBlock) {
    const int64_t j1 = j0 + kBlock < n_vec ? j0 + kBlock : n_vec;
    for (int64_t j = j0; j < j1; j += W) step(j, std::false_type{});
    if (j1 == n_vec) {
      if (n_vec < len) step(len - W, std::true_type{});
      done();
      return;
    }
    done();
  }
}

// The sums of d = x - ref[k] and d^2 over the len values at x[k], for k in [0, 4), into p[2k]
// and p[2k + 1] (store_unit_sums's pair, four runs at a time; see kGroupedRunBytes).
// keep = tail_keep<T>(len). With kAhead each run also prefetches its values `ahead` on, into L2.
template <class T, bool kAhead = false>
[[gnu::always_inline]] inline void store_unit_sums4(double* p, const T* const* x, const T* ref,
                                                    int64_t len, Vec<T> keep, int64_t ahead = 0) {
  using V = Vec<T>;
  const PerRun<T> shift = broadcast_each(ref);
  GroupPairSums<T> sums;  // d, d^2
  run_blocks<T>(
      len,
      [&](int64_t j, auto tail) {
        for (int k = 0; k < kGroupRuns; ++k) {
          if constexpr (kAhead) __builtin_prefetch(x[k] + j + ahead, 0, 2);
          V d = V::load(x[k] + j) - shift.acc[k];
          if constexpr (decltype(tail)::value) d = d * keep;
          sums.first.acc[k] = sums.first.acc[k] + d;
          sums.second.acc[k] = fmadd(d, d, sums.second.acc[k]);
        }
      },
      [&] { sums.flush(); });
  sums.store(p);
}

// Calls sums4(out, unit, ch) for the units [u0, u1), kGroupRuns at a time: unit[k] and its
// channel ch[k] (units in order, channels counting up from ch0 and wrapping at c), out the
// place of the first one's pair, at pairs + 2 * (unit - u0). A last group of fewer units repeats
// its last one, and its pairs go through scratch. The callers' sums4 are declared always_inline:
// GCC kept them out of line, and each group's units and channels went through the stack (the
// statistics of 39x256x7x7 float32 on 1 thread: 130 against 63 us; Zen 3, AVX2).
template <class Sums4>
[[gnu::always_inline]] inline void for_unit_groups(double* pairs, int64_t u0, int64_t u1,
                                                   int64_t ch0, int64_t c, const Sums4& sums4) {
  int64_t ch = ch0;
  for (int64_t u = u0; u < u1; u += kGroupRuns) {
    const int m = u1 - u < kGroupRuns ? static_cast<int>(u1 - u) : kGroupRuns;
    int64_t unit[kGroupRuns], chs[kGroupRuns];
    for (int k = 0; k < kGroupRuns; ++k) {
      unit[k] = u + (k < m ? k : m - 1);
      chs[k] = ch;
      if (k + 1 < m && ++ch == c) ch = 0;
    }
    if (++ch == c) ch = 0;  // the next group's first unit
    double scratch[2 * kGroupRuns];
    double* out = pairs + 2 * (u - u0);
    sums4(m == kGroupRuns ? out : scratch, unit, chs);  // (one call: inlined)
    if (m < kGroupRuns)
      for (int q = 0; q < 2 * m; ++q) out[q] = scratch[q];
  }
}

// Channel ch's runs, grouped (see kGroupedRunBytes), four images at a time: image i's pair of
// sums of d = x - ref and d^2 into parts[2i, 2i + 2), each group prefetching the runs `ahead`
// images on (none where they would pass the last image).
template <class T>
void channel_run_sums4(double* parts, const T* x, const Shape& sh, int64_t ch, T ref, Vec<T> keep,
                       int64_t ahead) {
  const int64_t n = sh.n, c = sh.c, s = sh.s;
  const T refs[kGroupRuns] = {ref, ref, ref, ref};
  for_unit_groups(
      parts, 0, n, 0, 1,
      [&](double* out, const int64_t* image, const int64_t*) __attribute__((always_inline)) {
        const T* xs[kGroupRuns];
        for (int q = 0; q < kGroupRuns; ++q) xs[q] = x + (image[q] * c + ch) * s;
        store_unit_sums4<T, true>(out, xs, refs, s, keep,
                                  image[kGroupRuns - 1] + ahead < n ? ahead * c * s : 0);
      });
}

// Calls f(i, off, len) for the units of channel ch (values x[off, off + len) of image i), in
// unit order.
template <class F>
void for_channel_units(const Shape& sh, int64_t ch, const F& f) {
  const int64_t per_run = sh.chunks_per_run();
  for (int64_t i = 0; i < sh.n; ++i)
    for (int64_t q = 0; q < per_run; ++q) {
      const int64_t c0 = q * kChunk;
      f(i, (i * sh.c + ch) * sh.s + c0, sh.s - c0 < kChunk ? sh.s - c0 : kChunk);
    }
}

// Channel ch's reference for the runs layout's statistics (see store_unit_sums): the mean of the
// first vector of its first run. Its first value alone lies more than two standard deviations
// from the mean for one channel in 22 of normally distributed data, and each such channel's
// runs were read again from memory: 256x256x14x14 float32 training forward, 2 threads,
// standard normal against uniform values, 7.1 against 6.6 ms; 32x64x56x56 2.35 against 2.12
// (Zen 3, AVX2).
template <class T>
T channel_ref(const T* x, const Shape& sh, int64_t ch) {
  return first_vector_mean(x + ch * sh.s);
}

// The rare rest of channel ch's statistics (see store_unit_sums) when `first`, from the sums
// around ref, came from a ref too far from the mean or from sums that overflowed: the
// channel's units summed again around the mean found, and in float64 if the sums overflow.
// Non-finite input still gives a non-finite result. Out of line: the common case stays small.
template <class T>
[[gnu::noinline, gnu::cold]] Moments runs_moments_again(const T* x, const Shape& sh, int64_t ch,
                                                        T ref, const Moments& first, bool too_far) {
  Moments m = first;
  if (too_far) {
    const T shift = static_cast<T>(static_cast<double>(ref) + m.mean);
    double sum_d = 0.0, sum_d2 = 0.0;
    for_channel_units(sh, ch, [&](int64_t, int64_t off, int64_t len) {
      const ShiftedSums sums = shifted_sums(x + off, len, shift);
      sum_d += sums.d;
      sum_d2 += sums.d2;
    });
    m = shifted_moments_of(static_cast<double>(shift) - static_cast<double>(ref), sum_d, sum_d2,
                           first.count);
  }
  if (!overflowed(m)) return m;
  Moments wide{0.0, 0.0, 0.0};  // each unit in float64 (wide_moments), merged in unit order
  for_channel_units(sh, ch, [&](int64_t, int64_t off, int64_t len) {
    wide = merge(wide, wide_moments(x + off, len, 1, ref));
  });
  return wide;
}

// Channel ch's moments (mean relative to ref) from the sums of d = x - ref and d^2 over all its
// values, with the rare second pass (runs_moments_again) where they need one.
template <class T>
Moments runs_moments_of_sums(const T* x, const Shape& sh, int64_t ch, T ref,
                             const ShiftedSums& sums) {
  const Moments m = shifted_moments_of(0.0, sums.d, sums.d2, static_cast<double>(sh.n * sh.s));
  const bool too_far = shift_too_far(m, 0.0);
  if (too_far || overflowed(m)) return runs_moments_again(x, sh, ch, ref, m, too_far);
  return m;
}

// Channel ch's moments (mean relative to ref) from its units' sums, unit k's at part(k), in
// unit order.
template <class T, class Part>
Moments runs_moments(const T* x, const Shape& sh, int64_t ch, T ref, const Part& part) {
  const int64_t units = sh.n * sh.chunks_per_run();
  double sum_d = 0.0, sum_d2 = 0.0;
  for (int64_t k = 0; k < units; ++k) {
    const double* p = part(k);
    sum_d += p[0];
    sum_d2 += p[1];
  }
  return runs_moments_of_sums(x, sh, ch, ref, {sum_d, sum_d2});
}

// Channels per block of channel_unit_sums: their pairs of sums (4 KiB) stay in L1.
constexpr int64_t kSumChannels = 256;

// The runs layout's per-unit pairs of sums, parts (n, c, chunks_per_run, 2) in memory order,
// added per channel in unit order (image, then chunk): acc[2 * (ch - c0) + {0, 1}] for channels
// [c0, c1), at most kSumChannels. Image by image, the channels' pairs lie side by side: the
// adds go a vector of pairs at a time, where a channel at a time took a chain of dependent
// adds over parts a whole image apart (about a tenth of the training passes on 7x7 planes).
// Each channel adds its units in the same order either way: the same bits.
void channel_unit_sums(double* acc, const double* parts, const Shape& sh, int64_t c0, int64_t c1) {
  const int64_t per_run = sh.chunks_per_run(), width = 2 * (c1 - c0);
  zero(acc, width);
  for (int64_t i = 0; i < sh.n; ++i) {
    const double* image = parts + 2 * i * sh.c * per_run;
    if (per_run == 1) {
      // Scalar math: acc[j] += image[2 * c0 + j], for each j
      for (int64_t j = 0; j < width; ++j) acc[j] += image[2 * c0 + j];
      continue;
    }
    for (int64_t k = 0; k < per_run; ++k)
      for (int64_t ch = c0; ch < c1; ++ch) {
        const double* p = image + 2 * (ch * per_run + k);
        acc[2 * (ch - c0)] += p[0];
        acc[2 * (ch - c0) + 1] += p[1];
      }
  }
}

// Calls f(ch, sums) for each channel ch in [c0, c1), sums pointing to its two totals of the
// units' pairs (see channel_unit_sums).
template <class F>
void for_channel_unit_sums(const double* parts, const Shape& sh, int64_t c0, int64_t c1,
                           const F& f) {
  alignas(64) double acc[2 * kSumChannels];
  for (int64_t b0 = c0; b0 < c1; b0 += kSumChannels) {
    const int64_t b1 = c1 - b0 < kSumChannels ? c1 : b0 + kSumChannels;
    channel_unit_sums(acc, parts, sh, b0, b1);
    for (int64_t ch = b0; ch < b1; ++ch) f(ch, acc + 2 * (ch - b0));
  }
}

bool flush_due(int64_t r, int64_t r0, int64_t r1) {
  return (r - r0 + 1) % kRowsPerFlush == 0 || r + 1 == r1;
}

// ---------------------------------------------------------------------------------------------
// Column layout: statistics and gradient sums of a block of rows, per column

// Moments of column j over rows [r0, r1), in scalars and two passes: shift = mean of the block;
// then the shifted sums as in tile_moments (in float64 around ref if the sums overflow; see
// wide_moments). For the columns past the last full tile, and for a tile's column whose shift
// turned out too far from its mean or whose sums overflowed.
template <class T>
void column_moments(double* out, const T* x, T ref, int64_t cols, int64_t j, int64_t r0,
                    int64_t r1) {
  const double count = static_cast<double>(r1 - r0);
  T acc = T(0);
  double sum = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    acc += x[r * cols + j];
    if (flush_due(r, r0, r1)) {
      sum += static_cast<double>(acc);
      acc = T(0);
    }
  }
  const T shift = static_cast<T>(sum / count);
  T acc_d = T(0), acc_d2 = T(0);
  double sd = 0.0, sd2 = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    const T d = x[r * cols + j] - shift;
    acc_d += d;
    acc_d2 = fma_scalar(d, d, acc_d2);
    if (flush_due(r, r0, r1)) {
      sd += static_cast<double>(acc_d);
      sd2 += static_cast<double>(acc_d2);
      acc_d = acc_d2 = T(0);
    }
  }
  const Moments m =
      shifted_moments_of(static_cast<double>(shift) - static_cast<double>(ref), sd, sd2, count);
  store_moments(out, overflowed(m) ? wide_moments(x + r0 * cols + j, r1 - r0, cols, ref) : m);
}

// q[j] = a[j] / b for j in [0, m), m a whole number of Vec<double>: a vector of divisions at a
// time (the same bits as one by one).
inline void divide_each(double* q, const double* a, double b, int64_t m) {
  using D = Vec<double>;
  const D b_v = D::broadcast(b);
  for (int64_t j = 0; j < m; j += D::width) (D::load(a + j) / b_v).store(q + j);
}

// The moments of the m columns from j0 over rows [r0, r1), given each column's shift and its
// sums of d = x - shift and d^2 (shifted_moments_of); a column whose shift landed more than 2 std
// from its mean (outliers up front, sorted data), or whose sums overflowed, is done
// again by column_moments. m: a whole number of Vec<T>. A vector of columns at a time (the same
// bits): one column at a time, the checks took most of the statistics of tables of a few rows
// ((2, 65536) float32 training forward, 1 thread: 0.83-0.88 -> 0.73-0.76 ms; Zen 3, AVX2).
template <class T>
void store_shifted_moments(double* out, const T* x, const T* ref, const T* shift,
                           const double* sum_d, const double* sum_d2, int64_t cols, int64_t j0,
                           int64_t m, int64_t r0, int64_t r1) {
  using D = Vec<double>;
  constexpr int64_t W = D::width;
  const double count = static_cast<double>(r1 - r0);
  const D count_v = D::broadcast(count);
  for (int64_t j = 0; j < m; j += W) {
    // Scalar math: shift_rel = shift - ref, then shifted_moments_of around it.
    const D shift_rel = load_wide(shift + j) - load_wide(ref + j0 + j);
    const ShiftedMomentsLanes lanes =
        shifted_moments_lanes(shift_rel, D::load(sum_d + j), D::load(sum_d2 + j), count_v);
    double mean_a[W], m2_a[W];
    lanes.mean.store(mean_a);
    lanes.m2.store(m2_a);
    for (int64_t k = 0; k < W; ++k) {
      const int64_t col = j0 + j + k;
      if (lanes.again >> k & 1)
        column_moments(out + 3 * (j + k), x, ref[col], cols, col, r0, r1);
      else
        store_moments(out + 3 * (j + k), Moments{count, mean_a[k], m2_a[k]});
    }
  }
}

// Moments of columns [j0, j0 + kChains * W) over rows [r0, r1), in registers, in one pass over
// the block after a look at its first rows (its rows are a power-of-two stride apart in wide
// tables, so a second pass would come from L2, not L1). Scalar math per column:
// shift = mean of the first kRowsPerFlush rows; d = x - shift;
// mean = shift + sum(d) / n;  m2 = sum(d^2) - sum(d)^2 / n.   out: 3 doubles per column, the
// mean relative to the column's reference ref[j] (see chunk_moments).
// A column whose shift lands more than 2 std from its mean (outliers up front, sorted data) is
// done again by column_moments, as is one whose sums overflowed.
template <class T>
void tile_moments(double* out, const T* x, const T* ref, int64_t cols, int64_t j0, int64_t r0,
                  int64_t r1, const RowsAhead& ahead) {
  using V = Vec<T>;
  constexpr int64_t kTile = kChains * V::width;
  const int64_t first_end = r1 - r0 < kRowsPerFlush ? r1 : r0 + kRowsPerFlush;

  // Scalar math: shift = sum(x over the first rows) / their number
  Chains<T> acc = Chains<T>::zero();
  for (int64_t r = r0; r < first_end; ++r) {
    const T* xr = x + r * cols + j0;
    for (int u = 0; u < kChains; ++u) acc.acc[u] = acc.acc[u] + V::load(xr + u * V::width);
  }
  alignas(64) double first_sum[kTile];
  T shift[kTile];
  for (int u = 0; u < kChains; ++u) {
    WideSum<T> w = WideSum<T>::zero();
    w.add(Wide<T>::of(acc.acc[u]));
    w.store(first_sum + u * V::width);
  }
  divide_each(first_sum, first_sum, static_cast<double>(first_end - r0), kTile);
  for (int64_t j = 0; j < kTile; ++j) shift[j] = static_cast<T>(first_sum[j]);

  Chains<T> acc_d = Chains<T>::zero(), acc_d2 = Chains<T>::zero();
  WideSum<T> tot_d[kChains], tot_d2[kChains];
  for (int u = 0; u < kChains; ++u) tot_d[u] = tot_d2[u] = WideSum<T>::zero();
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * cols + j0;
    ahead.fetch(xr, cols * int64_t{sizeof(T)});
    for (int u = 0; u < kChains; ++u) {
      const V d = V::load(xr + u * V::width) - V::load(shift + u * V::width);
      acc_d.acc[u] = acc_d.acc[u] + d;
      acc_d2.acc[u] = fmadd(d, d, acc_d2.acc[u]);
    }
    if (flush_due(r, r0, r1))
      for (int u = 0; u < kChains; ++u) {
        tot_d[u].add(Wide<T>::of(acc_d.acc[u]));
        tot_d2[u].add(Wide<T>::of(acc_d2.acc[u]));
        acc_d.acc[u] = acc_d2.acc[u] = V::broadcast(T(0));
      }
  }
  double sd[kTile], sd2[kTile];
  for (int u = 0; u < kChains; ++u) {
    tot_d[u].store(sd + u * V::width);
    tot_d2[u].store(sd2 + u * V::width);
  }
  store_shifted_moments(out, x, ref, shift, sd, sd2, cols, j0, kTile, r0, r1);
}

// The along-the-rows passes (rows_moments, rows_grad_sums) keep two sums per column: in T
// since the last flush (acc0, acc1) and in float64 (tot0, tot1), over columns [0, m).
// Scalar math: tot += acc (widened, lane order);  acc = 0
template <class T>
void flush_sums(double* tot0, double* tot1, T* acc0, T* acc1, int64_t m) {
  using V = Vec<T>;
  for (int64_t j = 0; j < m; j += V::width) {
    accumulate_wide(tot0 + j, V::load(acc0 + j));
    accumulate_wide(tot1 + j, V::load(acc1 + j));
    V::broadcast(T(0)).store(acc0 + j);
    V::broadcast(T(0)).store(acc1 + j);
  }
}

// Column groups of a task of the whole-table passes along the rows (rows_moments,
// rows_grad_sums): as many as a page of a row holds (4 KiB: 1024 float32 columns), so that
// tables up to that wide are read a whole row at a time, fewer where threads would go without
// a task (the per-column sums do not depend on the grouping). A task of one group read a 1 KiB
// piece of each row, rows a page or more apart (the hardware prefetchers stop at page
// boundaries, so each piece likely began with misses). Zen 3, AVX2, native, fastest of 9-31
// batches in 3 interleaved rounds, one group -> a page, float32 training backward: 1024x1024 1
// thread 966-1351 -> 648-1163 us, 2 threads 423-588 -> 371-448 (inputs 16 bytes past a line
// 450-546 -> 383-443); 2 threads: 4096x1024 (from memory) 5.2-7.2 -> 3.5-4.2 ms, 512x3000
// 920-1148 -> 659-973 us, 2048x512 381-422 -> 339-371, 1000x1000 369-411 -> 359-375, 300x1024
// 137-167 -> 117-141; float64 (two groups, 512 columns a task), 2 threads: 1024x1024 1045-1186
// -> 908-991 us, 2048x512 873-1017 -> 776-896. Training forward, 4096x1024 float32 from
// inputs 16 bytes past a line (whose statistics go along the rows), 2 threads: 3.7-4.4 ->
// 1.5-2.0 ms; see moment_tiles for aligned inputs.
template <class T>
constexpr int64_t kRowTaskGroups = 4096 / (kColGroup * int64_t{sizeof(T)});
template <class T>
constexpr int64_t kRowTaskCols = kRowTaskGroups<T> * kColGroup;  // at most, per task

template <class T>
int64_t row_task_span(const Shape& sh) {
  int64_t span = kRowTaskGroups<T>;
  while (span > 1 && sh.n_tasks(span) < get_num_threads()) span /= 2;
  return span;
}

// tile_moments for the whole vectors of columns [j0, j1) (at most kRowTaskCols<T>: those left
// after the last register tile, or all of them where batch_norm_stats takes no tiles) along the
// rows, kSubRows rows at a time per vector of columns, the per-column sums in arrays in L1: the
// same operations per column as tile_moments. The columns narrower than a tile were summed a
// column at a time (column_moments): before rows were folded (see folded), channels-last
// (n, 16) and (n, 24) float32 tables took 4x longer for their statistics than for the
// normalization after them.
template <class T>
void rows_moments(double* out, const T* x, const T* ref, int64_t cols, int64_t j0, int64_t j1,
                  int64_t r0, int64_t r1, const RowsAhead& ahead) {
  using V = Vec<T>;
  constexpr int64_t W = V::width;
  const int64_t m = j1 - j0;
  const int64_t first_end = r1 - r0 < kRowsPerFlush ? r1 : r0 + kRowsPerFlush;
  // the shifts and the sums since the last flush in T, the sums in float64
  alignas(64) T shift[kRowTaskCols<T>], acc_d[kRowTaskCols<T>], acc_d2[kRowTaskCols<T>];
  alignas(64) double sum_d[kRowTaskCols<T>], sum_d2[kRowTaskCols<T>];
  const T* xb = x + j0;

  // Scalar math: shift = sum(x over the first rows) / their number
  for (int64_t j = 0; j < m; j += W) V::broadcast(T(0)).store(acc_d + j);
  for (int64_t r = r0; r < first_end; ++r)
    for (int64_t j = 0; j < m; j += W)
      (V::load(acc_d + j) + V::load(xb + r * cols + j)).store(acc_d + j);
  for (int64_t j = 0; j < m; ++j) sum_d[j] = sum_d2[j] = 0.0;
  for (int64_t j = 0; j < m; j += W) accumulate_wide(sum_d + j, V::load(acc_d + j));
  divide_each(sum_d, sum_d, static_cast<double>(first_end - r0), m);
  for (int64_t j = 0; j < m; ++j) {
    shift[j] = static_cast<T>(sum_d[j]);
    sum_d[j] = 0.0;
  }

  // Scalar math: d = x - shift;  sums += (d, d^2)
  for (int64_t j = 0; j < m; j += W) {
    V::broadcast(T(0)).store(acc_d + j);
    V::broadcast(T(0)).store(acc_d2 + j);
  }
  for (int64_t ra = r0; ra < r1; ra += kSubRows) {
    const int64_t rb = ra + kSubRows < r1 ? ra + kSubRows : r1;
    for (int64_t r = ra; r < rb; ++r) ahead.fetch(xb + r * cols, cols * int64_t{sizeof(T)});
    for (int64_t j = 0; j < m; j += W) {
      const V shift_v = V::load(shift + j);
      V a = V::load(acc_d + j), a2 = V::load(acc_d2 + j);
      for (int64_t r = ra; r < rb; ++r) {
        const V d = V::load(xb + r * cols + j) - shift_v;
        a = a + d;
        a2 = fmadd(d, d, a2);
      }
      a.store(acc_d + j);
      a2.store(acc_d2 + j);
    }
    if (flush_due(rb - 1, r0, r1)) flush_sums(sum_d, sum_d2, acc_d, acc_d2, m);
  }
  store_shifted_moments(out, x, ref, shift, sum_d, sum_d2, cols, j0, m, r0, r1);
}

// Sums of dy and dy * xhat for columns [j0, j1) (whole vectors, at most kRowTaskCols<T>) over
// rows [r0, r1), with per-column mean and invstd.
// Scalar math: xhat = (x - mean) * invstd;  sums += (dy, dy * xhat).
// With kDx also dx = k * dy (eval-mode backward, in the same pass). out: 2 doubles per column.
// In row order: the sums live in arrays (in L1), and each vector of columns takes kSubRows rows
// at a time, so that x and dy are read along their rows. Register tiles of kChains vectors of
// columns, running down the block, read 128 bytes of each row, a row apart: three cache lines
// instead of two where the arrays do not start on a line (NumPy's large arrays start 16 bytes
// past one), and in tables a power of two wide all in one L1 set. Sums pass alone, Zen 3,
// AVX2, float32, interleaved medians of 20, tiles -> rows: arrays 16 bytes past a line,
// 1024x1024 1 / 2 threads 540-560 -> 365-440 / 300-320 -> 215-240 us, 64x1024 1 thread 31 ->
// 18 us, channels-last 32x56x56x64 2 threads 3.0-4.9 -> 1.7-3.1 ms; aligned arrays,
// 1024x1024 2 threads 195-212 -> 225-255 us (through Python, whose arrays are not aligned, the
// whole 1024x1024 backward 0.59 -> 0.51-0.54 ms, 32x56x56x64 6.1 -> 4.4-5.2). Eight rows at a
// time ran 1.4x slower than two or four on 1024x1024: eight rows of x and dy in one L1 set of
// 8 ways. But streamed tables whose tasks take whole rows (rows of x and dy back to back in
// memory) go a row at a time (sub_rows = 1), reading x and dy strictly in memory order: two
// rows at a time, each array is read at two places a row apart, and rows under a page long
// came from memory at about half the speed. Zen 3, AVX2, 2 / 1 threads, interleaved medians
// of 7, two rows -> one, training backward float32: 16384x256 4.17 -> 2.71 / 6.80 -> 5.33 ms,
// 10000x300 3.16 -> 1.59 (2 threads), 8192x512 4.01 -> 3.22 / 7.53 -> 6.17, 5000x600 1.89 ->
// 1.57; float64 8192x256 4.09 -> 3.87 / 7.27 -> 6.39; eval-mode backward float32 16384x256
// 4.99 -> 2.95 / 6.84 -> 4.28, 8192x512 3.75 -> 2.60. Tables of one page a row (4096x1024
// float32) measured the same; tasks of part of each row (2048x2048) 1.4x slower a row at a
// time, and tables in cache 0-13 % slower (8192x64 177 -> 200 us).
template <class T, bool kDx>
void rows_grad_sums(double* out, T* dx, const T* dy, const T* x, const T* mean, const T* invstd,
                    const T* k, int64_t cols, int64_t j0, int64_t j1, int64_t r0, int64_t r1,
                    const RowsAhead& ahead, int64_t sub_rows) {
  using V = Vec<T>;
  constexpr int64_t W = V::width;
  const int64_t m = j1 - j0;
  // in T since the last flush, then in float64
  alignas(64) T acc_dy[kRowTaskCols<T>], acc_dyx[kRowTaskCols<T>];
  alignas(64) double tot_dy[kRowTaskCols<T>], tot_dyx[kRowTaskCols<T>];
  for (int64_t j = 0; j < m; ++j) tot_dy[j] = tot_dyx[j] = 0.0;
  for (int64_t j = 0; j < m; j += W) {
    V::broadcast(T(0)).store(acc_dy + j);
    V::broadcast(T(0)).store(acc_dyx + j);
  }
  for (int64_t ra = r0; ra < r1; ra += sub_rows) {
    const int64_t rb = ra + sub_rows < r1 ? ra + sub_rows : r1;
    for (int64_t r = ra; r < rb; ++r) {
      ahead.fetch(x + r * cols + j0, cols * int64_t{sizeof(T)});
      ahead.fetch(dy + r * cols + j0, cols * int64_t{sizeof(T)});
    }
    for (int64_t j = 0; j < m; j += W) {
      const int64_t col = j0 + j;
      const V mean_v = V::load(mean + col), invstd_v = V::load(invstd + col);
      V sum_dy = V::load(acc_dy + j), sum_dyx = V::load(acc_dyx + j);
      for (int64_t r = ra; r < rb; ++r) {
        const V d = V::load(dy + r * cols + col);
        const V xhat = (V::load(x + r * cols + col) - mean_v) * invstd_v;
        if constexpr (kDx) (d * V::load(k + col)).store(dx + r * cols + col);
        sum_dy = sum_dy + d;
        sum_dyx = fmadd(d, xhat, sum_dyx);
      }
      sum_dy.store(acc_dy + j);
      sum_dyx.store(acc_dyx + j);
    }
    if (flush_due(rb - 1, r0, r1)) flush_sums(tot_dy, tot_dyx, acc_dy, acc_dyx, m);
  }
  for (int64_t j = 0; j < m; ++j) {
    out[2 * j] = tot_dy[j];
    out[2 * j + 1] = tot_dyx[j];
  }
}

template <class T, bool kDx>
void column_grad_sums(double* out, T* dx, const T* dy, const T* x, const T* mean, const T* invstd,
                      const T* k, int64_t cols, int64_t j, int64_t r0, int64_t r1) {
  T acc_dy = T(0), acc_dyx = T(0);
  double s_dy = 0.0, s_dyx = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    const T d = dy[r * cols + j];
    const T xhat = (x[r * cols + j] - mean[j]) * invstd[j];
    if constexpr (kDx) dx[r * cols + j] = d * k[j];
    acc_dy += d;
    acc_dyx = fma_scalar(d, xhat, acc_dyx);
    if (flush_due(r, r0, r1)) {
      s_dy += static_cast<double>(acc_dy);
      s_dyx += static_cast<double>(acc_dyx);
      acc_dy = acc_dyx = T(0);
    }
  }
  out[0] = s_dy;
  out[1] = s_dyx;
}

// Per-channel values expanded to the columns of the column layout: out[j] = per_channel[j / s].
// The lanes of a vector of columns hold channels ch .. ch + W - 1 of a vector loaded from
// per_channel + ch, permuted; the pattern repeats every lcm(s, W) columns (at most s < kMinRun
// vectors). A value at a time (into zeroed buffers), the expansions took most of the column
// layout's time on tables of few rows of many channels: 4x4096x6 float32 inference, 1 thread,
// 109-143 -> 42-46 us (Sapphire Rapids, AVX-512).
template <class T>
class ColumnExpander {
  static constexpr int64_t W = Vec<T>::width;

 public:
  explicit ColumnExpander(int64_t s)
      : s_(s), vectors_(std::lcm(s, W) / W), channels_(vectors_ * W / s) {
    for (int64_t v = 0, ch = 0, t = 0; v < vectors_; ++v) {
      first_[v] = ch;
      for (int64_t k = 0; k < W; ++k) {
        lane_[v][k] = static_cast<int32_t>(ch - first_[v]);
        if (++t == s) t = 0, ++ch;
      }
    }
  }
  // out[j] for the columns of `channels` channels; the vectors loaded stay within the
  // `available` channels from per_channel.
  void operator()(T* out, const T* per_channel, int64_t channels, int64_t available) const {
    using V = Vec<T>;
    int64_t ch0 = 0, j = 0;
    for (; ch0 + channels_ <= channels && ch0 + channels_ - 1 + W <= available; ch0 += channels_)
      for (int64_t v = 0; v < vectors_; ++v, j += W)
        permute(V::load(per_channel + ch0 + first_[v]), lane_[v]).store(out + j);
    for (int64_t ch = ch0; ch < channels; ++ch)
      for (int64_t t = 0; t < s_; ++t) out[j++] = per_channel[ch];
  }
  // The K per-channel arrays `in` (of c channels) as arrays per column of the group of channels
  // [ch0, ch1): in[i] + ch0 where s == 1, else expanded into room + i * stride.
  template <int K>
  void group(const T* (&out)[K], const T* const (&in)[K], T* room, int64_t stride, int64_t ch0,
             int64_t ch1, int64_t c) const {
    for (int i = 0; i < K; ++i) {
      out[i] = s_ == 1 ? in[i] + ch0 : room + i * stride;
      if (s_ > 1) (*this)(room + i * stride, in[i] + ch0, ch1 - ch0, c - ch0);
    }
  }

 private:
  int64_t s_, vectors_, channels_;  // a period: vectors_ vectors of channels_ channels
  int64_t first_[kMinRun];          // vector v's first channel, from the period's
  int32_t lane_[kMinRun][W];        // lane k's channel - first_[v]
};

// expand_to_columns of the whole table (its folded rows copy the first).
template <class T>
void expand_to_columns(T* out, const T* per_channel, const Shape& sh) {
  const int64_t values = sh.row_values();
  ColumnExpander<T>(sh.s)(out, per_channel, sh.c, sh.c);
  for (int64_t k = 1; k < sh.fold; ++k)
    for (int64_t i = 0; i < values; ++i) out[k * values + i] = out[i];
}

// Each column's reference for its moments (see chunk_moments): its channel's first value x[ch *
// s], gathered into firsts (c values) and expanded into out (sh.cols() values).
template <class T>
void column_refs(T* out, T* firsts, const T* x, const Shape& sh) {
  for (int64_t ch = 0; ch < sh.c; ++ch) firsts[ch] = x[ch * sh.s];
  expand_to_columns(out, firsts, sh);
}

// The float64 totals of chunk_grad_sums, which can go on over several runs (one horizontal sum
// for them all: see train_backward_short_runs).
template <class T>
struct GradTotals {
  WideSum<T> dy = WideSum<T>::zero(), dyx = WideSum<T>::zero();
  double tail_dy = 0.0, tail_dyx = 0.0;  // the values past the last whole vector of each run

  double sum_dy() const { return dy.total() + tail_dy; }
  double sum_dyx() const { return dyx.total() + tail_dyx; }
};

// Runs layout: totals += the sums of dy and dy * xhat over one chunk of a run; with kDx also
// dx = k * dy. Scalar math: xhat = (x - mean) * invstd;  sums += (dy, dy * xhat)
// With kAhead it also prefetches dy and x `ahead` elements on into L2 (see runs_ahead).
template <class T, bool kDx, bool kAhead = false>
[[gnu::always_inline]] inline void add_grad_sums(GradTotals<T>& totals, T* dx, const T* dy,
                                                 const T* x, T mean, T invstd, T k, int64_t n,
                                                 int64_t ahead = 0) {
  using V = Vec<T>;
  const int64_t n_vec = n - n % V::width;
  const V mean_v = V::broadcast(mean), invstd_v = V::broadcast(invstd), k_v = V::broadcast(k);
  with_chains_inlined<T>(n_vec, [&](auto chains) {
    constexpr int kC = decltype(chains)::value;
    Chains<T, kC> s_dy = Chains<T, kC>::zero(), s_dyx = Chains<T, kC>::zero();
    blocked_loop<T, kC>(
        n_vec,
        [&](int64_t j, int u) {
          if constexpr (kAhead) {
            __builtin_prefetch(dy + j + ahead, 0, 2);
            __builtin_prefetch(x + j + ahead, 0, 2);
          }
          const V d = V::load(dy + j);
          const V xhat = (V::load(x + j) - mean_v) * invstd_v;
          if constexpr (kDx) (d * k_v).store(dx + j);
          s_dy.acc[u] = s_dy.acc[u] + d;
          s_dyx.acc[u] = fmadd(d, xhat, s_dyx.acc[u]);
        },
        [&] {
          s_dy.flush_into(totals.dy);
          s_dyx.flush_into(totals.dyx);
        });
  });
  for (int64_t j = n_vec; j < n; ++j) {
    const T xhat = (x[j] - mean) * invstd;
    if constexpr (kDx) dx[j] = dy[j] * k;
    totals.tail_dy += static_cast<double>(dy[j]);
    totals.tail_dyx += static_cast<double>(dy[j]) * static_cast<double>(xhat);
  }
}

// Runs layout: sums of dy and dy * xhat over one chunk of a run (out[0], out[1]); with kDx also
// dx = k * dy (see add_grad_sums).
template <class T, bool kDx, bool kAhead = false>
void chunk_grad_sums(double* out, T* dx, const T* dy, const T* x, T mean, T invstd, T k, int64_t n,
                     int64_t ahead = 0) {
  GradTotals<T> totals;
  add_grad_sums<T, kDx, kAhead>(totals, dx, dy, x, mean, invstd, k, n, ahead);
  out[0] = totals.sum_dy();
  out[1] = totals.sum_dyx();
}

// The sums of dy and dy * xhat over the len values of run k (at dy[k] and x[k], with mean[k]
// and invstd[k]) for k in [0, 4), into p[2k] and p[2k + 1]; with kDx also dx = k * dy
// (chunk_grad_sums, four runs at a time; see kGroupedRunBytes). keep = tail_keep<T>(len).
// kAhead, ahead: as in store_unit_sums4, for dy and x.
template <class T, bool kDx, bool kAhead = false>
[[gnu::always_inline]] inline void grad_sums4(double* p, T* const* dx, const T* const* dy,
                                              const T* const* x, const T* mean, const T* invstd,
                                              const T* k, int64_t len, Vec<T> keep,
                                              int64_t ahead = 0) {
  using V = Vec<T>;
  const PerRun<T> mean_v = broadcast_each(mean), invstd_v = broadcast_each(invstd);
  const PerRun<T> k_v = kDx ? broadcast_each(k) : PerRun<T>::zero();
  GroupPairSums<T> sums;  // dy, dy * xhat
  run_blocks<T>(
      len,
      [&](int64_t j, auto tail) {
        for (int r = 0; r < kGroupRuns; ++r) {
          if constexpr (kAhead) {
            __builtin_prefetch(dy[r] + j + ahead, 0, 2);
            __builtin_prefetch(x[r] + j + ahead, 0, 2);
          }
          V d = V::load(dy[r] + j);
          const V xhat = (V::load(x[r] + j) - mean_v.acc[r]) * invstd_v.acc[r];
          // (a tail's stores write the same values again)
          if constexpr (kDx) (d * k_v.acc[r]).store(dx[r] + j);
          if constexpr (decltype(tail)::value) d = d * keep;
          sums.first.acc[r] = sums.first.acc[r] + d;
          sums.second.acc[r] = fmadd(d, xhat, sums.second.acc[r]);
        }
      },
      [&] { sums.flush(); });
  sums.store(p);
}

// Channel ch's sums of dy and dy * xhat over its runs, grouped (see kGroupedRunBytes), four
// images at a time: image i's pair of sums goes to parts[2i, 2i + 2), then they are added in
// image order into sum_dy[ch] and sum_dy_xhat[ch]. With kAhead, each group prefetches the runs
// `ahead` images on (as channel_run_sums4).
template <class T, bool kAhead>
void channel_grad_sums4(double* sum_dy, double* sum_dy_xhat, double* parts, const T* dy, const T* x,
                        const Shape& sh, int64_t ch, T mean, T invstd, Vec<T> keep,
                        int64_t ahead = 0) {
  const int64_t n = sh.n, c = sh.c, s = sh.s;
  const T means[kGroupRuns] = {mean, mean, mean, mean};
  const T invstds[kGroupRuns] = {invstd, invstd, invstd, invstd};
  for_unit_groups(
      parts, 0, n, 0, 1,
      [&](double* out, const int64_t* image, const int64_t*) __attribute__((always_inline)) {
        const T *dys[kGroupRuns], *xs[kGroupRuns];
        for (int q = 0; q < kGroupRuns; ++q) {
          dys[q] = dy + (image[q] * c + ch) * s;
          xs[q] = x + (image[q] * c + ch) * s;
        }
        grad_sums4<T, false, kAhead>(out, nullptr, dys, xs, means, invstds, nullptr, s, keep,
                                     image[kGroupRuns - 1] + ahead < n ? ahead * c * s : 0);
      });
  double s_dy = 0.0, s_dyx = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    s_dy += parts[2 * i];
    s_dyx += parts[2 * i + 1];
  }
  sum_dy[ch] = s_dy;
  sum_dy_xhat[ch] = s_dyx;
}

// ---------------------------------------------------------------------------------------------
// Element-wise passes

// out[j] = f(j) over the runs [t0, t1) of the runs layout, which lie back to back in memory,
// taken as one span: vector_fn(j, k) -> Vec<T> for the vector at j, given the K per-channel
// constants as vectors k[0..K) holding each lane's own channel's (a vector that crosses into
// the next run takes both channels', lane by lane); scalar_fn(j, ch) -> T for single values of
// channel ch. Both must compute the same value. Only the span's ends are not whole vectors (with
// kStream the vectors are aligned once, at its start): run by run, short runs (14x14 planes:
// 196 values) spent as many instructions on their unaligned ends as on their vectors. The
// vectors within a run go through a loop of their own, which tests only the span's end (a
// test per vector for the run's end, and GCC's reloads around it, cost a quarter of the
// 8x512x7x7 float32 inference on one thread: 0.046 -> 0.034 ms, Zen 3, medians of 5).
// vector_fn is copied into the call, as elementwise does.
template <class T, bool kStream, int K, class VectorFn, class ScalarFn>
void runs_elementwise(T* out, const Shape& sh, int64_t t0, int64_t t1,
                      const T* const (&per_channel)[K], const VectorFn& vector_fn_in,
                      const ScalarFn& scalar_fn) {
  using V = Vec<T>;
  const VectorFn vector_fn = vector_fn_in;
  constexpr int64_t kBytes = V::width * int64_t{sizeof(T)};
  const int64_t s = sh.s, begin = t0 * s, end = t1 * s;
  const int64_t misalign =
      static_cast<int64_t>(reinterpret_cast<std::uintptr_t>(out + begin) % kBytes);
  // Streaming needs aligned vectors: possible unless out is not even aligned to T.
  const bool stream = kStream && misalign % int64_t{sizeof(T)} == 0;
  int64_t head = stream && misalign != 0 ? (kBytes - misalign) / int64_t{sizeof(T)} : 0;
  if (head > end - begin) head = end - begin;
  for (int64_t j = begin; j < begin + head; ++j) out[j] = scalar_fn(j, j / s % sh.c);
  // The current run: t0's (the head is shorter than a vector, and runs are at least one long).
  int64_t ch = t0 % sh.c, run_end = begin + s;
  V k[K];
  for (int i = 0; i < K; ++i) k[i] = V::broadcast(per_channel[i][ch]);
  int64_t j = begin + head;
  auto put = [&](int64_t at, V v) {
    if (stream)
      v.stream(out + at);
    else
      v.store(out + at);
  };
  if (s % V::width == 0 && head == 0) {
    // Runs of whole vectors (4x4, 8x8, 28x28, 56x56 float32 planes): a run at a time, its
    // constants broadcast once, no vector crossing into the next. 8x512x4x4 float32 inference,
    // 1 thread, fastest of 31 batches, 17-25 -> 11-12 us (Sapphire Rapids, AVX-512).
    for (int64_t t = t0; t < t1; ++t, ch = ch + 1 == sh.c ? 0 : ch + 1) {
      V run_k[K];
      for (int i = 0; i < K; ++i) run_k[i] = V::broadcast(per_channel[i][ch]);
      for (int64_t at = t * s; at < (t + 1) * s; at += V::width) put(at, vector_fn(at, run_k));
    }
    return;
  }
  while (j + V::width <= end) {
    // The vectors within the current run, then the one that crosses into the next: lanes
    // [0, run_end - j) of this run's channel, the rest of the next one's.
    const int64_t stop = run_end < end ? run_end : end;
    for (; j + V::width <= stop; j += V::width) put(j, vector_fn(j, k));
    if (j + V::width > end) break;
    ch = ch + 1 == sh.c ? 0 : ch + 1;
    V next[K], both[K];
    for (int i = 0; i < K; ++i) {
      next[i] = V::broadcast(per_channel[i][ch]);
      both[i] = blend_at(k[i], next[i], static_cast<int>(run_end - j));
      k[i] = next[i];
    }
    put(j, vector_fn(j, both));
    j += V::width;
    run_end += s;
  }
  for (; j < end; ++j) out[j] = scalar_fn(j, j / s % sh.c);
}

// y = (x - mean) * scale + shift over one run.
template <class T, bool kStream>
void apply_run(T* y, const T* x, T mean, T scale, T shift, int64_t n) {
  using V = Vec<T>;
  const V m_v = V::broadcast(mean), k_v = V::broadcast(scale), b_v = V::broadcast(shift);
  elementwise<T, kStream>(
      y, n, [&](int64_t j) { return fmadd(V::load(x + j) - m_v, k_v, b_v); },
      [&](int64_t j) { return fma_scalar(x[j] - mean, scale, shift); });
}

// y = (x - mean) * scale + shift over n values of a row of the column layout, the arrays given
// per column; kAhead: x prefetched kAheadValues on.
template <class T, bool kStream, bool kAhead = kStream>
void apply_columns(T* y, const T* x, const T* mean, const T* scale, const T* shift, int64_t n) {
  using V = Vec<T>;
  elementwise<T, kStream>(
      y, n,
      [=](int64_t j) {  // (pointers by value: see apply_impl)
        if constexpr (kAhead) __builtin_prefetch(x + j + kAheadValues<T>, 0, 2);
        return fmadd(V::load(x + j) - V::load(mean + j), V::load(scale + j), V::load(shift + j));
      },
      [=](int64_t j) { return fma_scalar(x[j] - mean[j], scale[j], shift[j]); });
}

// Scalar math: y = (x - mean) * scale + shift, per channel (runs) or per column (columns: the
// arrays are given per column).
template <class T, bool kStream>
void apply_impl(T* y, const T* x, const T* mean, const T* scale, const T* shift, const Shape& sh) {
  using V = Vec<T>;
  if (!sh.columns()) {
    parallel_for(sh.n * sh.c, sh.s, [&](int64_t t0, int64_t t1) {
      // The vector lambdas capture the arrays' pointers by value: a vector store may alias
      // anything (GCC's vector types are may_alias), and pointers read through this task's
      // captured references were loaded again for every vector (five per vector in the column
      // layout's dx). 1024x1024 float32 inference, 1 / 2 threads: 0.233 -> 0.209 / 0.145 ->
      // 0.113 ms; training forward 0.401 -> 0.368 / 0.263 -> 0.235 (Zen 3, AVX2).
      runs_elementwise<T, kStream, 3>(
          y, sh, t0, t1, {mean, scale, shift},
          [&, x = x](int64_t j, const V(&k)[3]) {
            if constexpr (kStream) __builtin_prefetch(x + j + kAheadValues<T>, 0, 2);
            return fmadd(V::load(x + j) - k[0], k[1], k[2]);
          },
          [&](int64_t j, int64_t ch) { return fma_scalar(x[j] - mean[ch], scale[ch], shift[ch]); });
      if constexpr (kStream) stream_fence();
    });
    return;
  }
  const int64_t cols = sh.cols();
  parallel_for(sh.pieces(), cols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      apply_columns<T, kStream>(y + r * cols, x + r * cols, mean, scale, shift, sh.piece_values(r));
    if constexpr (kStream) stream_fence();
  });
}

// Training: dx = k * (dy - a - xhat * b),  xhat = (x - mean) * invstd, over one run (nb = -b)
template <class T, bool kStream>
void train_dx_run(T* dx, const T* dy, const T* x, T mean, T invstd, T k, T a, T nb, int64_t n) {
  using V = Vec<T>;
  const V m_v = V::broadcast(mean), is_v = V::broadcast(invstd), k_v = V::broadcast(k);
  const V a_v = V::broadcast(a), nb_v = V::broadcast(nb);
  elementwise<T, kStream>(
      dx, n,
      [&](int64_t j) {
        const V xhat = (V::load(x + j) - m_v) * is_v;
        return fmadd(xhat, nb_v, V::load(dy + j) - a_v) * k_v;
      },
      [&](int64_t j) {
        const T xhat = (x[j] - mean) * invstd;
        return fma_scalar(xhat, nb, dy[j] - a) * k;
      });
}

// Training: dx = k * (dy - a - xhat * b), xhat = (x - mean) * invstd, over the runs [t0, t1) of
// the runs layout, the arrays given per channel (nb = -b); kAhead: x and dy prefetched
// kAheadValues on.
template <class T, bool kStream, bool kAhead = kStream>
void train_dx_runs(T* dx, const T* dy, const T* x, const T* mean, const T* invstd, const T* k,
                   const T* a, const T* nb, const Shape& sh, int64_t t0, int64_t t1) {
  using V = Vec<T>;
  runs_elementwise<T, kStream, 5>(
      dx, sh, t0, t1, {mean, invstd, k, a, nb},
      [&, x = x, dy = dy](int64_t j, const V(&kv)[5]) {  // (by value: see apply_impl)
        if constexpr (kAhead) {
          __builtin_prefetch(x + j + kAheadValues<T>, 0, 2);
          __builtin_prefetch(dy + j + kAheadValues<T>, 0, 2);
        }
        const V xhat = (V::load(x + j) - kv[0]) * kv[1];
        return fmadd(xhat, kv[4], V::load(dy + j) - kv[3]) * kv[2];
      },
      [&](int64_t j, int64_t ch) {
        const T xhat = (x[j] - mean[ch]) * invstd[ch];
        return fma_scalar(xhat, nb[ch], dy[j] - a[ch]) * k[ch];
      });
}

// Training: dx = k * (dy - a - xhat * b), xhat = (x - mean) * invstd, over n values of a row of
// the column layout, the arrays given per column; kAhead: x and dy prefetched kAheadValues on.
template <class T, bool kStream, bool kAhead = kStream>
void train_dx_columns(T* dx, const T* dy, const T* x, const T* mean, const T* invstd, const T* k,
                      const T* a, const T* b, int64_t n) {
  using V = Vec<T>;
  elementwise<T, kStream>(
      dx, n,
      [=](int64_t j) {  // (pointers by value: see apply_impl)
        if constexpr (kAhead) {
          __builtin_prefetch(x + j + kAheadValues<T>, 0, 2);
          __builtin_prefetch(dy + j + kAheadValues<T>, 0, 2);
        }
        const V xhat = (V::load(x + j) - V::load(mean + j)) * V::load(invstd + j);
        const V neg_b = V::broadcast(T(0)) - V::load(b + j);
        return fmadd(xhat, neg_b, V::load(dy + j) - V::load(a + j)) * V::load(k + j);
      },
      [=](int64_t j) {
        const T xhat = (x[j] - mean[j]) * invstd[j];
        return fma_scalar(xhat, -b[j], dy[j] - a[j]) * k[j];
      });
}

// Training: dx = k * (dy - a - xhat * b),  xhat = (x - mean) * invstd
// Eval: dx = k * dy.   Per channel (runs) or per column (columns).
// awake: right after a parallel loop of the same call (see team_size).
template <class T, bool kStream, bool kTraining>
void backward_apply_impl(T* dx, const T* dy, const T* x, const T* mean, const T* invstd, const T* k,
                         const T* a, const T* b, const Shape& sh, bool awake) {
  using V = Vec<T>;
  if (!sh.columns()) {
    TaskBuffer<T> neg_b(kTraining ? sh.c : 0);  // nb = -b, as train_dx_run takes it
    for (int64_t ch = 0; kTraining && ch < sh.c; ++ch) neg_b.data()[ch] = -b[ch];
    const T* nb = neg_b.data();
    parallel_for(sh.n * sh.c, sh.s, awake, [&](int64_t t0, int64_t t1) {
      if constexpr (kTraining) {
        train_dx_runs<T, kStream>(dx, dy, x, mean, invstd, k, a, nb, sh, t0, t1);
      } else {
        runs_elementwise<T, kStream, 1>(
            dx, sh, t0, t1, {k},
            [&, dy = dy](int64_t j, const V(&kv)[1]) {  // (by value: see apply_impl)
              if constexpr (kStream) __builtin_prefetch(dy + j + kAheadValues<T>, 0, 2);
              return V::load(dy + j) * kv[0];
            },
            [&](int64_t j, int64_t ch) { return dy[j] * k[ch]; });
      }
      if constexpr (kStream) stream_fence();
    });
    return;
  }
  const int64_t cols = sh.cols();
  parallel_for(sh.pieces(), cols, awake, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* dyr = dy + r * cols;
      if constexpr (kTraining) {
        train_dx_columns<T, kStream>(dx + r * cols, dyr, x + r * cols, mean, invstd, k, a, b,
                                     sh.piece_values(r));
      } else {
        elementwise<T, kStream>(
            dx + r * cols, sh.piece_values(r),
            [&, k = k](int64_t j) {
              if constexpr (kStream) __builtin_prefetch(dyr + j + kAheadValues<T>, 0, 2);
              return V::load(dyr + j) * V::load(k + j);
            },
            [&](int64_t j) { return dyr[j] * k[j]; });
      }
    }
    if constexpr (kStream) stream_fence();
  });
}

// Per-channel arrays (length c) expanded per column for the column layout; nullptr stays null.
template <class T>
struct ColumnArrays {
  TaskBuffer<T> buf;
  const T* cols[5];
  ColumnArrays(const Shape& sh, const T* const (&per_channel)[5])
      : buf(expanded(sh) ? 5 * sh.cols() : 0, Uninitialised{}) {
    for (int i = 0; i < 5; ++i) {
      if (!expanded(sh) || per_channel[i] == nullptr) {
        cols[i] = per_channel[i];
      } else {
        T* out = buf.data() + i * sh.cols();
        expand_to_columns(out, per_channel[i], sh);
        cols[i] = out;
      }
    }
  }
  static bool expanded(const Shape& sh) { return sh.columns() && (sh.s > 1 || sh.fold > 1); }
};

// Where channel 0's parts lie among those of the column layout (slots of `width` doubles:
// (blocks, cols), then one per column of x for the rest rows), in the order they are combined:
// block b, fold k, column t of the channel, then the rest rows' columns t. Channel ch's lie
// width * ch * s further on. (Computed once: divisions per part to find them cost more than
// the merges, a quarter of the 1024x1024 training forward on 2 threads.)
class ChannelParts {
 public:
  ChannelParts(const Shape& sh, int64_t width)
      : count_(sh.n_blocks() * sh.fold * sh.s + (sh.rest_rows() > 0 ? sh.s : 0)), offsets_(count_) {
    int64_t* o = offsets_.data();
    for (int64_t b = 0; b < sh.n_blocks(); ++b)
      for (int64_t k = 0; k < sh.fold; ++k)
        for (int64_t t = 0; t < sh.s; ++t) *o++ = width * (b * sh.cols() + k * sh.row_values() + t);
    for (int64_t t = 0; sh.rest_rows() > 0 && t < sh.s; ++t)
      *o++ = width * (sh.n_blocks() * sh.cols() + t);
  }
  int64_t count() const { return count_; }
  int64_t operator[](int64_t q) const { return offsets_.data()[q]; }

 private:
  int64_t count_;
  TaskBuffer<int64_t> offsets_;
};

// Whether the column statistics take register tiles down the rows: all but arrays from memory
// whose tiles' row segments do not cover whole cache lines (x off a line, as NumPy's large
// arrays start 16 bytes past one, or rows not a whole number of lines): a 128-byte segment then
// spans three lines instead of two, and those columns go along the rows instead (the same
// operations per column, the same bits). Channels-last 32x56x56x64 float32 from inputs 16 bytes
// past a line, training forward, 1 / 2 threads: 6.4-8.5 -> 4.6-5.9 / 3.0-3.8 -> 2.5-3.0 ms. In
// cache the tiles' registers win (1024x1024 at 16 bytes past a line along the rows: 0.23 ->
// 0.27-0.30 ms). Arrays from memory wider than a column group go along the rows too, a page of
// each row per task (kRowTaskGroups): a tile's walk takes a segment from a new page in every
// row. Training forward, float32, aligned, 2 threads, tiles -> along the rows: 4096x1024
// 3.2-3.7 -> 1.9-2.1 ms, 8192x512 1.4-2.9 -> 1.3-2.8 (Zen 3, AVX2); channels-last 32x56x56x64
// (one group) stays with tiles: 2.6-3.2 against 3.1-3.3 ms along the rows.
template <class T>
bool moment_tiles(const Shape& sh, const T* x) {
  return !stream_output<T>(sh) ||
         (sh.n_col_groups() == 1 && reinterpret_cast<std::uintptr_t>(x) % kCacheLineBytes == 0 &&
          sh.cols() * int64_t{sizeof(T)} % kCacheLineBytes == 0);
}

// The moments of a column-layout task, columns [j0, j1) over rows [r0, r1), column j's at
// out + 3 * (j - j0): whole register tiles (where `tiles`), then the whole vectors left along
// the rows (all of them without tiles; else those of tables narrower than a tile), then single
// columns.
template <class T>
void task_moments(double* out, const T* x, const T* ref, const Shape& sh, bool tiles, int64_t r0,
                  int64_t r1, int64_t j0, int64_t j1) {
  constexpr int64_t kTile = kChains * Vec<T>::width;
  const int64_t cols = sh.cols();
  int64_t j = j0;
  for (; tiles && j + kTile <= j1; j += kTile)
    tile_moments(out + 3 * (j - j0), x, ref, cols, j, r0, r1,
                 RowsAhead::of<T>(sh, j0, j1, j == j0, true));
  const int64_t j_vec = j + (j1 - j) / Vec<T>::width * Vec<T>::width;
  if (j_vec > j)
    rows_moments(out + 3 * (j - j0), x, ref, cols, j, j_vec, r0, r1,
                 RowsAhead::of<T>(sh, j0, j1, j == j0, true));
  for (j = j_vec; j < j1; ++j) column_moments(out + 3 * (j - j0), x, ref[j], cols, j, r0, r1);
}

}  // namespace

template <class T>
void batch_norm_stats(double* mean, double* var, const T* x, int64_t n, int64_t c, int64_t s) {
  const Shape sh = folded<T>(Shape{n, c, s});
  if (!sh.columns()) {
    const int64_t per_run = sh.chunks_per_run(), units = sh.n_units();
    Workspace ws(static_cast<std::size_t>(2 * units));
    double* parts = ws.data();                // (n, c, chunks_per_run, 2), memory order
    const bool ahead = stream_output<T>(sh);  // prefetch (see kAheadValues)
    TaskBuffer<T> ref_buf(c, Uninitialised{});
    T* ref = ref_buf.data();
    parallel_for(c, kValuesPerChannel, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) ref[ch] = channel_ref(x, sh, ch);
    });
    parallel_for(units, s < kChunk ? s : kChunk, [&](int64_t u0, int64_t u1) {
      if (grouped_runs<T>(sh)) {  // unit u = run u
        const Vec<T> keep = tail_keep<T>(s);
        for_unit_groups(parts + 2 * u0, u0, u1, u0 % c, c,
                        [&](double* out, const int64_t* unit, const int64_t* chs)
                            __attribute__((always_inline)) {
                              const T* xs[kGroupRuns];
                              T refs[kGroupRuns];
                              for (int q = 0; q < kGroupRuns; ++q) {
                                xs[q] = x + unit[q] * s;
                                refs[q] = ref[chs[q]];
                              }
                              if (ahead)
                                store_unit_sums4<T, true>(out, xs, refs, s, keep, kAheadValues<T>);
                              else
                                store_unit_sums4(out, xs, refs, s, keep);
                            });
        return;
      }
      // unit u = chunk k of run `run`, which belongs to channel ch (counted, not divided out:
      // a unit can be as short as 16 values)
      int64_t run = u0 / per_run, k = u0 % per_run, ch = run % c;
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t c0 = k * kChunk, len = s - c0 < kChunk ? s - c0 : kChunk;
        const T* xu = x + run * s + c0;
        if (ahead)
          store_unit_sums<T, true>(parts + 2 * u, xu, len, ref[ch], kAheadValues<T>);
        else
          store_unit_sums(parts + 2 * u, xu, len, ref[ch]);
        if (++k == per_run) {
          k = 0;
          ++run;
          if (++ch == c) ch = 0;
        }
      }
    });
    parallel_for(c, 2 * n * per_run, [&](int64_t c0, int64_t c1) {
      for_channel_unit_sums(parts, sh, c0, c1, [&](int64_t ch, const double* sums) {
        const Moments m = runs_moments_of_sums(x, sh, ch, ref[ch], {sums[0], sums[1]});
        mean[ch] = static_cast<double>(ref[ch]) + m.mean;
        var[ch] = biased_variance(m);
      });
    });
    return;
  }
  const int64_t cols = sh.cols(), blocks = sh.n_blocks(), values = sh.row_values();
  const int64_t rest = sh.rest_rows();
  // Each column's reference (see chunk_moments): its channel's first value, x[ch * s].
  const bool expanded = ColumnArrays<T>::expanded(sh);
  TaskBuffer<T> ref_buf(expanded ? cols + c : 0, Uninitialised{});
  const T* ref = x;
  if (expanded) {
    column_refs(ref_buf.data(), ref_buf.data() + cols, x, sh);
    ref = ref_buf.data();
  }
  Workspace ws(static_cast<std::size_t>(3 * cols * blocks + 3 * values));
  double* parts = ws.data();                       // (blocks, cols, 3)
  double* rest_parts = parts + 3 * cols * blocks;  // (values, 3): the rest rows, per column of x
  const bool tiles = moment_tiles(sh, x);
  // (register tiles walk down a group's columns: a task of one group each)
  const int64_t span = tiles ? 1 : row_task_span<T>(sh);
  parallel_for(sh.n_tasks(span), kBlockRows * kColGroup * span, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int64_t r0, r1, j0, j1;
      sh.task(t, span, r0, r1, j0, j1);
      task_moments(parts + 3 * (cols * (r0 / kBlockRows) + j0), x, ref, sh, tiles, r0, r1, j0, j1);
    }
  });
  const T* x_rest = x + sh.rows() * cols;
  for (int64_t j = 0; rest > 0 && j < values; ++j)
    column_moments(rest_parts + 3 * j, x_rest, ref[j], values, j, 0, rest);
  const ChannelParts part(sh, 3);
  parallel_for(c, 3 * part.count(), [&](int64_t c0, int64_t c1) {
    channel_moments(mean, var, x, s, c0, c1, parts + 3 * c0 * s, part.count(),
                    [&](int64_t q) { return part[q]; });
  });
}

template <class T>
void batch_norm_apply(T* y, const T* x, const T* mean, const T* scale, const T* shift, int64_t n,
                      int64_t c, int64_t s) {
  const Shape sh = folded<T>(Shape{n, c, s});
  const ColumnArrays<T> arr(sh, {mean, scale, shift, nullptr, nullptr});
  if (stream_output<T>(sh))
    apply_impl<T, true>(y, x, arr.cols[0], arr.cols[1], arr.cols[2], sh);
  else
    apply_impl<T, false>(y, x, arr.cols[0], arr.cols[1], arr.cols[2], sh);
}

// Returns the number of threads of its pass over the data.
template <class T, bool kDx>
int64_t grad_sums_impl(double* sum_dy, double* sum_dy_xhat, T* dx, const T* dy, const T* x,
                       const T* mean, const T* invstd, const T* k, int64_t n, int64_t c,
                       int64_t s) {
  const Shape sh = folded<T>(Shape{n, c, s});
  if (!sh.columns()) {
    const int64_t per_run = sh.chunks_per_run(), units = sh.n_units();
    Workspace ws(static_cast<std::size_t>(2 * units));
    double* parts = ws.data();                // (n, c, chunks_per_run, 2), memory order
    const bool ahead = stream_output<T>(sh);  // prefetch (see kAheadValues)
    const int64_t team =
        parallel_for(units, 2 * (s < kChunk ? s : kChunk), [&](int64_t u0, int64_t u1) {
          if (grouped_runs<T>(sh)) {  // unit u = run u
            const Vec<T> keep = tail_keep<T>(s);
            for_unit_groups(parts + 2 * u0, u0, u1, u0 % c, c,
                            [&](double* out, const int64_t* unit,
                                const int64_t* chs) __attribute__((always_inline)) {
                              T* dxs[kGroupRuns];
                              const T *dys[kGroupRuns], *xs[kGroupRuns];
                              T means[kGroupRuns], invstds[kGroupRuns], ks[kGroupRuns];
                              for (int q = 0; q < kGroupRuns; ++q) {
                                dxs[q] = kDx ? dx + unit[q] * s : nullptr;
                                dys[q] = dy + unit[q] * s;
                                xs[q] = x + unit[q] * s;
                                means[q] = mean[chs[q]];
                                invstds[q] = invstd[chs[q]];
                                ks[q] = kDx ? k[chs[q]] : T(0);
                              }
                              if (ahead)
                                grad_sums4<T, kDx, true>(out, dxs, dys, xs, means, invstds, ks, s,
                                                         keep, kAheadValues<T>);
                              else
                                grad_sums4<T, kDx>(out, dxs, dys, xs, means, invstds, ks, s, keep);
                            });
            return;
          }
          for (int64_t u = u0; u < u1; ++u) {
            const int64_t run = u / per_run, c0 = (u % per_run) * kChunk;
            const int64_t len = s - c0 < kChunk ? s - c0 : kChunk;
            const int64_t ch = run % c, off = run * s + c0;
            if (ahead)
              chunk_grad_sums<T, kDx, true>(parts + 2 * u, dx + off, dy + off, x + off, mean[ch],
                                            invstd[ch], kDx ? k[ch] : T(0), len, kAheadValues<T>);
            else
              chunk_grad_sums<T, kDx>(parts + 2 * u, dx + off, dy + off, x + off, mean[ch],
                                      invstd[ch], kDx ? k[ch] : T(0), len);
          }
        });
    parallel_for(c, 2 * n * per_run, [&](int64_t c0, int64_t c1) {
      for_channel_unit_sums(parts, sh, c0, c1, [&](int64_t ch, const double* sums) {
        sum_dy[ch] = sums[0];
        sum_dy_xhat[ch] = sums[1];
      });
    });
    return team;
  }
  const ColumnArrays<T> arr(sh, {mean, invstd, k, nullptr, nullptr});
  const T* mean_col = arr.cols[0];
  const T* invstd_col = arr.cols[1];
  const T* k_col = arr.cols[2];
  const int64_t cols = sh.cols(), blocks = sh.n_blocks(), values = sh.row_values();
  const int64_t rest = sh.rest_rows();
  Workspace ws(static_cast<std::size_t>(2 * cols * blocks + 2 * values));
  double* parts = ws.data();                       // (blocks, cols, 2)
  double* rest_parts = parts + 2 * cols * blocks;  // (values, 2): the rest rows, per column of x
  const int64_t span = row_task_span<T>(sh);
  // streamed rows back to back go a row at a time (see rows_grad_sums)
  const int64_t sub_rows = stream_output<T>(sh) && span * kColGroup >= cols ? 1 : kSubRows;
  const int64_t team = parallel_for(
      sh.n_tasks(span), 2 * kBlockRows * kColGroup * span, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          int64_t r0, r1, j0, j1;
          sh.task(t, span, r0, r1, j0, j1);
          double* out = parts + 2 * cols * (r0 / kBlockRows);
          const int64_t j_vec = j0 + (j1 - j0) / Vec<T>::width * Vec<T>::width;
          if (j_vec > j0)
            rows_grad_sums<T, kDx>(out + 2 * j0, dx, dy, x, mean_col, invstd_col, k_col, cols, j0,
                                   j_vec, r0, r1, RowsAhead::of<T>(sh, j0, j1), sub_rows);
          for (int64_t j = j_vec; j < j1; ++j)
            column_grad_sums<T, kDx>(out + 2 * j, dx, dy, x, mean_col, invstd_col, k_col, cols, j,
                                     r0, r1);
        }
      });
  const int64_t off = sh.rows() * cols;  // of the rest rows
  for (int64_t j = 0; rest > 0 && j < values; ++j)
    column_grad_sums<T, kDx>(rest_parts + 2 * j, kDx ? dx + off : nullptr, dy + off, x + off,
                             mean_col, invstd_col, k_col, values, j, 0, rest);
  const ChannelParts part(sh, 2);
  parallel_for(c, 2 * part.count(), [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      const double* channel = parts + 2 * ch * s;
      double s_dy = 0.0, s_dyx = 0.0;
      for (int64_t q = 0; q < part.count(); ++q) {
        s_dy += channel[part[q]];
        s_dyx += channel[part[q] + 1];
      }
      sum_dy[ch] = s_dy;
      sum_dy_xhat[ch] = s_dyx;
    }
  });
  return team;
}

template <class T>
void batch_norm_grad_sums(double* sum_dy, double* sum_dy_xhat, T* dx, const T* dy, const T* x,
                          const T* mean, const T* invstd, const T* k, int64_t n, int64_t c,
                          int64_t s) {
  if (dx)
    grad_sums_impl<T, true>(sum_dy, sum_dy_xhat, dx, dy, x, mean, invstd, k, n, c, s);
  else
    grad_sums_impl<T, false>(sum_dy, sum_dy_xhat, dx, dy, x, mean, invstd, k, n, c, s);
}

// (shape by value: taking a const Shape& to the temporary of batch_norm_backward_apply, GCC
// 12.2 at -O2 turned that call into a jump with the address of a temporary it never built.)
template <class T>
void backward_apply(T* dx, const T* dy, const T* x, const T* mean, const T* invstd, const T* k,
                    const T* a, const T* b, Shape shape, bool awake) {
  const Shape sh = folded<T>(shape);
  const bool stream = stream_output<T>(sh);
  const ColumnArrays<T> arr(sh, {mean, invstd, k, a, b});
  const T* const* p = arr.cols;
  if (x) {
    if (stream)
      backward_apply_impl<T, true, true>(dx, dy, x, p[0], p[1], p[2], p[3], p[4], sh, awake);
    else
      backward_apply_impl<T, false, true>(dx, dy, x, p[0], p[1], p[2], p[3], p[4], sh, awake);
  } else {
    if (stream)
      backward_apply_impl<T, true, false>(dx, dy, x, p[0], p[1], p[2], p[3], p[4], sh, awake);
    else
      backward_apply_impl<T, false, false>(dx, dy, x, p[0], p[1], p[2], p[3], p[4], sh, awake);
  }
}

template <class T>
void batch_norm_backward_apply(T* dx, const T* dy, const T* x, const T* mean, const T* invstd,
                               const T* k, const T* a, const T* b, int64_t n, int64_t c,
                               int64_t s) {
  backward_apply(dx, dy, x, mean, invstd, k, a, b, Shape{n, c, s}, false);
}

// How far ahead the by-channel statistics and sums passes prefetch, in runs of the channel (a
// whole image apart): runs shorter than 4 KiB, where the hardware prefetchers have to start over
// too often, prefetch the run at least 4 KiB on; longer runs, none (0).
// 256x256x14x14 float32 on 2 threads, interleaved medians of 7-9: training forward 5.30 ->
// 4.55 and 4.38 -> 4.16 ms; backward 5-6 % faster in each of four A/Bs (5.71 -> 5.38 ms);
// 2 or 8 KiB measured no better, and runs of 12.5 KB (56x56 float32) no faster.
template <class T>
int64_t runs_ahead(int64_t s) {
  constexpr int64_t kAheadBytes = 4096;
  const int64_t run_bytes = s * int64_t{sizeof(T)};
  return run_bytes < kAheadBytes ? (kAheadBytes + run_bytes - 1) / run_bytes : 0;
}

// The training backward one channel at a time on each thread (when by_channel says so, below):
// the sums pass reads a channel's x and dy from memory, the dx pass reads them again from L2
// (5 array-sized streams from memory become 3) and prefetches the thread's next channel into
// L2 run by run as it goes, since the runs of a channel are a whole image apart and the
// hardware prefetchers follow short runs poorly. The sums are added in the order
// grad_sums_impl adds its units': the same bits as the whole-array passes.
template <class T>
void train_backward_by_channel(T* dx, double* sum_dy, double* sum_dy_xhat, const T* dy, const T* x,
                               const T* mean, const T* invstd, const T* k, const Shape& sh) {
  const int64_t n = sh.n, c = sh.c, s = sh.s;
  const double count = static_cast<double>(n * s);
  const int64_t ahead = runs_ahead<T>(s);
  parallel_for(c, 3 * n * s, [&](int64_t c0, int64_t c1) {
    const bool grouped = grouped_runs<T>(sh);
    Workspace ws(static_cast<std::size_t>(grouped ? 2 * n : 0));
    double* parts = ws.data();  // grouped runs: (n, 2) of this channel
    const Vec<T> keep = tail_keep<T>(s);
    for (int64_t ch = c0; ch < c1; ++ch) {
      if (grouped) {  // (runs_ahead takes every grouped run)
        channel_grad_sums4<T, true>(sum_dy, sum_dy_xhat, parts, dy, x, sh, ch, mean[ch], invstd[ch],
                                    keep, ahead);
      } else {
        double s_dy = 0.0, s_dyx = 0.0;
        for_channel_units(sh, ch, [&](int64_t i, int64_t off, int64_t len) {
          double part[2];
          if (ahead > 0)  // (the last runs prefetch their own lines: offset 0)
            chunk_grad_sums<T, false, true>(part, nullptr, dy + off, x + off, mean[ch], invstd[ch],
                                            T(0), len, i + ahead < n ? ahead * c * s : 0);
          else
            chunk_grad_sums<T, false>(part, nullptr, dy + off, x + off, mean[ch], invstd[ch], T(0),
                                      len);
          s_dy += part[0];
          s_dyx += part[1];
        });
        sum_dy[ch] = s_dy;
        sum_dy_xhat[ch] = s_dyx;
      }
      const T a = static_cast<T>(sum_dy[ch] / count), nb = -static_cast<T>(sum_dy_xhat[ch] / count);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t off = (i * c + ch) * s;
        train_dx_run<T, true>(dx + off, dy + off, x + off, mean[ch], invstd[ch], k[ch], a, nb, s);
        if (ch + 1 < c1) {
          prefetch_l2(x + off + s, s * int64_t{sizeof(T)});
          prefetch_l2(dy + off + s, s * int64_t{sizeof(T)});
        }
      }
    }
    stream_fence();
  });
}

// Channel ch's batch mean and variance from its moments m (mean relative to ref), and its
// normalization constants (mean receives mean_hi, the mean the normalization subtracts).
template <class T>
ChannelAffine<T> channel_statistics(T* mean, T* invstd, double* batch_mean, double* batch_var,
                                    const T* gamma, const T* beta, double eps, int64_t ch, T ref,
                                    const Moments& m) {
  batch_mean[ch] = static_cast<double>(ref) + m.mean;
  batch_var[ch] = biased_variance(m);
  const ChannelAffine<T> a = channel_affine(batch_mean[ch], batch_var[ch], gamma, beta, ch, eps);
  mean[ch] = a.mean_hi;
  invstd[ch] = a.invstd;
  return a;
}

// The training forward one channel at a time on each thread, under the conditions and for the
// reasons of train_backward_by_channel: the statistics pass reads a channel from memory, the
// normalization reads it again from L2 while it prefetches the thread's next channel. The
// units' sums are added as batch_norm_stats adds them (runs_moments): the same bits.
template <class T>
void train_forward_by_channel(T* y, T* mean, T* invstd, double* batch_mean, double* batch_var,
                              const T* x, const T* gamma, const T* beta, double eps,
                              const Shape& sh) {
  const int64_t n = sh.n, c = sh.c, s = sh.s, per_run = sh.chunks_per_run();
  const int64_t ahead = runs_ahead<T>(s);
  parallel_for(c, 2 * n * s, [&](int64_t c0, int64_t c1) {
    Workspace ws(static_cast<std::size_t>(2 * n * per_run));
    double* parts = ws.data();  // (n, chunks_per_run, 2) of this channel
    const Vec<T> keep = tail_keep<T>(s);
    for (int64_t ch = c0; ch < c1; ++ch) {
      const T ref = channel_ref(x, sh, ch);
      if (grouped_runs<T>(sh)) {  // (runs_ahead takes every grouped run)
        channel_run_sums4(parts, x, sh, ch, ref, keep, ahead);
      } else {
        double* part = parts;
        for_channel_units(sh, ch, [&](int64_t i, int64_t off, int64_t len) {
          if (ahead > 0)  // (the last runs prefetch their own lines: offset 0)
            store_unit_sums<T, true>(part, x + off, len, ref, i + ahead < n ? ahead * c * s : 0);
          else
            store_unit_sums(part, x + off, len, ref);
          part += 2;
        });
      }
      const Moments m = runs_moments(x, sh, ch, ref, [&](int64_t q) { return parts + 2 * q; });
      const ChannelAffine<T> a =
          channel_statistics(mean, invstd, batch_mean, batch_var, gamma, beta, eps, ch, ref, m);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t off = (i * c + ch) * s;
        apply_run<T, true>(y + off, x + off, a.mean_hi, a.scale, a.shift, s);
        if (ch + 1 < c1) prefetch_l2(x + off + s, s * int64_t{sizeof(T)});
      }
    }
    stream_fence();
  });
}

// Short runs in cache: the training passes over runs of fewer than kShortRunValues values (7x7
// to 15x15 planes) whose two arrays of the pass (x and y forward, x and dy backward) fit in
// one L2 go a channel at a time, in one parallel loop. A channel's runs add their sums into
// the same float64 vectors (one horizontal sum per channel, not per run), then its output is
// written while its runs are in L1. The whole-array passes took a horizontal sum per run and
// four parallel loops (units, channels, constants, output). The rule depends on
// the shape and the cache only: any thread count gives the same bits. Sapphire Rapids,
// AVX-512, float32, 2 threads, through Python (medians of 300 calls, three rounds),
// whole-array -> by channel: forward 8x512x7x7 125-179 -> 76-84 us, 8x128x15x15 88-115 ->
// 46-55, 64x32x8x8 65 -> 51, 20x256x7x7 189-207 -> 91-170; backward 8x512x7x7 122-146 ->
// 66-101, 8x128x15x15 75-77 -> 58-62, 64x32x8x8 72-76 -> 55-60 (natively, 1 thread, 0.235 ->
// 0.155 ms). Past the rule it loses: forward 40x256x7x7 (x 2.0 MB) 225-290 -> 200-404 us,
// backward 32x256x7x7 262-287 -> 350-377.
constexpr int64_t kShortRunValues = 256;

template <class T>
bool short_runs_in_cache(const Shape& sh) {
  return !sh.columns() && sh.s < kShortRunValues &&
         2 * sh.n * sh.c * sh.s * int64_t{sizeof(T)} <= l2_cache_bytes();
}

// The training forward for short runs in cache (see short_runs_in_cache), a channel at a time:
// its moments around ref = channel_ref (as batch_norm_stats takes them, with the same rare
// second pass), its constants, then y = (x - mean) * scale + shift over its runs.
template <class T>
void train_forward_short_runs(T* y, T* mean, T* invstd, double* batch_mean, double* batch_var,
                              const T* x, const T* gamma, const T* beta, double eps,
                              const Shape& sh) {
  const int64_t n = sh.n, c = sh.c, s = sh.s;
  parallel_for(c, 3 * n * s, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      const T ref = channel_ref(x, sh, ch);
      ShiftedTotals<T> totals;
      for (int64_t i = 0; i < n; ++i) add_shifted_sums(totals, x + (i * c + ch) * s, s, ref);
      const Moments m = runs_moments_of_sums(x, sh, ch, ref, totals.sums());
      const ChannelAffine<T> a =
          channel_statistics(mean, invstd, batch_mean, batch_var, gamma, beta, eps, ch, ref, m);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t off = (i * c + ch) * s;
        apply_run<T, false>(y + off, x + off, a.mean_hi, a.scale, a.shift, s);
      }
    }
  });
}

// Whether the training passes go a channel at a time per thread (train_forward_by_channel,
// train_backward_by_channel): the `inputs` arrays read twice are larger than the last-level
// cache (a second pass over smaller ones finds much of them there anyway) and two channels of
// them (the current one and the prefetched next) fit in the cache the second pass is to find
// them in. Which cache that is, which runs pay and from how many threads differ between the
// machines measured, so the thresholds follow the build (an AVX-512 CPU is the newer kind):
//  - AVX-512 build, on Zen 4 (1 MiB L2, DDR5): two threads or more, two channels within L2,
//    runs of any length. 2 threads, interleaved medians: 256x256x14x14 backward float32 6.9 ->
//    5.9 ms, forward float64 8.1 -> 6.3 ms (float32 no change). On one thread it measured
//    5-15 % slower (one core keeps too few misses in flight for runs a whole image apart).
//    With channels of up to all of L2, 32x64x56x56 backward (800 KiB channels) went 20 %
//    slower; nor did it gain from the next channel's sums pass fused into this channel's dx
//    pass (3 streams from memory instead of 5): 2.45-2.66 ms against 2.09-2.57. One core reads
//    a channel's runs (12.5 KB, 800 KB apart) at about 15 GB/s and the arrays in memory order
//    at about 24. Nor did two threads sharing each such channel (each summing half its runs,
//    waiting for the other's sums, then its dx from L2): 2.97 -> 2.78 ms at best, 5-13 % of
//    the time spent waiting.
//  - Other builds, on Zen 3 (512 KiB L2, DDR4): any number of threads, runs of at least 1 KiB,
//    two channels per thread within the last-level cache (Zen's L3 takes what L2 evicts, so
//    the second pass finds the channel there). Interleaved medians of 3, whole-array -> by
//    channel, 2 threads: 32x64x56x56 forward / backward float32 3.6 / 5.4 -> 3.0 / 4.1 ms,
//    float64 7.4 / 11.9 -> 5.3 / 8.5; 256x256x14x14 float64 15.7 / 24.2 -> 11.0 / 19.6;
//    64x256x28x28 float32 8.1 / 12.1 -> 5.5 / 8.3. 1 thread: 32x64x56x56 float32 6.0 / 9.0
//    -> 5.5 / 7.1, float64 10.7 / 17.8 -> 8.7 / 14.1; 256x256x14x14 float64 forward 23.4 ->
//    16.6. But runs of 784 bytes (14x14 float32) went 40 % slower by channel on 2 threads,
//    whether two channels fit in L2 or not (256x256x14x14 forward 8.6 -> 12.2 ms;
//    64x1024x14x14 and 128x512x14x14 alike); so did groups of 2-11 adjacent channels at a
//    time (1-8 KiB of runs in order per image): 17-74 % slower on 1 and 2 threads. Measured
//    again once the whole-array passes prefetched (kAheadValues): by channel still wins where
//    this rule takes it (32x64x56x56 float32 backward 4.0 against 4.4 ms, float64 forward 5.5
//    against 6.6), and 784-byte runs by channel, with runs_ahead at 4 to 32 KiB, still took
//    about twice as long (256x256x14x14 forward 11.8-12.3 against 6.2 ms, backward 15.2-17.0
//    against 10.5).
template <class T>
bool by_channel(const Shape& sh, int64_t inputs) {
  const int64_t threads = get_num_threads();
#if defined(__AVX512F__)
  constexpr int64_t kMinThreads = 2, kMinRunBytes = 0;
  const int64_t cache_bytes = l2_cache_bytes();
#else
  constexpr int64_t kMinThreads = 1, kMinRunBytes = 1024;
  const int64_t cache_bytes = last_level_cache_bytes() / threads;
#endif
  const int64_t channel_bytes = inputs * sh.n * sh.s * int64_t{sizeof(T)};
  // (Streamed outputs too: where the last-level cache's size is unknown, reported as 0, the
  // size from which outputs are streamed keeps small arrays on the whole-array passes.)
  return !sh.columns() && stream_output<T>(sh) && channel_bytes * sh.c > last_level_cache_bytes() &&
         sh.s * int64_t{sizeof(T)} >= kMinRunBytes && 2 * channel_bytes <= cache_bytes &&
         threads >= kMinThreads && sh.c >= 2 * threads;
}

// The training backward for short runs in cache (see short_runs_in_cache), a channel at a
// time: its runs add their sums of dy and dy * xhat into the same float64 vectors (runs shorter
// than kGroupedRunBytes: four at a time, channel_grad_sums4; 16x64x7x7 float32, 1 thread,
// interleaved medians of 11: 33 -> 24 us), then its dx is written while x and dy are in L1.
template <class T>
void train_backward_short_runs(T* dx, double* sum_dy, double* sum_dy_xhat, const T* dy, const T* x,
                               const T* mean, const T* invstd, const T* k, const Shape& sh) {
  const int64_t n = sh.n, c = sh.c, s = sh.s;
  const double count = static_cast<double>(n * s);
  parallel_for(c, 5 * n * s, [&](int64_t c0, int64_t c1) {
    const bool grouped = grouped_runs<T>(sh);
    Workspace ws(static_cast<std::size_t>(grouped ? 2 * n : 0));
    double* parts = ws.data();  // grouped runs: (n, 2) of this channel
    const Vec<T> keep = tail_keep<T>(s);
    for (int64_t ch = c0; ch < c1; ++ch) {
      if (grouped) {
        channel_grad_sums4<T, false>(sum_dy, sum_dy_xhat, parts, dy, x, sh, ch, mean[ch],
                                     invstd[ch], keep);
      } else {
        GradTotals<T> totals;
        for (int64_t i = 0; i < n; ++i) {
          const int64_t off = (i * c + ch) * s;
          add_grad_sums<T, false>(totals, nullptr, dy + off, x + off, mean[ch], invstd[ch], T(0),
                                  s);
        }
        sum_dy[ch] = totals.sum_dy();
        sum_dy_xhat[ch] = totals.sum_dyx();
      }
      const T a = static_cast<T>(sum_dy[ch] / count), nb = -static_cast<T>(sum_dy_xhat[ch] / count);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t off = (i * c + ch) * s;
        train_dx_run<T, false>(dx + off, dy + off, x + off, mean[ch], invstd[ch], k[ch], a, nb, s);
      }
    }
  });
}

// Channel blocks: the training backward over arrays larger than the last-level cache whose runs
// are too short for by_channel (512 B to 1 KiB on the builds below: 14x14 float32 planes) takes
// a block of adjacent channels at a time, with kBlockRunBytes of runs or more per image, all
// threads on each block, the images split between them: the sums pass reads the block's x and
// dy from memory and prefetches each run of the thread's next image; a barrier; the dx pass
// reads them again from the last-level cache (2 x 1.2 MB for 256x256x14x14): 5 array-sized
// streams from memory become 3. A channel's units are added in image order, as the whole-array
// passes add them: the same bits. Zen 3, AVX2, float32, interleaved medians of 3-5, 2 threads:
// 256x256x14x14 9.6-10.7 -> 8.2-8.8 ms, 128x512x14x14 11.7-12.3 -> 8.6-10.6; 1 thread
// 256x256x14x14 15.6-18.1 -> 14.6-17.0. Blocks of 2 channels (1.5 KB of runs per image) measured
// 12-14 % slower than 4, and 32 channels a little slower than 8; 49-value runs (196 B) gained in
// some rounds and lost in others (256x1024x7x7 13.5-15.3 ms whole-array, 11.7-19.9 by blocks of
// 16-42 channels), so they stay on the whole-array passes, as does the training forward (one
// array read twice): 256x256x14x14 6.0-6.6 ms whole-array, 6.4-6.7 by blocks of 4 KiB of runs,
// 6.7-8.6 by blocks of 2, 8 or 16 KiB. Both passes one image at a time, the next block's sums
// fused into this block's dx pass, measured 5-25 % slower.
// The AVX-512 build, measured on a 2-core VM of a Xeon (Sapphire Rapids: 2 MiB L2, DDR5), takes
// channel blocks before by_channel, for runs of 512 B up to kChunk values, as soon as x and dy
// are larger than the threads' L2 caches together: there they beat by_channel and the
// whole-array passes on every shape tried, 1 and 2 threads (float32, medians of 9-41, 2
// threads, whole-array / by_channel / blocks: 256x256x14x14 7.9-8.9 / 10.7-10.9 / 7.1-8.4 ms;
// 32x64x56x56 4.1-4.3 / 4.4-4.8 / 3.2-3.3; 64x256x28x28 9.0-9.4 / 7.6-7.8 / 6.4-6.5;
// 32x64x28x28 0.8-1.2 / 0.7-1.0 / 0.65-0.68; 1 thread, whole-array / blocks: 32x64x56x56
// 9.3-9.4 / 6.5-7.0, 32x64x28x28 1.7-1.9 / 1.2-1.25, 16x128x14x14 0.38-0.39 / 0.27-0.30). With
// x and dy within the L2s (8x32x14x14 on 2 threads) the barriers cost more than they save.
// The rules for by_channel came from Zen 4 (AVX-512) and Zen 3 before channel blocks existed;
// on the other builds the blocks keep to what by_channel does not take.
constexpr int64_t kBlockRunBytes = 4096;
constexpr int64_t kMinBlockRunBytes = 512;
static_assert(kMinBlockRunBytes >= kGroupedRunBytes, "channel blocks take no grouped runs");
constexpr int64_t kMinImagesPerThread = 4;

// Channels per block (see kBlockRunBytes).
template <class T>
int64_t block_channels(const Shape& sh) {
  const int64_t run_bytes = sh.s * int64_t{sizeof(T)};
  const int64_t g = (kBlockRunBytes + run_bytes - 1) / run_bytes;
  return g < sh.c ? g : sh.c;
}

// Whether the training backward goes by channel blocks (see kBlockRunBytes): x and dy are
// larger than the threads' L2 caches together (AVX-512 build) or than the last-level cache
// (other builds, where by_channel does not take them), two blocks of them fit in the last-level
// cache, their runs are at least kMinBlockRunBytes long (a single unit each), and there are at
// least kMinImagesPerThread images per thread (the threads split a block's images; the
// whole-array passes split its runs, and so keep both threads busy on a batch of one).
template <class T>
bool by_channel_block(const Shape& sh) {
  const int64_t image_bytes = 2 * sh.s * int64_t{sizeof(T)};  // of a channel's x and dy
  const int64_t llc = last_level_cache_bytes();
  const int64_t threads = get_num_threads();
#if defined(__AVX512F__)
  const bool beyond = image_bytes * sh.n * sh.c > threads * l2_cache_bytes();
#else
  const bool beyond =
      stream_output<T>(sh) && image_bytes * sh.n * sh.c > llc && !by_channel<T>(sh, 2);
#endif
  return !sh.columns() && sh.s <= kChunk && sh.s * int64_t{sizeof(T)} >= kMinBlockRunBytes &&
         beyond && 2 * image_bytes * sh.n * block_channels<T>(sh) <= llc &&
         sh.n >= kMinImagesPerThread * threads;
}

// The training backward by channel blocks (see kBlockRunBytes); dx streamed with kStream.
template <class T, bool kStream>
void train_backward_by_channel_block(T* dx, double* sum_dy, double* sum_dy_xhat, const T* dy,
                                     const T* x, const T* mean, const T* invstd, const T* k,
                                     const Shape& sh) {
  const int64_t n = sh.n, c = sh.c, s = sh.s, g = block_channels<T>(sh);
  const double count = static_cast<double>(n * s);
  // Two blocks' (n, g, 2) sums: a thread may start the next block while another still reads
  // this one's.
  Workspace ws(static_cast<std::size_t>(2 * 2 * n * g));
  parallel_team(team_size(n, 3 * n * c * s), [&](int64_t t, int64_t team) {
    const int64_t i0 = n * t / team, i1 = n * (t + 1) / team;
    TaskBuffer<T> ab(2 * c, Uninitialised{});  // this thread's a and nb = -b, per channel
    T* a = ab.data();
    T* nb = a + c;
    for (int64_t c0 = 0; c0 < c; c0 += g) {
      const int64_t c1 = c0 + g < c ? c0 + g : c;
      double* parts = ws.data() + (c0 / g % 2) * 2 * n * g;  // (image, channel - c0, 2)
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t ch = c0; ch < c1; ++ch) {
          const int64_t off = (i * c + ch) * s;
          chunk_grad_sums<T, false, true>(parts + 2 * (i * g + ch - c0), nullptr, dy + off, x + off,
                                          mean[ch], invstd[ch], T(0), s, i + 1 < i1 ? c * s : 0);
        }
      team_barrier();
      for (int64_t ch = c0; ch < c1; ++ch) {
        double s_dy = 0.0, s_dyx = 0.0;
        for (int64_t i = 0; i < n; ++i) {
          s_dy += parts[2 * (i * g + ch - c0)];
          s_dyx += parts[2 * (i * g + ch - c0) + 1];
        }
        if (t == 0) {
          sum_dy[ch] = s_dy;
          sum_dy_xhat[ch] = s_dyx;
        }
        a[ch] = static_cast<T>(s_dy / count);
        nb[ch] = -static_cast<T>(s_dyx / count);
      }
      for (int64_t i = i0; i < i1; ++i)
        train_dx_runs<T, kStream, false>(dx, dy, x, mean, invstd, k, a, nb, sh, i * c + c0,
                                         i * c + c1);
    }
    if constexpr (kStream) stream_fence();
  });
}

// channel_affine of channels [begin, end) from their mean and variance (S: T for running
// statistics, double for batch statistics), a vector of channels at a time (the same bits).
// One channel at a time on one thread they took about 15 ns each (Zen 3): 12 % of the 1024x1024
// float32 inference, and most of a table of thousands of channels and a few rows. The square
// roots and divisions in vectors: 8x25088 float32 inference, medians of 15, 1 thread 352-377 ->
// 295-327 us (Zen 3's divider takes the 256-bit forms at little more than the scalar rate), 2
// threads 323-332 -> 223-227 us. The square roots of four vectors of channels go first, then
// their divisions, so that the divider has independent work back to back instead of each
// division waiting on its square root: 65536 float32 channels on 1 thread 490-500 -> 235-305
// us. The rest (scale, mean_hi, shift) in vectors too: (2, 65536) float32 inference, 2
// threads, 0.18-0.25 -> 0.13-0.14 ms; (8, 25088) 0.078-0.092 -> 0.064-0.076. A whole vector
// of variances is loaded as a vector: written to a buffer a lane at a time and read back as
// vectors, they waited on the stores (a vector load cannot take its data from eight stores in
// flight), a third of float32 inference on wide tables through Python, 1 / 2 threads, medians of
// 5 interleaved: (2, 65536) 332 -> 224 / 165 -> 117 us, (8, 25088) 196 -> 154 / 91 -> 72
// (Sapphire Rapids, AVX-512; float64 unchanged).
constexpr int64_t kAffineGroup = 4 * Vec<double>::width;  // channels taken at a time
template <class T, class S>
void channel_affines_of(T* mean_hi, T* scale, T* shift, T* invstd, const S* mean, const S* var,
                        const T* gamma, const T* beta, int64_t begin, int64_t end, double eps) {
  using D = Vec<double>;
  constexpr int64_t W = D::width;
  constexpr int64_t kGroup = kAffineGroup;
  for (int64_t c0 = begin; c0 < end; c0 += kGroup) {
    const int64_t m = end - c0 < kGroup ? end - c0 : kGroup;
    // Scalar math: rstd = 1 / sqrt(var + eps)
    D root[kGroup / W];
    if (m == kGroup) {
      for (int64_t v = 0; v < kGroup / W; ++v)
        root[v] = square_root(load_wide(var + c0 + v * W) + D::broadcast(eps));
    } else {
      double var_eps[kGroup];
      for (int64_t k = 0; k < kGroup; ++k)  // (lanes past the last channel: 1, not used)
        var_eps[k] = k < m ? static_cast<double>(var[c0 + k]) + eps : 1.0;
      for (int64_t v = 0; v < kGroup / W; ++v) root[v] = square_root(D::load(var_eps + v * W));
    }
    double rstd[kGroup];
    for (int64_t v = 0; v < kGroup / W; ++v) (D::broadcast(1.0) / root[v]).store(rstd + v * W);
    if (m == kGroup) {
      // channel_affine_of_rstd a vector of channels at a time. Scalar math: scale = rstd *
      // gamma;  mean_hi = mean rounded to T;  shift = beta - (mean - mean_hi) * scale
      for (int64_t v = 0; v < kGroup / W; ++v) {
        const int64_t ch = c0 + v * W;
        const D rstd_v = D::load(rstd + v * W), mean_v = load_wide(mean + ch);
        const D scale_v = gamma ? rstd_v * load_wide(gamma + ch) : rstd_v;
        store_narrow(mean_hi + ch, mean_v);
        const D beta_v = beta ? load_wide(beta + ch) : D::broadcast(0.0);
        store_narrow(shift + ch, beta_v - (mean_v - load_wide(mean_hi + ch)) * scale_v);
        store_narrow(scale + ch, scale_v);
        store_narrow(invstd + ch, rstd_v);
      }
      continue;
    }
    for (int64_t k = 0; k < m; ++k) {
      const int64_t ch = c0 + k;
      const ChannelAffine<T> a =
          channel_affine_of_rstd(static_cast<double>(mean[ch]), rstd[k], gamma, beta, ch);
      mean_hi[ch] = a.mean_hi;
      scale[ch] = a.scale;
      shift[ch] = a.shift;
      invstd[ch] = a.invstd;
    }
  }
}

// channel_affines_of channels [0, c), in blocks of channels shared among threads.
template <class T, class S>
void channel_affines(T* mean_hi, T* scale, T* shift, T* invstd, const S* mean, const S* var,
                     const T* gamma, const T* beta, int64_t c, double eps) {
  constexpr int64_t kBlock = 64 * Vec<double>::width;  // channels per task
  parallel_for((c + kBlock - 1) / kBlock, kBlock * kValuesPerChannel, [&](int64_t b0, int64_t b1) {
    const int64_t end = b1 * kBlock < c ? b1 * kBlock : c;
    channel_affines_of(mean_hi, scale, shift, invstd, mean, var, gamma, beta, b0 * kBlock, end,
                       eps);
  });
}

// Tables of a few rows of many channels (BatchNorm1d on (batch, features): s = 1, unfolded, at
// most kGroupRows rows) go through training and inference a group of kColGroup columns at a
// time per task (inference: see infer_group_columns), every pass over the group while it is in
// cache (its statistics or sums, its per-channel constants, its output): the whole-table
// passes sent per-channel arrays (moments, means, variances, scales, sums) of many times L2's
// size through L3 between them. The same operations per column in the same order: the same
// bits as the whole-table passes. Zen 3, AVX2, float32, 2 threads, whole-table -> by column
// group, forward / backward: (2, 65536) 1.40 / 0.39 -> 0.60 / 0.21 ms; (8, 25088) 0.30 / 0.23
// -> 0.20 / 0.14; (32, 4096) 0.125 / 0.060 -> 0.056 / 0.050; (16, 262144) 7.1 / 8.9 -> 5.5 /
// 6.0. With more rows, a group's rows a power of two apart share L2's sets and its second pass
// no longer finds them there: (48, 32768) forward 1.3-1.7 -> 1.6-2.2 ms, (256, 1024) 0.10 ->
// 0.15 (faster only on large tables of other widths).
// The training and inference forwards also go by groups of channels on such tables whose
// columns are planes of 1 < s < kMinRun values (unfolded), each group's per-channel constants
// expanded to its columns (ColumnExpander) in a buffer of the task: by_channel_group.
constexpr int64_t kGroupRows = 32;
bool by_channel_group(const Shape& sh) {
  return sh.columns() && sh.fold == 1 && sh.n >= 1 && sh.n <= kGroupRows;
}
bool by_column_group(const Shape& sh) { return by_channel_group(sh) && sh.s == 1; }

// Channels per group of by_channel_group for groups of about `columns` columns: with s > 1, a
// whole number of channel_affines_of's groups (a partial one goes a channel at a time), at most
// kAffineGroup * s columns more.
int64_t group_channels(int64_t columns, int64_t s) {
  return s == 1 ? columns : (columns / s + kAffineGroup) / kAffineGroup * kAffineGroup;
}

// y = (x - mean) * scale + shift over columns [j0, j1) of every row of a column group (the
// arrays per column of the group, from j0); streamed stores where `stream`, x prefetched along
// its rows where kAhead too (see apply_columns).
template <class T, bool kAhead>
void apply_group(T* y, const T* x, const T* mean, const T* scale, const T* shift, int64_t rows,
                 int64_t cols, int64_t j0, int64_t j1, bool stream) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t off = r * cols + j0;
    if (stream)
      apply_columns<T, true, kAhead>(y + off, x + off, mean, scale, shift, j1 - j0);
    else
      apply_columns<T, false>(y + off, x + off, mean, scale, shift, j1 - j0);
  }
}

// Sums of d = x - ref[j] and d^2 down rows [0, rows) of columns [j0, j1) of a table `cols` wide,
// column j's at sum_d[j - j0] and sum_d2[j - j0]: a vector of columns at a time, in T over
// kRowsPerFlush rows at a time, then in float64.
template <class T>
void column_shifted_sums(double* sum_d, double* sum_d2, const T* x, const T* ref, int64_t cols,
                         int64_t rows, int64_t j0, int64_t j1) {
  using V = Vec<T>;
  int64_t j = j0;
  for (; j + V::width <= j1; j += V::width) {
    // Scalar math per column: d = x - ref;  sum_d += d;  sum_d2 += d * d
    const V ref_v = V::load(ref + j);
    WideSum<T> tot_d = WideSum<T>::zero(), tot_d2 = WideSum<T>::zero();
    for (int64_t r0 = 0; r0 < rows; r0 += kRowsPerFlush) {
      const int64_t r1 = r0 + kRowsPerFlush < rows ? r0 + kRowsPerFlush : rows;
      V acc_d = V::broadcast(T(0)), acc_d2 = V::broadcast(T(0));
      for (int64_t r = r0; r < r1; ++r) {
        const V d = V::load(x + r * cols + j) - ref_v;
        acc_d = acc_d + d;
        acc_d2 = fmadd(d, d, acc_d2);
      }
      tot_d.add(Wide<T>::of(acc_d));
      tot_d2.add(Wide<T>::of(acc_d2));
    }
    tot_d.store(sum_d + (j - j0));
    tot_d2.store(sum_d2 + (j - j0));
  }
  for (; j < j1; ++j) {
    double s_d = 0.0, s_d2 = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      const double d = static_cast<double>(x[r * cols + j] - ref[j]);
      s_d += d;
      s_d2 += d * d;
    }
    sum_d[j - j0] = s_d;
    sum_d2[j - j0] = s_d2;
  }
}

// The batch mean and variance of channels [ch0, ch1) of a table whose columns are planes of
// 1 < s < kMinRun values (by_channel_group), as the runs layout takes them: the sums of
// d = x - ref and d^2 over each channel's values, ref being its first value (each column's sums
// down the rows, column_shifted_sums, then each channel's s columns added), with the runs
// layout's second pass for a channel whose ref lies too far from its mean (runs_moments_of_sums).
// `sums`: room for 2 doubles per column. Against each column's moments of a few values, merged
// per channel (as the whole-table passes take them), float32 training forward, fastest of 31
// batches, 3 interleaved rounds: (4, 4096, 6) 1 / 2 threads 142-145 -> 66-72 / 90-117 -> 52-75
// us; (8, 2048, 9) 1 thread 129-132 -> 81-91; (32, 2048, 4) 2 threads 69-71 -> 50-65
// (Sapphire Rapids, AVX-512).
template <class T>
void plane_moments(double* batch_mean, double* batch_var, double* sums, const T* x, const T* ref,
                   const Shape& sh, int64_t ch0, int64_t ch1) {
  const int64_t s = sh.s, m = (ch1 - ch0) * s;
  double* sum_d = sums;
  double* sum_d2 = sums + m;
  column_shifted_sums(sum_d, sum_d2, x, ref, sh.cols(), sh.rows(), ch0 * s, ch1 * s);
  for (int64_t ch = ch0; ch < ch1; ++ch) {
    const int64_t j = (ch - ch0) * s;
    double s_d = 0.0, s_d2 = 0.0;
    for (int64_t t = 0; t < s; ++t) {
      s_d += sum_d[j + t];
      s_d2 += sum_d2[j + t];
    }
    const Moments mo = runs_moments_of_sums(x, sh, ch, x[ch * s], {s_d, s_d2});
    batch_mean[ch] = static_cast<double>(x[ch * s]) + mo.mean;
    batch_var[ch] = biased_variance(mo);
  }
}

// The training forward by column group (see by_column_group, by_channel_group). Per group: its
// channels' batch mean and variance (s == 1: the columns' moments as batch_norm_stats takes
// them; s > 1: plane_moments), channel_affines_of them, y = (x - mean) * scale + shift. With
// s > 1, against the whole-table passes, float32, interleaved medians of 5, 1 / 2 threads:
// 4x4096x6 251 -> 252 / 202 -> 162 us, 8x2048x9 240 -> 205 / 166 -> 131, 32x2048x4 221 -> 216 /
// 139 -> 101 (Sapphire Rapids, AVX-512), before plane_moments halved the 1-thread times again.
template <class T>
void train_forward_by_column_group(T* y, T* mean, T* invstd, double* batch_mean, double* batch_var,
                                   const T* x, const T* gamma, const T* beta, double eps,
                                   const Shape& sh) {
  const int64_t rows = sh.rows(), cols = sh.cols(), c = sh.c, s = sh.s;
  // (with s > 1 the statistics take no tiles: plane_moments)
  const bool tiles = s == 1 && moment_tiles(sh, x), stream = stream_output<T>(sh);
  TaskBuffer<T> buf(2 * c + (s > 1 ? cols + c : 0), Uninitialised{});
  T* scale = buf.data();
  T* shift = scale + c;
  const T* ref = x;  // each column's reference (see chunk_moments): its channel's first value
  if (s > 1) {
    column_refs(shift + c, shift + c + cols, x, sh);
    ref = shift + c;
  }
  const ColumnExpander<T> expand(s);
  const int64_t group = group_channels(kColGroup, s);
  const int64_t work = (2 * rows * s + kValuesPerChannel) * group;
  parallel_for((c + group - 1) / group, work, [&](int64_t g0, int64_t g1) {
    constexpr int64_t kMaxColumns = kColGroup + kAffineGroup * kMinRun;
    double parts[3 * kMaxColumns];
    T expanded[3 * kMaxColumns];  // (s > 1) the group's mean, scale and shift per column
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t ch0 = g * group, ch1 = ch0 + group < c ? ch0 + group : c;
      if (s > 1) {
        plane_moments(batch_mean, batch_var, parts, x, ref, sh, ch0, ch1);
      } else {
        task_moments(parts, x, ref, sh, tiles, 0, rows, ch0, ch1);
        channel_moments(batch_mean, batch_var, x, 1, ch0, ch1, parts, 1,
                        [](int64_t) { return int64_t{0}; });
      }
      channel_affines_of(mean, scale, shift, invstd, batch_mean, batch_var, gamma, beta, ch0, ch1,
                         eps);
      const T* per_column[3];
      expand.group(per_column, {mean, scale, shift}, expanded, kMaxColumns, ch0, ch1, c);
      apply_group<T, false>(y, x, per_column[0], per_column[1], per_column[2], rows, cols, ch0 * s,
                            ch1 * s, stream);  // (x in cache)
    }
    if (stream) stream_fence();
  });
}

// The training backward by column group (see by_column_group). Per group: the columns' sums of
// dy and dy * xhat (as grad_sums_impl takes them), a = sum_dy / n and b = sum_dy_xhat / n,
// dx = k * (dy - a - xhat * b).
template <class T>
void train_backward_by_column_group(T* dx, double* sum_dy, double* sum_dy_xhat, const T* dy,
                                    const T* x, const T* mean, const T* invstd, const T* k,
                                    const Shape& sh) {
  const int64_t rows = sh.rows(), cols = sh.cols();
  const bool stream = stream_output<T>(sh);
  const double count = static_cast<double>(rows);
  const int64_t work = (3 * rows + kValuesPerChannel) * kColGroup;
  parallel_for(sh.n_col_groups(), work, [&](int64_t g0, int64_t g1) {
    double parts[2 * kColGroup];
    T a[kColGroup], b[kColGroup];
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t j0 = g * kColGroup, j1 = j0 + kColGroup < cols ? j0 + kColGroup : cols;
      const int64_t j_vec = j0 + (j1 - j0) / Vec<T>::width * Vec<T>::width;
      if (j_vec > j0)
        rows_grad_sums<T, false>(parts, nullptr, dy, x, mean, invstd, nullptr, cols, j0, j_vec, 0,
                                 rows, RowsAhead::of<T>(sh, j0, j1), kSubRows);
      for (int64_t j = j_vec; j < j1; ++j)
        column_grad_sums<T, false>(parts + 2 * (j - j0), nullptr, dy, x, mean, invstd, nullptr,
                                   cols, j, 0, rows);
      for (int64_t j = j0; j < j1; ++j) {
        const double s_dy = 0.0 + parts[2 * (j - j0)];  // (as a channel's one part is added)
        const double s_dyx = 0.0 + parts[2 * (j - j0) + 1];
        sum_dy[j] = s_dy;
        sum_dy_xhat[j] = s_dyx;
        a[j - j0] = static_cast<T>(s_dy / count);
        b[j - j0] = static_cast<T>(s_dyx / count);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t off = r * cols + j0;
        if (stream)
          train_dx_columns<T, true, false>(dx + off, dy + off, x + off, mean + j0, invstd + j0,
                                           k + j0, a, b, j1 - j0);
        else
          train_dx_columns<T, false>(dx + off, dy + off, x + off, mean + j0, invstd + j0, k + j0, a,
                                     b, j1 - j0);
      }
    }
    if (stream) stream_fence();
  });
}

// The columns of a group of the inference forward. It needs no statistics, so its groups need
// not be kColGroup columns wide, and on tables of many rows whose x and y do not fit one core's
// L2 they are a page of each row (4 KiB): with 1 KiB of each row, every row of a group was a
// page of its own for the TLB and the L2 prefetcher, which follows a page, each time for a
// quarter of it. Through Python, 1 / 2 threads, medians of 5 interleaved, kColGroup -> 4 KiB:
// float32 (32, 16384) 359 -> 313 / 253 -> 185 us, (16, 262144) 6.6 -> 5.3 / 4.3 -> 2.8 ms;
// float64 (32, 16384) 716 -> 649 / 376 -> 340 us. Tables in L2 gained nothing or lost up to
// 10 % (float32 (8, 25088) 1 thread 153 -> 165 us), and so did tables of a few rows, whose
// groups follow each other along the same few rows (float32 (4, 200000) 1 thread 770 -> 881).
// Sapphire Rapids, AVX-512.
constexpr int64_t kPageBytes = 4096;
template <class T>
int64_t infer_group_columns(const Shape& sh) {
  constexpr int64_t kPage = kPageBytes / int64_t{sizeof(T)};
  const int64_t table_bytes = sh.rows() * sh.cols() * int64_t{sizeof(T)};
  const bool wide = sh.rows() >= kGroupRows / 2 && 2 * table_bytes > l2_cache_bytes();
  return wide ? kPage : kColGroup;
}

// The inference forward by column group (see by_column_group), also for tables whose columns
// are planes of s < kMinRun values (unfolded): per group, channel_affines_of its channels, their
// constants expanded to its columns (s > 1), then y = (x - mean) * scale + shift. Against
// channel_affines then batch_norm_apply, float32, 2 threads: (2, 65536) 0.22-0.25 -> 0.18-0.21
// ms, (8, 25088) 0.100-0.107 -> 0.082-0.097 (Zen 3, AVX2). 4x4096x6 float32 (whole-table
// constants already expanded by vectors), 1 / 2 threads: 42-46 -> 30-36 / 75-82 -> 22-33 us
// (Sapphire Rapids, AVX-512; groups of channels not a multiple of kAffineGroup measured 52-55
// us on 1 thread: channel_affines_of takes a group's last channels one at a time).
template <class T>
void infer_forward_by_column_group(T* y, T* mean, T* invstd, const T* x, const T* running_mean,
                                   const T* running_var, const T* gamma, const T* beta, double eps,
                                   const Shape& sh) {
  const int64_t rows = sh.rows(), cols = sh.cols(), c = sh.c, s = sh.s;
  const bool stream = stream_output<T>(sh);
  TaskBuffer<T> buf(2 * c, Uninitialised{});
  T* scale = buf.data();
  T* shift = scale + c;
  const int64_t group = group_channels(infer_group_columns<T>(sh), s);
  const int64_t work = (rows * s + kValuesPerChannel) * group;
  const ColumnExpander<T> expand(s);
  parallel_for((c + group - 1) / group, work, [&](int64_t g0, int64_t g1) {
    constexpr int64_t kMaxColumns = kPageBytes / int64_t{sizeof(T)} + kAffineGroup * kMinRun;
    T expanded[3 * kMaxColumns];  // (s > 1) the group's mean, scale and shift per column
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t ch0 = g * group, ch1 = ch0 + group < c ? ch0 + group : c;
      channel_affines_of(mean, scale, shift, invstd, running_mean, running_var, gamma, beta, ch0,
                         ch1, eps);
      const T* per_column[3];
      expand.group(per_column, {mean, scale, shift}, expanded, kMaxColumns, ch0, ch1, c);
      apply_group<T, true>(y, x, per_column[0], per_column[1], per_column[2], rows, cols, ch0 * s,
                           ch1 * s, stream);
    }
    if (stream) stream_fence();
  });
}

template <class T>
void batch_norm_infer_forward(T* y, T* mean, T* invstd, const T* x, const T* running_mean,
                              const T* running_var, const T* gamma, const T* beta, double eps,
                              int64_t n, int64_t c, int64_t s) {
  const Shape sh = folded<T>(Shape{n, c, s});
  if (by_channel_group(sh)) {
    infer_forward_by_column_group(y, mean, invstd, x, running_mean, running_var, gamma, beta, eps,
                                  sh);
    return;
  }
  TaskBuffer<T> buf(2 * c, Uninitialised{});
  T* scale = buf.data();
  T* shift = scale + c;
  channel_affines(mean, scale, shift, invstd, running_mean, running_var, gamma, beta, c, eps);
  batch_norm_apply(y, x, mean, scale, shift, n, c, s);
}

template <class T>
void batch_norm_train_forward(T* y, T* mean, T* invstd, double* batch_mean, double* batch_var,
                              const T* x, const T* gamma, const T* beta, double eps, int64_t n,
                              int64_t c, int64_t s) {
  const Shape sh{n, c, s};
  if (short_runs_in_cache<T>(sh)) {
    train_forward_short_runs(y, mean, invstd, batch_mean, batch_var, x, gamma, beta, eps, sh);
    return;
  }
  if (by_channel<T>(sh, 1)) {
    train_forward_by_channel(y, mean, invstd, batch_mean, batch_var, x, gamma, beta, eps, sh);
    return;
  }
  if (const Shape table = folded<T>(sh); by_channel_group(table)) {
    train_forward_by_column_group(y, mean, invstd, batch_mean, batch_var, x, gamma, beta, eps,
                                  table);
    return;
  }
  batch_norm_stats(batch_mean, batch_var, x, n, c, s);
  TaskBuffer<T> buf(2 * c, Uninitialised{});
  T* scale = buf.data();
  T* shift = scale + c;
  // (mean receives mean_hi, the mean the normalization subtracts)
  channel_affines(mean, scale, shift, invstd, batch_mean, batch_var, gamma, beta, c, eps);
  batch_norm_apply(y, x, mean, scale, shift, n, c, s);
}

template <class T>
void batch_norm_train_backward(T* dx, double* sum_dy, double* sum_dy_xhat, const T* dy, const T* x,
                               const T* mean, const T* invstd, const T* k, int64_t n, int64_t c,
                               int64_t s) {
  const Shape sh{n, c, s};
  if (n == 0) {
    for (int64_t ch = 0; ch < c; ++ch) sum_dy[ch] = sum_dy_xhat[ch] = 0.0;
    return;
  }
  if (short_runs_in_cache<T>(sh)) {
    train_backward_short_runs(dx, sum_dy, sum_dy_xhat, dy, x, mean, invstd, k, sh);
    return;
  }
  if (by_channel_block<T>(sh)) {
    if (stream_output<T>(sh))
      train_backward_by_channel_block<T, true>(dx, sum_dy, sum_dy_xhat, dy, x, mean, invstd, k, sh);
    else
      train_backward_by_channel_block<T, false>(dx, sum_dy, sum_dy_xhat, dy, x, mean, invstd, k,
                                                sh);
    return;
  }
  if (by_channel<T>(sh, 2)) {
    train_backward_by_channel(dx, sum_dy, sum_dy_xhat, dy, x, mean, invstd, k, sh);
    return;
  }
  if (const Shape table = folded<T>(sh); by_column_group(table)) {
    train_backward_by_column_group(dx, sum_dy, sum_dy_xhat, dy, x, mean, invstd, k, table);
    return;
  }
  const int64_t team =
      grad_sums_impl<T, false>(sum_dy, sum_dy_xhat, nullptr, dy, x, mean, invstd, nullptr, n, c, s);
  const double count = static_cast<double>(n * s);
  TaskBuffer<T> ab(2 * c, Uninitialised{});
  T* a = ab.data();
  T* b = a + c;
  // Scalar math: a = sum_dy / count;  b = sum_dy_xhat / count   (a vector of channels at a time)
  using D = Vec<double>;
  constexpr int64_t W = D::width;
  const D count_v = D::broadcast(count);
  int64_t ch = 0;
  for (; ch + W <= c; ch += W) {
    alignas(64) double a_d[W], b_d[W];
    (D::load(sum_dy + ch) / count_v).store(a_d);
    (D::load(sum_dy_xhat + ch) / count_v).store(b_d);
    for (int64_t k = 0; k < W; ++k) {
      a[ch + k] = static_cast<T>(a_d[k]);
      b[ch + k] = static_cast<T>(b_d[k]);
    }
  }
  for (; ch < c; ++ch) {
    a[ch] = static_cast<T>(sum_dy[ch] / count);
    b[ch] = static_cast<T>(sum_dy_xhat[ch] / count);
  }
  // The threads of the sums pass are still awake: the dx pass may use them on less work.
  backward_apply(dx, dy, x, mean, invstd, k, a, b, sh, team > 1);
}

#define NORMKIT_INSTANTIATE(T)                                                                     \
  template void batch_norm_infer_forward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,    \
                                            const T*, double, int64_t, int64_t, int64_t);          \
  template void batch_norm_grad_sums<T>(double*, double*, T*, const T*, const T*, const T*,        \
                                        const T*, const T*, int64_t, int64_t, int64_t);            \
  template void batch_norm_backward_apply<T>(T*, const T*, const T*, const T*, const T*, const T*, \
                                             const T*, const T*, int64_t, int64_t, int64_t);       \
  template void batch_norm_train_forward<T>(T*, T*, T*, double*, double*, const T*, const T*,      \
                                            const T*, double, int64_t, int64_t, int64_t);          \
  template void batch_norm_train_backward<T>(T*, double*, double*, const T*, const T*, const T*,   \
                                             const T*, const T*, int64_t, int64_t, int64_t);
NORMKIT_INSTANTIATE(float)
NORMKIT_INSTANTIATE(double)
#undef NORMKIT_INSTANTIATE

}  // namespace NORMKIT_CPU_NS
}  // namespace normkit
