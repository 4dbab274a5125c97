#pragma once
// Scratch memory for kernels. Defined out of line, in code built for the baseline CPU, so the
// per-ISA kernel objects do not instantiate standard-library allocation code of their own.

#include <cstddef>

namespace normkit {

class Workspace {
 public:
  explicit Workspace(std::size_t n_doubles);  // throws std::bad_alloc
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  double* data() const;

 private:
  double* data_;
};

}  // namespace normkit
