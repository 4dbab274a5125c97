#include "workspace.hpp"

#include <cstdlib>
#include <new>

namespace normkit {

Workspace::Workspace(std::size_t n_doubles) : data_(nullptr) {
  if (n_doubles == 0) return;
  // 64-byte alignment: one cache line, one AVX-512 register.
  const std::size_t bytes = (n_doubles * sizeof(double) + 63) / 64 * 64;
  data_ = static_cast<double*>(std::aligned_alloc(64, bytes));
  if (!data_) throw std::bad_alloc();
}

Workspace::~Workspace() { std::free(data_); }

double* Workspace::data() const { return data_; }

}  // namespace normkit
