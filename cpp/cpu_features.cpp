#include "cpu_features.hpp"

#include <unistd.h>

#include <cstdio>
#include <string>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define NORMKIT_X86 1
#include <cpuid.h>
#endif

namespace normkit {
namespace {

#ifdef NORMKIT_X86
// XGETBV(0) by opcode, so this file needs no -mxsave.
unsigned long long read_xcr0() {
  unsigned int eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
  const bool osxsave = (ecx >> 27) & 1u;
  const bool avx = (ecx >> 28) & 1u;
  const bool fma = (ecx >> 12) & 1u;
  if (!osxsave || !avx) return f;

  const unsigned long long xcr0 = read_xcr0();
  const bool ymm_state = (xcr0 & 0x6u) == 0x6u;    // SSE + AVX state
  const bool zmm_state = (xcr0 & 0xE6u) == 0xE6u;  // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!ymm_state) return f;

  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const bool avx2 = (ebx >> 5) & 1u;
  const bool avx512f = (ebx >> 16) & 1u;
  const bool avx512dq = (ebx >> 17) & 1u;
  const bool avx512bw = (ebx >> 30) & 1u;
  const bool avx512vl = (ebx >> 31) & 1u;

  f.avx2_fma = avx2 && fma;
  f.avx512 = f.avx2_fma && zmm_state && avx512f && avx512dq && avx512bw && avx512vl;
  return f;
}
#else
CpuFeatures detect() { return {}; }
#endif

}  // namespace

namespace {

// A cache size from Linux's sysfs ("32768K"; index2 is the L2, index3 the L3), else 0.
long long sysfs_cache_bytes(int index) {
  const std::string path =
      "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size";
  if (std::FILE* f = std::fopen(path.c_str(), "r")) {
    long long value = 0;
    char unit = 0;
    const int got = std::fscanf(f, "%lld%c", &value, &unit);
    std::fclose(f);
    if (got >= 1 && value > 0) return unit == 'K' ? value << 10 : unit == 'M' ? value << 20 : value;
  }
  return 0;
}

}  // namespace

long long last_level_cache_bytes() {
  static const long long bytes = [] {
    for (int index : {3, 2})
      if (const long long found = sysfs_cache_bytes(index)) return found;
#ifdef _SC_LEVEL3_CACHE_SIZE
    return static_cast<long long>(sysconf(_SC_LEVEL3_CACHE_SIZE));
#else
    return 0ll;
#endif
  }();
  return bytes;
}

long long stream_threshold_bytes() {
  static const long long bytes = [] {
    long long llc = last_level_cache_bytes();
    if (llc <= 0) llc = 32ll << 20;
    const long long eighth = llc / 8;
    return eighth<(8ll << 20) ? 8ll << 20 : eighth>(64ll << 20) ? 64ll << 20 : eighth;
  }();
  return bytes;
}

long long l2_cache_bytes() {
  static const long long bytes = [] {
    long long l2 = sysfs_cache_bytes(2);
#ifdef _SC_LEVEL2_CACHE_SIZE
    if (l2 <= 0) l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return l2 > 0 ? l2 : 256ll << 10;
  }();
  return bytes;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

}  // namespace normkit
