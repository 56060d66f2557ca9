#pragma once
// pynotes' CUDA emulator, device side: what the kernels in csrc/*/*_cuda.cu use, as host C++.
//
// generate.py puts this header in front of each kernel file and rewrites the two things no
// header can: a launch `kernel<<<grid, block, shared, stream>>>(args)` becomes
// `pynotes_emu::launch(...)(args)`, and `__shared__ T name[n];` becomes a reference into the
// block's shared memory (pynotes_emu::shared). runtime.cpp runs a launch block after block;
// each CUDA thread of a block is a fiber that runs until it exits or waits at __syncthreads or
// a shuffle, so barriers count arrivals and shuffles see exactly the lanes that reached them.
// The other headers in this folder stand in for CUDA's and ATen's CUDA headers (streams,
// device properties, guards, launch checks).
#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)  // generate.py passes the bound to the launch instead

#define PYNOTES_EMU_STR2(x) #x
#define PYNOTES_EMU_STR(x) PYNOTES_EMU_STR2(x)
// The call site, in the kernel file's own lines (generate.py keeps them with #line).
#define PYNOTES_EMU_WHERE __FILE__ ":" PYNOTES_EMU_STR(__LINE__)

namespace pynotes_emu {
namespace detail {

// A launch dimension as CUDA's dim3 takes it (unsigned int). A wider value would be cut
// silently by the real conversion; here it stops with an error.
template <typename V>
unsigned int dimension(V v) {
  static_assert(std::is_integral_v<V>, "a launch dimension must be an integer");
  bool fits = static_cast<uint64_t>(v) <= std::numeric_limits<unsigned int>::max();
  if constexpr (std::is_signed_v<V>) fits = fits && v >= 0;
  TORCH_CHECK(fits, "cuda-emu: a launch dimension of ", v,
              " does not fit dim3's unsigned int (CUDA would truncate it)");
  return static_cast<unsigned int>(v);
}

}  // namespace detail
}  // namespace pynotes_emu

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  template <typename X = unsigned, typename Y = unsigned, typename Z = unsigned>
  dim3(X vx = 1u, Y vy = 1u, Z vz = 1u)  // NOLINT: implicit, as CUDA's
      : x(pynotes_emu::detail::dimension(vx)),
        y(pynotes_emu::detail::dimension(vy)),
        z(pynotes_emu::detail::dimension(vz)) {}
  dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}  // NOLINT
};

namespace pynotes_emu {

enum class ShflMode { kIdx, kUp, kDown, kXor };

// The stream argument of a launch (ignored: blocks run in order on the calling thread).
struct Stream {};

namespace detail {

// Set by the runtime for the thread (fiber) and block that run now.
extern const uint3* g_thread_idx;
extern uint3 g_block_idx;
extern dim3 g_block_dim, g_grid_dim;

void syncthreads(const char* where);
uint64_t shfl(ShflMode mode, const char* fn, const char* where, unsigned mask, uint64_t bits,
              int arg, int width);
void* shared_alloc(const void* key, size_t size, size_t align);
void run_grid(const char* kernel, int64_t max_threads, dim3 grid, dim3 block,
              size_t dynamic_shared, void (*thread_body)(void*), void* body);
void kernel_launch_check();
// Fault injection (generate.py's FAULTS): true while the named fault is switched on.
bool fault_active(const char* name);

}  // namespace detail

template <typename T>
T shfl(ShflMode mode, const char* fn, const char* where, unsigned mask, T var, int arg,
       int width = 32) {
  // CUDA's overloads: 32- and 64-bit integers and floating point.
  static_assert(std::is_arithmetic_v<T> && (sizeof(T) == 4 || sizeof(T) == 8),
                "__shfl_*_sync takes 32- or 64-bit integers or floating point");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = detail::shfl(mode, fn, where, mask, bits, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// A __shared__ declaration: the same object for every thread of a block, one per declaration
// (key: a static of a lambda at the declaration, so one per template instance too), filled
// with 0xff bytes (NaN as float or double) at every block's start.
template <typename T>
T& shared(const void* key) {
  return *static_cast<T*>(detail::shared_alloc(key, sizeof(T), alignof(T)));
}

// kernel<<<grid, block, shared, stream>>>(args) as launch(name, bound, body, grid, block,
// shared, stream)(args): the arguments are evaluated once, on the host, and every thread
// calls body (which calls the kernel, deducing its template arguments from them as the
// launch would) with its own copies.
template <typename Body>
class Launcher {
 public:
  Launcher(const char* kernel, int64_t max_threads, Body body, dim3 grid, dim3 block,
           size_t dynamic_shared)
      : kernel_(kernel), max_threads_(max_threads), body_(body), grid_(grid), block_(block),
        dynamic_shared_(dynamic_shared) {}

  template <typename... A>
  void operator()(A&&... args) {
    std::tuple<std::decay_t<A>...> params(std::forward<A>(args)...);
    auto thread = [&] { std::apply(body_, params); };
    detail::run_grid(kernel_, max_threads_, grid_, block_, dynamic_shared_,
                     [](void* t) { (*static_cast<decltype(thread)*>(t))(); }, &thread);
  }

 private:
  const char* kernel_;
  int64_t max_threads_;  // __launch_bounds__, or 0
  Body body_;
  dim3 grid_, block_;
  size_t dynamic_shared_;
};

template <typename Body, typename S = Stream>
Launcher<Body> launch(const char* kernel, int64_t max_threads, Body body, dim3 grid, dim3 block,
                      size_t dynamic_shared = 0, const S& = S{}) {
  return Launcher<Body>(kernel, max_threads, body, grid, block, dynamic_shared);
}

}  // namespace pynotes_emu

#define threadIdx (static_cast<const uint3&>(*::pynotes_emu::detail::g_thread_idx))
#define blockIdx (static_cast<const uint3&>(::pynotes_emu::detail::g_block_idx))
#define blockDim (static_cast<const dim3&>(::pynotes_emu::detail::g_block_dim))
#define gridDim (static_cast<const dim3&>(::pynotes_emu::detail::g_grid_dim))

#define __syncthreads() ::pynotes_emu::detail::syncthreads(PYNOTES_EMU_WHERE)
#define __shfl_sync(...) \
  ::pynotes_emu::shfl(::pynotes_emu::ShflMode::kIdx, "__shfl_sync", PYNOTES_EMU_WHERE, __VA_ARGS__)
#define __shfl_up_sync(...)                                                         \
  ::pynotes_emu::shfl(::pynotes_emu::ShflMode::kUp, "__shfl_up_sync", PYNOTES_EMU_WHERE, \
                      __VA_ARGS__)
#define __shfl_down_sync(...)                                                           \
  ::pynotes_emu::shfl(::pynotes_emu::ShflMode::kDown, "__shfl_down_sync", PYNOTES_EMU_WHERE, \
                      __VA_ARGS__)
#define __shfl_xor_sync(...)                                                          \
  ::pynotes_emu::shfl(::pynotes_emu::ShflMode::kXor, "__shfl_xor_sync", PYNOTES_EMU_WHERE, \
                      __VA_ARGS__)

// Atomics, CUDA's overloads: threads never run at the same time here, so a plain
// read-modify-write is atomic. Integer sums wrap as on the GPU.
inline int atomicAdd(int* address, int value) {
  const int old = *address;
  *address = static_cast<int>(static_cast<unsigned>(old) + static_cast<unsigned>(value));
  return old;
}
inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
  const unsigned int old = *address;
  *address = old + value;
  return old;
}
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  *address = old + value;
  return old;
}
inline float atomicAdd(float* address, float value) {
  const float old = *address;
  *address = old + value;
  return old;
}
inline double atomicAdd(double* address, double value) {
  const double old = *address;
  *address = old + value;
  return old;
}
