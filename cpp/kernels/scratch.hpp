#pragma once
// Per-task scratch arrays for the kernels of one ISA build (in the ISA namespace, so each
// build's copy of this code is its own).

#include <cstddef>
#include <cstdint>

#include "workspace.hpp"

namespace normkit {
namespace NORMKIT_CPU_NS {

// Tag for a TaskBuffer its owner fills entirely before reading it.
struct Uninitialised {};

// A zeroed scratch array of n values of T, from the calling thread's workspace cache (left as
// it is with Uninitialised{}: a pass of its own over per-channel arrays of many channels).
template <class T>
class TaskBuffer {
 public:
  TaskBuffer(int64_t n, Uninitialised)
      : ws_(static_cast<std::size_t>((n * int64_t{sizeof(T)} + 7) / 8)),
        data_(reinterpret_cast<T*>(ws_.data())) {}
  explicit TaskBuffer(int64_t n) : TaskBuffer(n, Uninitialised{}) {
    for (int64_t j = 0; j < n; ++j) data_[j] = T(0);
  }
  // (Held here: Workspace::data() is out of line, and a call per value zeroed cost more than
  // the kernel on small inputs.)
  T* data() const { return data_; }

 private:
  Workspace ws_;
  T* data_;
};

inline void zero(double* p, int64_t n) {
  for (int64_t j = 0; j < n; ++j) p[j] = 0.0;
}

}  // namespace NORMKIT_CPU_NS
}  // namespace normkit
