// BatchNorm's per-channel bookkeeping around the kernels (running statistics, the backward's
// scale, dgamma and dbeta), a Vec<double> of channels at a time. Compiled once per ISA (see
// CMakeLists.txt). Each vector computes what the scalar tail computes, in the same order: the
// same bits. In the baseline-compiled orchestration these loops ran one channel at a time and
// took 11 % of the (2, 65536) float32 training forward and 20 % of its backward (1 thread, Zen 3);
// in vectors, medians of 7 in three interleaved rounds: forward 0.67-0.74 -> 0.61-0.71 ms,
// backward 0.33-0.36 -> 0.30-0.33; dgamma and dbeta still take 10 % of that backward (perf),
// which reads 1 MiB of float64 sums for them.
#include <cstdint>

#include "kernels/kernels.hpp"
#include "kernels/vec.hpp"

namespace normkit {
namespace NORMKIT_CPU_NS {

// Scalar math: running_mean = (1 - momentum) * running_mean + momentum * batch_mean;
//              running_var = (1 - momentum) * running_var + momentum * batch_var * unbias
template <class T>
void batch_norm_update_running(T* running_mean, T* running_var, const double* batch_mean,
                               const double* batch_var, double momentum, double unbias, int64_t c) {
  using D = Vec<double>;
  constexpr int64_t W = D::width;
  const double keep = 1.0 - momentum;
  const D keep_v = D::broadcast(keep), momentum_v = D::broadcast(momentum);
  const D unbias_v = D::broadcast(unbias);
  int64_t ch = 0;
  for (; ch + W <= c; ch += W) {
    store_narrow(running_mean + ch,
                 keep_v * load_wide(running_mean + ch) + momentum_v * D::load(batch_mean + ch));
    store_narrow(running_var + ch, keep_v * load_wide(running_var + ch) +
                                       momentum_v * D::load(batch_var + ch) * unbias_v);
  }
  for (; ch < c; ++ch) {
    running_mean[ch] =
        static_cast<T>(keep * static_cast<double>(running_mean[ch]) + momentum * batch_mean[ch]);
    running_var[ch] = static_cast<T>(keep * static_cast<double>(running_var[ch]) +
                                     momentum * batch_var[ch] * unbias);
  }
}

// Scalar math: scale = gamma * invstd (in float64, rounded to T; gamma may be nullptr: 1)
template <class T>
void batch_norm_grad_scale(T* scale, const T* gamma, const T* invstd, int64_t c) {
  using D = Vec<double>;
  constexpr int64_t W = D::width;
  int64_t ch = 0;
  for (; ch + W <= c; ch += W)
    store_narrow(scale + ch,
                 gamma ? load_wide(gamma + ch) * load_wide(invstd + ch) : load_wide(invstd + ch));
  for (; ch < c; ++ch)
    scale[ch] =
        static_cast<T>(gamma ? static_cast<double>(gamma[ch]) * static_cast<double>(invstd[ch])
                             : static_cast<double>(invstd[ch]));
}

// Scalar math: dgamma = sum_dy_xhat;  dbeta = sum_dy   (rounded to T)
template <class T>
void batch_norm_grad_params(T* dgamma, T* dbeta, const double* sum_dy_xhat, const double* sum_dy,
                            int64_t c) {
  using D = Vec<double>;
  constexpr int64_t W = D::width;
  int64_t ch = 0;
  for (; ch + W <= c; ch += W) {
    store_narrow(dgamma + ch, D::load(sum_dy_xhat + ch));
    store_narrow(dbeta + ch, D::load(sum_dy + ch));
  }
  for (; ch < c; ++ch) {
    dgamma[ch] = static_cast<T>(sum_dy_xhat[ch]);
    dbeta[ch] = static_cast<T>(sum_dy[ch]);
  }
}

#define NORMKIT_INSTANTIATE(T)                                                                     \
  template void batch_norm_update_running<T>(T*, T*, const double*, const double*, double, double, \
                                             int64_t);                                             \
  template void batch_norm_grad_scale<T>(T*, const T*, const T*, int64_t);                         \
  template void batch_norm_grad_params<T>(T*, T*, const double*, const double*, int64_t);
NORMKIT_INSTANTIATE(float)
NORMKIT_INSTANTIATE(double)
#undef NORMKIT_INSTANTIATE

}  // namespace NORMKIT_CPU_NS
}  // namespace normkit
