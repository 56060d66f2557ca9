#pragma once
// Per-ISA CPU kernels, as ATen builds its own: every csrc/**/*_cpu_kernel.cpp is compiled once
// per instruction set (DEFAULT and, on x86-64, AVX2 and AVX512) with -DCPU_CAPABILITY=<name>,
// so each copy defines its functions in namespace pynotes::<name> and uses the matching
// at::vec::Vectorized. The default build therefore runs on any x86-64 CPU, and an op picks
// the widest copy the CPU supports at run time: the one torch itself uses (which honours
// ATEN_CPU_CAPABILITY=default|avx2|avx512).

#include <cstdint>

namespace pynotes {

enum class CpuCapability { DEFAULT = 0, AVX2 = 1, AVX512 = 2 };

// The kernels' instruction set in this process (torch's choice, capped to what we compiled).
CpuCapability cpu_capability();
const char* cpu_capability_name(CpuCapability capability);

// Bytes of this CPU's last-level cache (as Linux's sysfs describes cpu0's, else sysconf's
// answer, else 32 MiB): outputs larger than this are written with non-temporal stores.
int64_t last_level_cache_bytes();

template <typename Fn>
Fn select_cpu_kernel(Fn default_fn, Fn avx2_fn, Fn avx512_fn) {
  switch (cpu_capability()) {
    case CpuCapability::AVX512: return avx512_fn;
    case CpuCapability::AVX2: return avx2_fn;
    default: return default_fn;
  }
}

}  // namespace pynotes

#if defined(__x86_64__) || defined(_M_X64)
#define PYNOTES_X86_KERNELS 1
// Declares `decl` once per ISA namespace (inside namespace pynotes).
#define PYNOTES_DECLARE_CPU_KERNEL(decl) \
  namespace DEFAULT { decl; }            \
  namespace AVX2 { decl; }               \
  namespace AVX512 { decl; }
// The ISA copy of kernel `fn` to run on this CPU (call inside namespace pynotes).
#define PYNOTES_CPU_KERNEL(fn) ::pynotes::select_cpu_kernel(&DEFAULT::fn, &AVX2::fn, &AVX512::fn)
#else
#define PYNOTES_DECLARE_CPU_KERNEL(decl) \
  namespace DEFAULT { decl; }
#define PYNOTES_CPU_KERNEL(fn) (&DEFAULT::fn)
#endif
