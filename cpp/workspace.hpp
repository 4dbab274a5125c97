#pragma once
// Scratch memory for kernels. Defined out of line, in code built for the baseline CPU, so the
// per-ISA kernel objects do not instantiate standard-library allocation code of their own.
//
// Buffers are cached per calling thread and reused by later calls: a fresh multi-megabyte
// allocation would otherwise cost page faults on every call. Workspaces nest (a kernel may hold
// a few at once); each nesting level has its own cached buffer.

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
  int level_;
};

}  // namespace normkit
