#pragma once
// LayerNorm over the last axis of a row-major (rows, cols) array: each row is normalized by
// its own mean and biased variance,
//
//   mean = sum(x) / cols,  rstd = 1 / sqrt(sum((x - mean)^2) / cols + eps)
//   y    = (x - mean) * rstd * gamma + beta
//
// and the backward, with xhat = (x - mean) * rstd and g = dy * gamma,
//
//   dx     = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   dgamma = sum over rows of dy * xhat,   dbeta = sum over rows of dy.
//
// gamma/beta may be nullptr (no scale / no shift). The backward computes dgamma and dbeta
// exactly when gamma is given. y may alias x. Statistics are accumulated in float64 for both
// float and double; results are bitwise identical for any thread count.
// Throws std::invalid_argument for negative sizes, cols == 0, or a non-finite/negative eps.

#include <cstdint>

namespace normkit {

template <class T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta,
                        int64_t rows, int64_t cols, double eps);

template <class T>
void layer_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                         const T* rstd, const T* gamma, int64_t rows, int64_t cols);

}  // namespace normkit
