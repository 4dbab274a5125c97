#pragma once
// The per-channel constants of BatchNorm's normalization, shared by the orchestration
// (cpp/batch_norm.cpp) and the kernels that normalize a channel as soon as its statistics are
// known.

#include <cmath>
#include <cstdint>

namespace normkit {

// y = (x - mean_hi) * scale + shift. The float64 mean is split into mean_hi (in T) and a
// remainder folded into the shift, so x - mean_hi is exact for data near the mean and the
// output keeps full precision when |mean| >> std. invstd = 1 / sqrt(var + eps).
template <class T>
struct ChannelAffine {
  T mean_hi, scale, shift, invstd;
};

// Channel ch's constants from its mean and rstd = 1 / sqrt(var + eps); gamma and beta may be
// nullptr.
template <class T>
inline ChannelAffine<T> channel_affine_of_rstd(double mean, double rstd, const T* gamma,
                                               const T* beta, int64_t ch) {
  const double scale = gamma ? rstd * static_cast<double>(gamma[ch]) : rstd;
  const T mean_hi = static_cast<T>(mean);
  const double beta_d = beta ? static_cast<double>(beta[ch]) : 0.0;
  return {mean_hi, static_cast<T>(scale),
          static_cast<T>(beta_d - (mean - static_cast<double>(mean_hi)) * scale),
          static_cast<T>(rstd)};
}

// Channel ch's constants from its mean and (biased) variance.
template <class T>
inline ChannelAffine<T> channel_affine(double mean, double var, const T* gamma, const T* beta,
                                       int64_t ch, double eps) {
  return channel_affine_of_rstd(mean, 1.0 / std::sqrt(var + eps), gamma, beta, ch);
}

}  // namespace normkit
