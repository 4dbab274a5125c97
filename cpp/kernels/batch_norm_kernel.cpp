// BatchNorm kernels over x viewed as (n, c, s): c channels, statistics over n * s values each.
// Compiled once per ISA (see CMakeLists.txt); the orchestration (which statistics, running
// averages, per-channel constants) is in cpp/batch_norm.cpp.
//
// Two layouts:
//  - s > 1 (NCHW-like): channel ch owns n contiguous runs of s values. Statistics tasks take
//    (channel, group of runs), so both cores work even when c is small; run moments merge in
//    order (Chan et al.).
//  - s == 1 (channels last, (rows, c) tables): tasks take blocks of rows and accumulate all
//    channels at once, vectorised across channels; block results merge in block order.
// Groups and blocks are sized from the shape alone: any thread count gives the same bits.

#include <cmath>
#include <cstdint>

#include "kernels/kernels.hpp"
#include "kernels/moments.hpp"
#include "kernels/scratch.hpp"
#include "kernels/vec.hpp"
#include "threading.hpp"

namespace normkit {
namespace NORMKIT_CPU_NS {
namespace {

constexpr int64_t kRunGroupElements = 16384;  // values per statistics task, s > 1
constexpr int64_t kRowBlockElements = 65536;  // values per statistics task, s == 1
constexpr int64_t kRowsPerFlush = 4;          // rows summed in T before float64, s == 1
constexpr int64_t kStreamBytes = int64_t{8} << 20;

struct Shape {
  int64_t n, c, s;
  int64_t runs_per_group() const {
    const int64_t g = kRunGroupElements / s;
    return g < 1 ? 1 : g;
  }
  int64_t n_groups() const { return (n + runs_per_group() - 1) / runs_per_group(); }
  int64_t rows_per_block() const {
    const int64_t r = kRowBlockElements / c;
    return r < 1 ? 1 : r;
  }
  int64_t n_blocks() const { return (n + rows_per_block() - 1) / rows_per_block(); }
};

template <class T>
bool stream_output(const Shape& sh) {
  return sh.n * sh.c * sh.s * int64_t{sizeof(T)} >= kStreamBytes;
}

void store_moments(double* p, const Moments& m) {
  p[0] = m.count;
  p[1] = m.mean;
  p[2] = m.m2;
}

Moments load_moments(const double* p) { return {p[0], p[1], p[2]}; }

double biased_variance(const Moments& m) {
  const double var = m.m2 / m.count;
  return var < 0.0 ? 0.0 : var;  // rounding can leave a tiny negative; NaN passes through
}


// For j in [0, n): out[j] = op(j) with vector_op over full vectors and scalar_op on the tail,
// used for the per-channel loops of the channels-last layout (no store; op does the work).
template <class T, class VectorOp, class ScalarOp>
inline void for_columns(int64_t n, const VectorOp& vector_op, const ScalarOp& scalar_op) {
  const int64_t n_vec = n - n % Vec<T>::width;
  for (int64_t j = 0; j < n_vec; j += Vec<T>::width) vector_op(j);
  for (int64_t j = n_vec; j < n; ++j) scalar_op(j);
}

// acc[j] -> part[j] (float64), acc[j] = 0, for the c channels.
template <class T>
void flush_columns(double* part, T* acc, int64_t c) {
  for_columns<T>(
      c,
      [&](int64_t j) {
        accumulate_wide(part + j, Vec<T>::load(acc + j));
        Vec<T>::broadcast(T(0)).store(acc + j);
      },
      [&](int64_t j) {
        part[j] += static_cast<double>(acc[j]);
        acc[j] = T(0);
      });
}

// ---------------------------------------------------------------------------------------------
// Statistics

// Moments of every channel over rows [r0, r1) of a (rows, c) table, from two passes over the
// block (sized to stay in L2), vectorised across channels.
// Scalar math per channel: shift = mean of the block; d = x - shift;
//                          mean = shift + sum(d) / n;  m2 = sum(d^2) - sum(d)^2 / n
template <class T>
void block_column_moments(double* moments, const T* x, int64_t r0, int64_t r1, int64_t c) {
  using V = Vec<T>;
  TaskBuffer<T> buf(4 * c);
  T* acc_x = buf.data();  // partial sums in T, flushed to float64 every kRowsPerFlush rows
  T* shift = acc_x + c;
  T* acc_d = shift + c;
  T* acc_d2 = acc_d + c;
  Workspace totals(static_cast<std::size_t>(2 * c));
  double* tot = totals.data();
  double* tot2 = tot + c;
  const double count = static_cast<double>(r1 - r0);
  auto flush_due = [&](int64_t r) { return (r - r0 + 1) % kRowsPerFlush == 0 || r + 1 == r1; };

  zero(tot, 2 * c);
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * c;
    for_columns<T>(
        c, [&](int64_t j) { (V::load(acc_x + j) + V::load(xr + j)).store(acc_x + j); },
        [&](int64_t j) { acc_x[j] += xr[j]; });
    if (flush_due(r)) flush_columns(tot, acc_x, c);
  }
  for (int64_t j = 0; j < c; ++j) {
    shift[j] = static_cast<T>(tot[j] / count);
    tot[j] = 0.0;
  }

  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * c;
    for_columns<T>(
        c,
        [&](int64_t j) {
          const V d = V::load(xr + j) - V::load(shift + j);
          (V::load(acc_d + j) + d).store(acc_d + j);
          fmadd(d, d, V::load(acc_d2 + j)).store(acc_d2 + j);
        },
        [&](int64_t j) {
          const T d = xr[j] - shift[j];
          acc_d[j] += d;
          acc_d2[j] = fma_scalar(d, d, acc_d2[j]);
        });
    if (flush_due(r)) {
      flush_columns(tot, acc_d, c);
      flush_columns(tot2, acc_d2, c);
    }
  }
  for (int64_t j = 0; j < c; ++j)
    store_moments(moments + 3 * j, Moments{count, static_cast<double>(shift[j]) + tot[j] / count,
                                           tot2[j] - tot[j] * tot[j] / count});
}

// Per-channel sums of g = dy and g * xhat over one run (s > 1), blocked into float64.
// Scalar math: xhat = (x - mean) * invstd;  sums += (dy, dy * xhat)
template <class T>
void run_grad_sums(double& sum_dy, double& sum_dy_xhat, const T* dy, const T* x, T mean,
                   T invstd, int64_t n) {
  using V = Vec<T>;
  const int64_t n_vec = n - n % V::width;
  const V mean_v = V::broadcast(mean), invstd_v = V::broadcast(invstd);
  Chains<T> s_dy = Chains<T>::zero(), s_dyx = Chains<T>::zero();
  WideSum<T> t_dy = WideSum<T>::zero(), t_dyx = WideSum<T>::zero();
  blocked_loop<T>(
      n_vec,
      [&](int64_t j, int u) {
        const V d = V::load(dy + j);
        const V xhat = (V::load(x + j) - mean_v) * invstd_v;
        s_dy.acc[u] = s_dy.acc[u] + d;
        s_dyx.acc[u] = fmadd(d, xhat, s_dyx.acc[u]);
      },
      [&] {
        s_dy.flush_into(t_dy);
        s_dyx.flush_into(t_dyx);
      });
  double tail_dy = 0.0, tail_dyx = 0.0;
  for (int64_t j = n_vec; j < n; ++j) {
    const T xhat = (x[j] - mean) * invstd;
    tail_dy += static_cast<double>(dy[j]);
    tail_dyx += static_cast<double>(dy[j]) * static_cast<double>(xhat);
  }
  sum_dy += t_dy.total() + tail_dy;
  sum_dy_xhat += t_dyx.total() + tail_dyx;
}

// Per-channel sums over rows [r0, r1) of a (rows, c) table into sums (c pairs).
template <class T>
void block_column_grad_sums(double* sums, const T* dy, const T* x, const T* mean,
                            const T* invstd, int64_t r0, int64_t r1, int64_t c) {
  using V = Vec<T>;
  TaskBuffer<T> acc_buf(2 * c);
  Workspace tot_buf(static_cast<std::size_t>(2 * c));
  T* acc_dy = acc_buf.data();  // partial sums in T, flushed to float64 every kRowsPerFlush rows
  T* acc_dyx = acc_dy + c;
  double* tot_dy = tot_buf.data();
  double* tot_dyx = tot_dy + c;
  zero(tot_dy, 2 * c);
  for (int64_t r = r0; r < r1; ++r) {
    const T* dyr = dy + r * c;
    const T* xr = x + r * c;
    for_columns<T>(
        c,
        [&](int64_t j) {
          const V d = V::load(dyr + j);
          const V xhat = (V::load(xr + j) - V::load(mean + j)) * V::load(invstd + j);
          (V::load(acc_dy + j) + d).store(acc_dy + j);
          fmadd(d, xhat, V::load(acc_dyx + j)).store(acc_dyx + j);
        },
        [&](int64_t j) {
          const T xhat = (xr[j] - mean[j]) * invstd[j];
          acc_dy[j] += dyr[j];
          acc_dyx[j] = fma_scalar(dyr[j], xhat, acc_dyx[j]);
        });
    if ((r - r0 + 1) % kRowsPerFlush == 0 || r + 1 == r1) {
      flush_columns(tot_dy, acc_dy, c);
      flush_columns(tot_dyx, acc_dyx, c);
    }
  }
  for (int64_t j = 0; j < c; ++j) {
    sums[2 * j] = tot_dy[j];
    sums[2 * j + 1] = tot_dyx[j];
  }
}

// ---------------------------------------------------------------------------------------------
// Element-wise passes

// Scalar math: y = ((x - mean_hi) - mean_lo) * scale + shift
template <class T, bool kStream>
void apply_impl(T* y, const T* x, const T* mean_hi, const T* mean_lo, const T* scale,
                const T* shift, const Shape& sh) {
  using V = Vec<T>;
  if (sh.s > 1) {
    parallel_for(sh.n * sh.c, sh.s, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t ch = t % sh.c;
        const T hi = mean_hi[ch], lo = mean_lo[ch], k = scale[ch], b = shift[ch];
        const V hi_v = V::broadcast(hi), lo_v = V::broadcast(lo);
        const V k_v = V::broadcast(k), b_v = V::broadcast(b);
        const T* xr = x + t * sh.s;
        elementwise<T, kStream>(
            y + t * sh.s, sh.s,
            [&](int64_t j) { return fmadd((V::load(xr + j) - hi_v) - lo_v, k_v, b_v); },
            [&](int64_t j) { return fma_scalar((xr[j] - hi) - lo, k, b); });
      }
      if constexpr (kStream) stream_fence();
    });
    return;
  }
  parallel_for(sh.n, sh.c, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * sh.c;
      elementwise<T, kStream>(
          y + r * sh.c, sh.c,
          [&](int64_t j) {
            return fmadd((V::load(xr + j) - V::load(mean_hi + j)) - V::load(mean_lo + j),
                         V::load(scale + j), V::load(shift + j));
          },
          [&](int64_t j) { return fma_scalar((xr[j] - mean_hi[j]) - mean_lo[j], scale[j], shift[j]); });
    }
    if constexpr (kStream) stream_fence();
  });
}

// Training: dx = k * (dy - a - xhat * b),  xhat = (x - mean) * invstd
// Eval (x == nullptr): dx = k * dy
template <class T, bool kStream, bool kTraining>
void backward_apply_impl(T* dx, const T* dy, const T* x, const T* mean, const T* invstd,
                         const T* k, const T* a, const T* b, const Shape& sh) {
  using V = Vec<T>;
  if (sh.s > 1) {
    parallel_for(sh.n * sh.c, sh.s, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t ch = t % sh.c;
        const T* dyr = dy + t * sh.s;
        const V k_v = V::broadcast(k[ch]);
        if constexpr (kTraining) {
          const T* xr = x + t * sh.s;
          const T m = mean[ch], is = invstd[ch], a_c = a[ch], nb = -b[ch];
          const V m_v = V::broadcast(m), is_v = V::broadcast(is);
          const V a_v = V::broadcast(a_c), nb_v = V::broadcast(nb);
          elementwise<T, kStream>(
              dx + t * sh.s, sh.s,
              [&](int64_t j) {
                const V xhat = (V::load(xr + j) - m_v) * is_v;
                return fmadd(xhat, nb_v, V::load(dyr + j) - a_v) * k_v;
              },
              [&](int64_t j) {
                const T xhat = (xr[j] - m) * is;
                return fma_scalar(xhat, nb, dyr[j] - a_c) * k[ch];
              });
        } else {
          elementwise<T, kStream>(
              dx + t * sh.s, sh.s, [&](int64_t j) { return V::load(dyr + j) * k_v; },
              [&](int64_t j) { return dyr[j] * k[ch]; });
        }
      }
      if constexpr (kStream) stream_fence();
    });
    return;
  }
  parallel_for(sh.n, sh.c, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* dyr = dy + r * sh.c;
      if constexpr (kTraining) {
        const T* xr = x + r * sh.c;
        elementwise<T, kStream>(
            dx + r * sh.c, sh.c,
            [&](int64_t j) {
              const V xhat = (V::load(xr + j) - V::load(mean + j)) * V::load(invstd + j);
              const V nb = V::broadcast(T(0)) - V::load(b + j);
              return fmadd(xhat, nb, V::load(dyr + j) - V::load(a + j)) * V::load(k + j);
            },
            [&](int64_t j) {
              const T xhat = (xr[j] - mean[j]) * invstd[j];
              return fma_scalar(xhat, -b[j], dyr[j] - a[j]) * k[j];
            });
      } else {
        elementwise<T, kStream>(
            dx + r * sh.c, sh.c, [&](int64_t j) { return V::load(dyr + j) * V::load(k + j); },
            [&](int64_t j) { return dyr[j] * k[j]; });
      }
    }
    if constexpr (kStream) stream_fence();
  });
}

}  // namespace

template <class T>
void batch_norm_stats(double* mean, double* var, const T* x, int64_t n, int64_t c, int64_t s) {
  const Shape sh{n, c, s};
  if (s > 1) {
    const int64_t per = sh.runs_per_group(), groups = sh.n_groups();
    Workspace ws(static_cast<std::size_t>(3 * c * groups));
    double* parts = ws.data();  // (c, groups, 3)
    parallel_for(c * groups, per * s, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t ch = t / groups, i0 = (t % groups) * per;
        const int64_t i1 = i0 + per < n ? i0 + per : n;
        Moments m = run_moments(x + (i0 * c + ch) * s, s);
        for (int64_t i = i0 + 1; i < i1; ++i) m = merge(m, run_moments(x + (i * c + ch) * s, s));
        store_moments(parts + 3 * t, m);
      }
    });
    for (int64_t ch = 0; ch < c; ++ch) {
      Moments m = load_moments(parts + 3 * ch * groups);
      for (int64_t g = 1; g < groups; ++g) m = merge(m, load_moments(parts + 3 * (ch * groups + g)));
      mean[ch] = m.mean;
      var[ch] = biased_variance(m);
    }
    return;
  }
  const int64_t rows = sh.rows_per_block(), blocks = sh.n_blocks();
  Workspace ws(static_cast<std::size_t>(3 * c * blocks));
  double* parts = ws.data();  // (blocks, c, 3)
  parallel_for(blocks, rows * c, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * rows, r1 = r0 + rows < n ? r0 + rows : n;
      block_column_moments(parts + 3 * c * b, x, r0, r1, c);
    }
  });
  for (int64_t ch = 0; ch < c; ++ch) {
    Moments m = load_moments(parts + 3 * ch);
    for (int64_t b = 1; b < blocks; ++b) m = merge(m, load_moments(parts + 3 * (b * c + ch)));
    mean[ch] = m.mean;
    var[ch] = biased_variance(m);
  }
}

template <class T>
void batch_norm_apply(T* y, const T* x, const T* mean_hi, const T* mean_lo, const T* scale,
                      const T* shift, int64_t n, int64_t c, int64_t s) {
  const Shape sh{n, c, s};
  if (stream_output<T>(sh))
    apply_impl<T, true>(y, x, mean_hi, mean_lo, scale, shift, sh);
  else
    apply_impl<T, false>(y, x, mean_hi, mean_lo, scale, shift, sh);
}

template <class T>
void batch_norm_grad_sums(double* sum_dy, double* sum_dy_xhat, const T* dy, const T* x,
                          const T* mean, const T* invstd, int64_t n, int64_t c, int64_t s) {
  const Shape sh{n, c, s};
  if (s > 1) {
    const int64_t per = sh.runs_per_group(), groups = sh.n_groups();
    Workspace ws(static_cast<std::size_t>(2 * c * groups));
    double* parts = ws.data();  // (c, groups, 2)
    parallel_for(c * groups, 2 * per * s, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t ch = t / groups, i0 = (t % groups) * per;
        const int64_t i1 = i0 + per < n ? i0 + per : n;
        double s_dy = 0.0, s_dyx = 0.0;
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t off = (i * c + ch) * s;
          run_grad_sums(s_dy, s_dyx, dy + off, x + off, mean[ch], invstd[ch], s);
        }
        parts[2 * t] = s_dy;
        parts[2 * t + 1] = s_dyx;
      }
    });
    for (int64_t ch = 0; ch < c; ++ch) {
      double s_dy = 0.0, s_dyx = 0.0;
      for (int64_t g = 0; g < groups; ++g) {
        s_dy += parts[2 * (ch * groups + g)];
        s_dyx += parts[2 * (ch * groups + g) + 1];
      }
      sum_dy[ch] = s_dy;
      sum_dy_xhat[ch] = s_dyx;
    }
    return;
  }
  const int64_t rows = sh.rows_per_block(), blocks = sh.n_blocks();
  Workspace ws(static_cast<std::size_t>(2 * c * blocks));
  double* parts = ws.data();  // (blocks, c, 2)
  parallel_for(blocks, 2 * rows * c, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * rows, r1 = r0 + rows < n ? r0 + rows : n;
      block_column_grad_sums(parts + 2 * c * b, dy, x, mean, invstd, r0, r1, c);
    }
  });
  for (int64_t ch = 0; ch < c; ++ch) {
    double s_dy = 0.0, s_dyx = 0.0;
    for (int64_t b = 0; b < blocks; ++b) {
      s_dy += parts[2 * (b * c + ch)];
      s_dyx += parts[2 * (b * c + ch) + 1];
    }
    sum_dy[ch] = s_dy;
    sum_dy_xhat[ch] = s_dyx;
  }
}

template <class T>
void batch_norm_backward_apply(T* dx, const T* dy, const T* x, const T* mean, const T* invstd,
                               const T* k, const T* a, const T* b, int64_t n, int64_t c,
                               int64_t s) {
  const Shape sh{n, c, s};
  const bool stream = stream_output<T>(sh);
  if (x) {
    if (stream)
      backward_apply_impl<T, true, true>(dx, dy, x, mean, invstd, k, a, b, sh);
    else
      backward_apply_impl<T, false, true>(dx, dy, x, mean, invstd, k, a, b, sh);
  } else {
    if (stream)
      backward_apply_impl<T, true, false>(dx, dy, x, mean, invstd, k, a, b, sh);
    else
      backward_apply_impl<T, false, false>(dx, dy, x, mean, invstd, k, a, b, sh);
  }
}

#define NORMKIT_INSTANTIATE(T)                                                                    \
  template void batch_norm_stats<T>(double*, double*, const T*, int64_t, int64_t, int64_t);      \
  template void batch_norm_apply<T>(T*, const T*, const T*, const T*, const T*, const T*,         \
                                    int64_t, int64_t, int64_t);                                   \
  template void batch_norm_grad_sums<T>(double*, double*, const T*, const T*, const T*,           \
                                        const T*, int64_t, int64_t, int64_t);                     \
  template void batch_norm_backward_apply<T>(T*, const T*, const T*, const T*, const T*,          \
                                             const T*, const T*, const T*, int64_t, int64_t,      \
                                             int64_t);
NORMKIT_INSTANTIATE(float)
NORMKIT_INSTANTIATE(double)
#undef NORMKIT_INSTANTIATE

}  // namespace NORMKIT_CPU_NS
}  // namespace normkit
