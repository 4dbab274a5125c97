#include "layer_norm.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

#include "dispatch.hpp"

namespace normkit {
namespace {

void check_sizes(int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 1)
    throw std::invalid_argument("layer_norm: expected rows >= 0 and cols >= 1, got rows=" +
                                std::to_string(rows) + ", cols=" + std::to_string(cols));
}

}  // namespace

template <class T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta,
                        int64_t rows, int64_t cols, double eps) {
  check_sizes(rows, cols);
  if (!std::isfinite(eps) || eps < 0.0)
    throw std::invalid_argument("layer_norm: eps must be finite and >= 0, got " +
                                std::to_string(eps));
  active_kernels().of<T>().layer_norm_forward(y, mean, rstd, x, gamma, beta, rows, cols, eps);
}

template <class T>
void layer_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                         const T* rstd, const T* gamma, int64_t rows, int64_t cols) {
  check_sizes(rows, cols);
  if (gamma && (!dgamma || !dbeta))
    throw std::invalid_argument("layer_norm_backward: dgamma and dbeta are required with gamma");
  active_kernels().of<T>().layer_norm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma, rows,
                                               cols);
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

}  // namespace normkit
