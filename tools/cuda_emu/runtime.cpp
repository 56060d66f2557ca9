// pynotes' CUDA emulator, runtime (device side in include/cuda_emu.h).
//
// A launch runs its blocks one after another on the calling thread. Each CUDA thread of a
// block is a fiber with its own stack (switched by pynotes_emu_switch on x86-64, by ucontext
// elsewhere), run until it exits or waits:
// - __syncthreads: the block's threads are released when every thread waits there, at the
//   same call site; a thread that exits while others wait, or waiting at two different
//   barriers, is an error.
// - __shfl_*_sync: a lane waits until every lane its mask names has reached a shuffle; all of
//   them must have the same mask, width and call site. A mask that names an exited or
//   nonexistent lane, or not the calling lane, a read from a lane outside the mask, and a
//   width that is not a power of two are errors. Sources follow PTX's shfl.sync rules
//   (segments of `width` lanes, out-of-segment reads return the lane's own value).
// - A block in which no thread can run while some still wait is a deadlock: an error that
//   says who waits for whom.
// Between those points a thread runs alone, so threads run in a chosen order, forward,
// reverse or seeded random (blocks too): a missing barrier then reads shared memory before it
// is written (shared memory is filled with 0xff bytes, NaN, at each block's start) in one
// order or another. Launches that the GPU would refuse (block over 1024 threads or its
// __launch_bounds__, grid y/z over 65535, a zero dimension, shared memory over 48 KiB) stop
// with an error. Under AddressSanitizer the fibers are announced to it
// (__sanitizer_start_switch_fiber) and each shared array is fenced by poisoned redzones.
#include "cuda_emu.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/mman.h>
#include <torch/library.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define PYNOTES_EMU_ASAN 1
#else
#define PYNOTES_EMU_ASAN 0
#endif

#if defined(__x86_64__)
// pynotes_emu_switch(&save, to): saves the callee-saved registers, the SSE and x87 control
// words and the stack pointer (to *save), then resumes the context whose stack pointer is
// `to`. A plain call, no system call: ~20x faster than swapcontext, which also switches the
// signal mask.
extern "C" void pynotes_emu_switch(void** save, void* to);
asm(R"(
  .text
  .globl pynotes_emu_switch
  .type pynotes_emu_switch, @function
pynotes_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size pynotes_emu_switch, .-pynotes_emu_switch
)");
#define PYNOTES_EMU_FAST_SWITCH 1
#else
#define PYNOTES_EMU_FAST_SWITCH 0
#endif

namespace pynotes_emu {
namespace detail {
const uint3* g_thread_idx = nullptr;
uint3 g_block_idx{0, 0, 0};
dim3 g_block_dim, g_grid_dim;
}  // namespace detail

namespace {

constexpr int kWarp = 32;
constexpr int kMaxBlockThreads = 1024;
constexpr size_t kStackBytes = 256 << 10;  // per thread, a guard page below it
constexpr size_t kSharedLimit = 48 << 10;  // static shared memory of a block
constexpr size_t kRedzone = 64;            // poisoned bytes around each shared array (ASan)
constexpr size_t kArenaBytes = 2 * kSharedLimit;
constexpr uint64_t kMaxThreadsPerLaunch = uint64_t(1) << 24;  // keep tests' sizes small

enum class Order { kForward, kReverse, kRandom };
enum class State { kReady, kBarrier, kShfl, kExited };

struct Config {
  int sms = 132;
  Order order = Order::kForward;
  uint64_t seed = 0;
  std::string fault;
};

struct Stats {
  int64_t launches = 0, blocks = 0, threads = 0, switches = 0, barriers = 0, shuffles = 0;
};

// Where a fiber or the scheduler resumes: a saved stack pointer (pynotes_emu_switch) or a
// ucontext (glibc's swapcontext; elsewhere, or with PYNOTES_CUDA_EMU_SWITCH=ucontext).
struct Context {
  void* sp = nullptr;
  ucontext_t uc;
};

bool use_ucontext() {
  static const bool ucontext = !PYNOTES_EMU_FAST_SWITCH || [] {
    const char* v = std::getenv("PYNOTES_CUDA_EMU_SWITCH");
    return v != nullptr && std::string(v) == "ucontext";
  }();
  return ucontext;
}

void switch_context(Context& from, Context& to) {
#if PYNOTES_EMU_FAST_SWITCH
  if (!use_ucontext()) {
    pynotes_emu_switch(&from.sp, to.sp);
    return;
  }
#endif
  swapcontext(&from.uc, &to.uc);
}

// A context that starts entry() on the stack [stack, stack + size).
void make_context(Context& c, char* stack, size_t size, void (*entry)()) {
#if PYNOTES_EMU_FAST_SWITCH
  if (!use_ucontext()) {
    // What pynotes_emu_switch pops: control words, r15..r12, rbx, rbp (0: the end of frame
    // chains), then `ret` into entry with the stack aligned as after a call (return address
    // 0: unwinding stops there).
    auto* top = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(stack + size) & ~15ul);
    uint64_t* sp = top - 9;
    uint32_t mxcsr;
    uint16_t fpcw;
    asm volatile("stmxcsr %0; fnstcw %1" : "=m"(mxcsr), "=m"(fpcw));
    sp[0] = uint64_t(mxcsr) | uint64_t(fpcw) << 32;
    for (int r = 1; r <= 6; ++r) sp[r] = 0;
    sp[7] = reinterpret_cast<uint64_t>(entry);
    sp[8] = 0;
    c.sp = sp;
    return;
  }
#endif
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}

struct Fiber {
  Context context;
  char* stack = nullptr;
  uint3 idx{0, 0, 0};
  int id = 0;  // linear thread index in the block
  State state = State::kExited;
  const char* where = nullptr;  // the barrier or shuffle it waits at
  // The shuffle it waits at.
  const char* fn = nullptr;
  ShflMode mode = ShflMode::kIdx;
  unsigned mask = 0;
  int arg = 0, width = 0;
  uint64_t value = 0, result = 0;
  void* fake_stack = nullptr;  // ASan's, while switched out
};

struct SharedArray {
  const void* key;
  size_t offset, size;
};

// The launch that runs now.
struct Grid {
  const char* kernel;
  dim3 grid, block;
  int threads;
  void (*body)(void*);
  void* body_context;
  std::mt19937_64 rng;
  std::vector<int> next;  // threads made ready during the current round
  std::vector<SharedArray> shared;
  size_t shared_end = 0, shared_bytes = 0;
  std::string error;
};

Config g_config;
Stats g_stats;
std::map<std::string, int64_t> g_launch_counts;
std::vector<std::string> g_unchecked;  // launches not followed by C10_CUDA_KERNEL_LAUNCH_CHECK
const char* g_pending_check = nullptr;
std::mutex g_mutex;  // one emulated launch at a time

Grid* g_grid = nullptr;
Fiber* g_current = nullptr;
Context g_scheduler;
alignas(64) char g_arena[kArenaBytes];
#if PYNOTES_EMU_ASAN
void* g_scheduler_fake_stack = nullptr;
const void* g_scheduler_stack = nullptr;
size_t g_scheduler_stack_size = 0;
#endif

// Fibers and their stacks, made once, for the largest block CUDA allows.
class FiberPool {
 public:
  Fiber* get() {
    if (!fibers_) make();
    return fibers_.get();
  }
  // Stacks that a failed launch left mid-call: ASan's poison of their frames must go.
  void unpoison() {
#if PYNOTES_EMU_ASAN
    for (int i = 0; i < size_; ++i) ASAN_UNPOISON_MEMORY_REGION(fibers_[i].stack, kStackBytes);
#endif
  }

 private:
  void make() {
    const int n = kMaxBlockThreads;
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t slot = kStackBytes + page;
    void* base = mmap(nullptr, slot * n, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(base != MAP_FAILED, "cuda-emu: cannot reserve fiber stacks");
    fibers_.reset(new Fiber[n]);
    for (int i = 0; i < n; ++i) {
      char* guard = static_cast<char*>(base) + i * slot;
      mprotect(guard, page, PROT_NONE);  // an overflow faults instead of corrupting
      fibers_[i].stack = guard + page;
      getcontext(&fibers_[i].context.uc);
    }
    size_ = n;
  }
  std::unique_ptr<Fiber[]> fibers_;
  int size_ = 0;
};
FiberPool g_pool;

std::string dim_text(uint3 d) {
  std::ostringstream s;
  s << "(" << d.x << ", " << d.y << ", " << d.z << ")";
  return s.str();
}

std::string hex(unsigned mask) {
  char text[16];
  std::snprintf(text, sizeof(text), "0x%08x", mask);
  return text;
}

// Scheduler -> fiber f, until f waits or exits.
void enter(Fiber& f) {
  g_current = &f;
  detail::g_thread_idx = &f.idx;
#if PYNOTES_EMU_ASAN
  __sanitizer_start_switch_fiber(&g_scheduler_fake_stack, f.stack, kStackBytes);
#endif
  switch_context(g_scheduler, f.context);
#if PYNOTES_EMU_ASAN
  __sanitizer_finish_switch_fiber(g_scheduler_fake_stack, nullptr, nullptr);
#endif
  g_current = nullptr;
  ++g_stats.switches;
}

// Fiber f -> scheduler. An exiting fiber is never resumed.
void leave(Fiber& f, bool exiting) {
#if PYNOTES_EMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.fake_stack, g_scheduler_stack,
                                 g_scheduler_stack_size);
#endif
  switch_context(f.context, g_scheduler);
#if PYNOTES_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &g_scheduler_stack, &g_scheduler_stack_size);
#endif
  detail::g_thread_idx = &f.idx;
}

// Records the launch's error (the first one): `what` about thread f.
void fail_block(const Fiber& f, const std::string& what) {
  Grid& g = *g_grid;
  if (g.error.empty()) {
    g.error = std::string("cuda-emu: kernel ") + g.kernel + ", block " +
              dim_text(detail::g_block_idx) + ", thread " + dim_text(f.idx) + ": " + what;
  }
}

// The same from inside fiber f, which stops and is abandoned.
[[noreturn]] void fail(Fiber& f, const std::string& what) {
  fail_block(f, what);
  f.state = State::kExited;
  leave(f, true);
  std::abort();  // not reached: the scheduler never resumes a failed fiber
}

Fiber& current(const char* what) {
  TORCH_CHECK(g_current != nullptr, "cuda-emu: ", what, " outside a kernel");
  return *g_current;
}

__attribute__((no_sanitize("address"))) void fiber_main() {
  Fiber& f = *g_current;
#if PYNOTES_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_scheduler_stack, &g_scheduler_stack_size);
#endif
  try {
    g_grid->body(g_grid->body_context);
  } catch (const std::exception& e) {
    fail(f, std::string("the kernel threw: ") + e.what());
  }
  f.state = State::kExited;
  leave(f, true);
  std::abort();
}

std::string waiting_text(const Fiber& f) {
  switch (f.state) {
    case State::kExited: return "has exited";
    case State::kBarrier: return std::string("waits at __syncthreads (") + f.where + ")";
    case State::kShfl:
      return std::string("waits at ") + f.fn + " (" + f.where + ", mask " + hex(f.mask) + ")";
    case State::kReady: return "is running";
  }
  return "";
}

// No thread can run: release a barrier that every thread reached, or report why not.
void resolve_waits() {
  Grid& g = *g_grid;
  Fiber* threads = g_pool.get();
  const Fiber* exited = nullptr;
  const Fiber* at_barrier = nullptr;
  int barrier_count = 0;
  for (int t = 0; t < g.threads; ++t) {
    const Fiber& f = threads[t];
    if (f.state == State::kShfl) {
      const int base = t - t % kWarp;
      for (int k = 0; k < kWarp; ++k) {
        if (!(f.mask >> k & 1u)) continue;
        const Fiber& other = threads[base + k];
        if (other.state != State::kShfl || other.mask != f.mask || other.where != f.where) {
          fail_block(f, std::string(f.fn) + " (" + f.where + ", mask " + hex(f.mask) +
                            ") waits for lane " + std::to_string(k) + ", which " +
                            waiting_text(other) + ": deadlock");
          return;
        }
      }
      fail_block(f, std::string(f.fn) + " (" + f.where + ") never completed");
      return;
    }
    if (f.state == State::kExited && exited == nullptr) exited = &f;
    if (f.state == State::kBarrier) {
      if (at_barrier == nullptr) at_barrier = &f;
      ++barrier_count;
      if (f.where != at_barrier->where) {
        fail_block(f, std::string("__syncthreads at ") + f.where + " while thread " +
                          dim_text(at_barrier->idx) + " waits at __syncthreads at " +
                          at_barrier->where + ": a barrier in divergent code");
        return;
      }
    }
  }
  if (at_barrier == nullptr) return;  // every thread has exited: the block is done
  if (exited != nullptr) {
    fail_block(*exited, "exited while " + std::to_string(barrier_count) +
                            " threads wait at __syncthreads (" + at_barrier->where +
                            "): a barrier not reached by every thread of the block");
    return;
  }
  ++g_stats.barriers;
  for (int t = 0; t < g.threads; ++t) {
    threads[t].state = State::kReady;
    g.next.push_back(t);
  }
}

void order_threads(std::vector<int>& ids) {
  switch (g_config.order) {
    case Order::kForward: std::sort(ids.begin(), ids.end()); break;
    case Order::kReverse: std::sort(ids.rbegin(), ids.rend()); break;
    case Order::kRandom: std::shuffle(ids.begin(), ids.end(), g_grid->rng); break;
  }
}

void run_block(uint3 block_idx) {
  Grid& g = *g_grid;
  detail::g_block_idx = block_idx;
  for (const SharedArray& a : g.shared) std::memset(g_arena + a.offset, 0xff, a.size);
  Fiber* threads = g_pool.get();
  std::vector<int> ready(g.threads);
  for (int t = 0; t < g.threads; ++t) {
    Fiber& f = threads[t];
    f.id = t;
    f.idx = {t % g.block.x, t / g.block.x % g.block.y, t / (g.block.x * g.block.y)};
    f.state = State::kReady;
    make_context(f.context, f.stack, kStackBytes, fiber_main);
    ready[t] = t;
  }
  ++g_stats.blocks;
  g_stats.threads += g.threads;
  while (!ready.empty()) {
    order_threads(ready);
    g.next.clear();
    for (int t : ready) {
      if (threads[t].state != State::kReady) continue;
      enter(threads[t]);
      if (!g.error.empty()) return;
    }
    if (g.next.empty()) resolve_waits();
    if (!g.error.empty()) return;
    ready.swap(g.next);
  }
}

std::string launch_error(const Grid& g, int64_t max_threads, size_t dynamic_shared) {
  std::ostringstream s;
  const dim3 &grid = g.grid, &block = g.block;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) {
    s << "a grid dimension is 0, gridDim = " << dim_text({grid.x, grid.y, grid.z});
  } else if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    s << "gridDim " << dim_text({grid.x, grid.y, grid.z})
      << " exceeds (2^31 - 1, 65535, 65535)";
  } else if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 ||
             block.y > 1024 || block.z > 64) {
    s << "blockDim " << dim_text({block.x, block.y, block.z})
      << " is not in [1, (1024, 1024, 64)]";
  } else if (uint64_t(block.x) * block.y * block.z > kMaxBlockThreads) {
    s << "a block of " << uint64_t(block.x) * block.y * block.z << " threads exceeds 1024";
  } else if (max_threads > 0 && int64_t(block.x) * block.y * block.z > max_threads) {
    s << "a block of " << int64_t(block.x) * block.y * block.z
      << " threads exceeds the kernel's __launch_bounds__(" << max_threads << ")";
  } else if (dynamic_shared != 0) {
    s << dynamic_shared << " bytes of dynamic shared memory (the kernels use static only)";
  }
  return s.str();
}

}  // namespace

const DeviceProp* device_properties() {
  static DeviceProp prop;
  prop = {g_config.sms};
  return &prop;
}

namespace detail {

void syncthreads(const char* where) {
  Fiber& f = current("__syncthreads");
  f.state = State::kBarrier;
  f.where = where;
  leave(f, false);
}

uint64_t shfl(ShflMode mode, const char* fn, const char* where, unsigned mask, uint64_t bits,
              int arg, int width) {
  Fiber& f = current(fn);
  Grid& g = *g_grid;
  ++g_stats.shuffles;
  const int lane = f.id % kWarp, base = f.id - lane;
  if (width < 1 || width > kWarp || (width & (width - 1)) != 0) {
    fail(f, std::string(fn) + " (" + where + "): width " + std::to_string(width) +
                " is not a power of two in [1, 32]");
  }
  if (!(mask >> lane & 1u)) {
    fail(f, std::string(fn) + " (" + where + "): lane " + std::to_string(lane) +
                " calls it with mask " + hex(mask) + ", which does not name it");
  }
  Fiber* threads = g_pool.get();
  for (int k = 0; k < kWarp; ++k) {
    if (!(mask >> k & 1u)) continue;
    if (base + k >= g.threads) {
      fail(f, std::string(fn) + " (" + where + "): mask " + hex(mask) + " names lane " +
                  std::to_string(k) + ", which does not exist in a block of " +
                  std::to_string(g.threads) + " threads");
    }
    if (threads[base + k].state == State::kExited) {
      fail(f, std::string(fn) + " (" + where + "): mask " + hex(mask) + " names lane " +
                  std::to_string(k) + ", which has exited");
    }
  }
  f.state = State::kShfl;
  f.fn = fn;
  f.where = where;
  f.mode = mode;
  f.mask = mask;
  f.arg = arg;
  f.width = width;
  f.value = bits;
  for (int k = 0; k < kWarp; ++k) {
    if ((mask >> k & 1u) && threads[base + k].state != State::kShfl) {
      leave(f, false);  // the last lane to arrive completes the shuffle for all
      return f.result;
    }
  }
  for (int k = 0; k < kWarp; ++k) {
    if (!(mask >> k & 1u)) continue;
    const Fiber& other = threads[base + k];
    if (other.mask != mask || other.where != where || other.width != width ||
        other.mode != mode) {
      fail(f, std::string(fn) + " (" + where + ", mask " + hex(mask) + ", width " +
                  std::to_string(width) + ") while lane " + std::to_string(k) + " " +
                  waiting_text(other) + " with width " + std::to_string(other.width) +
                  ": the lanes of one shuffle disagree");
    }
  }
  // PTX shfl.sync: segments of `width` lanes; c = ((32 - width) << 8) | (up ? 0 : 31).
  const int segment_mask = ~(width - 1) & (kWarp - 1);
  for (int k = 0; k < kWarp; ++k) {
    if (!(mask >> k & 1u)) continue;
    Fiber& t = threads[base + k];
    const int b = t.arg & (kWarp - 1);
    const int min_lane = k & segment_mask;
    const int max_lane = mode == ShflMode::kUp ? min_lane : min_lane | (~segment_mask & 31);
    int j = k;
    bool in_range = true;
    switch (mode) {
      case ShflMode::kUp: j = k - b; in_range = j >= max_lane; break;
      case ShflMode::kDown: j = k + b; in_range = j <= max_lane; break;
      case ShflMode::kXor: j = k ^ b; in_range = j <= max_lane; break;
      case ShflMode::kIdx: j = min_lane | (b & ~segment_mask); in_range = j <= max_lane; break;
    }
    if (!in_range) j = k;  // outside the segment: the lane's own value
    if (!(mask >> j & 1u)) {
      fail(f, std::string(fn) + " (" + where + ", mask " + hex(mask) + "): lane " +
                  std::to_string(k) + " reads lane " + std::to_string(j) +
                  ", which is not in the mask (an undefined value)");
    }
    t.result = threads[base + j].value;
    if (k != lane) {
      t.state = State::kReady;
      g.next.push_back(base + k);
    }
  }
  f.state = State::kReady;
  return f.result;
}

void* shared_alloc(const void* key, size_t size, size_t align) {
  Fiber& f = current("a __shared__ declaration");
  Grid& g = *g_grid;
  for (const SharedArray& a : g.shared) {
    if (a.key == key) return g_arena + a.offset;
  }
  align = std::max<size_t>(align, 16);
  const size_t offset = (g.shared_end + kRedzone + align - 1) / align * align;
  g.shared_bytes += size;
  if (g.shared_bytes > kSharedLimit || offset + size + kRedzone > kArenaBytes) {
    fail(f, "static __shared__ memory of " + std::to_string(g.shared_bytes) +
                " bytes exceeds the 48 KiB of a block");
  }
  g.shared.push_back({key, offset, size});
  g.shared_end = offset + size;
#if PYNOTES_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(g_arena + offset, size);
#endif
  std::memset(g_arena + offset, 0xff, size);
  return g_arena + offset;
}

void run_grid(const char* kernel, int64_t max_threads, dim3 grid, dim3 block,
              size_t dynamic_shared, void (*thread_body)(void*), void* body) {
  std::lock_guard<std::mutex> lock(g_mutex);
  TORCH_CHECK(g_grid == nullptr, "cuda-emu: a launch from inside a kernel");
  if (g_pending_check != nullptr) g_unchecked.push_back(g_pending_check);
  g_pending_check = nullptr;
  Grid g{kernel, grid, block, static_cast<int>(uint64_t(block.x) * block.y * block.z),
         thread_body, body, std::mt19937_64(g_config.seed + uint64_t(g_stats.launches))};
  const std::string bad = launch_error(g, max_threads, dynamic_shared);
  TORCH_CHECK(bad.empty(), "cuda-emu: kernel ", kernel, ": invalid launch (the GPU refuses it: ",
              "invalid configuration argument): ", bad);
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  TORCH_CHECK(blocks * uint64_t(g.threads) <= kMaxThreadsPerLaunch, "cuda-emu: kernel ", kernel,
              " launches ", blocks * uint64_t(g.threads),
              " threads, more than the emulator runs in one launch (2^24): use smaller sizes");
  ++g_stats.launches;
  ++g_launch_counts[kernel];
  detail::g_grid_dim = grid;
  detail::g_block_dim = block;
#if PYNOTES_EMU_ASAN
  ASAN_POISON_MEMORY_REGION(g_arena, kArenaBytes);
#endif
  // Blocks in order, or a random permutation i -> (a i + c) mod blocks (a coprime to blocks).
  uint64_t a = 1, c = 0;
  if (g_config.order == Order::kRandom && blocks > 1) {
    do {
      a = g.rng() % blocks;
    } while (std::gcd(a, blocks) != 1);
    c = g.rng() % blocks;
  }
  g_grid = &g;
  for (uint64_t i = 0; i < blocks && g.error.empty(); ++i) {
    uint64_t b = i;
    if (g_config.order == Order::kReverse) b = blocks - 1 - i;
    if (g_config.order == Order::kRandom) {
      b = static_cast<uint64_t>((static_cast<unsigned __int128>(a) * i + c) % blocks);
    }
    run_block({static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
               static_cast<unsigned>(b / (uint64_t(grid.x) * grid.y))});
  }
  g_grid = nullptr;
  if (!g.error.empty()) {
    g_pool.unpoison();
    TORCH_CHECK(false, g.error);
  }
  g_pending_check = kernel;
}

void kernel_launch_check() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_pending_check = nullptr;
}

bool fault_active(const char* name) {
  return !g_config.fault.empty() && g_config.fault == name;
}

}  // namespace detail

namespace {

// The pynotes_emu operators: every pynotes schema under the emulator's namespace, so that
// the emulated CUDA kernels (registered for CPU tensors by the generated sources) sit beside
// the real CPU kernels, torch.ops.pynotes_emu.X against torch.ops.pynotes.X.
void define_schemas() {
  static std::unique_ptr<torch::Library> library;
  if (library) return;
  library = std::make_unique<torch::Library>(torch::Library::DEF, "pynotes_emu", std::nullopt,
                                             __FILE__, __LINE__);
  const std::string prefix = "pynotes::";
  for (const c10::OperatorName& name : c10::Dispatcher::singleton().getAllOpNames()) {
    if (name.name.rfind(prefix, 0) != 0) continue;
    const auto op = c10::Dispatcher::singleton().findSchema(name);
    if (!op.has_value() || !op->hasSchema()) continue;
    library->def(op->schema().cloneWithName("pynotes_emu::" + name.name.substr(prefix.size()),
                                            name.overload_name));
  }
}

Order order_of(const std::string& order) {
  if (order == "forward") return Order::kForward;
  if (order == "reverse") return Order::kReverse;
  TORCH_CHECK_VALUE(order == "random", "cuda-emu: order must be 'forward', 'reverse' or ",
                    "'random', got '", order, "'");
  return Order::kRandom;
}

}  // namespace
}  // namespace pynotes_emu

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pynotes' CUDA kernels, emulated on the CPU (tools/cuda_emu): torch.ops.pynotes_emu";
  py::module_::import("pynotes");  // its operators first: their schemas are copied
  pynotes_emu::define_schemas();
  using namespace pynotes_emu;
  m.def(
      "configure",
      [](int sms, const std::string& order, uint64_t seed) {
        TORCH_CHECK_VALUE(sms >= 1, "cuda-emu: sms must be at least 1, got ", sms);
        const Order o = order_of(order);
        std::lock_guard<std::mutex> lock(g_mutex);
        g_config.sms = sms;
        g_config.order = o;
        g_config.seed = seed;
      },
      py::arg("sms") = 132, py::arg("order") = "forward", py::arg("seed") = 0,
      "The emulated GPU's SM count, and the order threads (and blocks) run in between "
      "barriers and shuffles: 'forward', 'reverse' or 'random' (seeded).");
  m.def(
      "set_fault",
      [](const std::string& name) {
        std::lock_guard<std::mutex> lock(g_mutex);
        g_config.fault = name;
      },
      py::arg("name"), "Switches on one injected fault (generate.py's FAULTS), '' for none.");
  m.def("launch_counts", [] {
    std::lock_guard<std::mutex> lock(g_mutex);
    return g_launch_counts;
  }, "Launches so far, per __global__ kernel name.");
  m.def("take_unchecked_launches", [] {
    std::lock_guard<std::mutex> lock(g_mutex);
    std::vector<std::string> unchecked;
    unchecked.swap(g_unchecked);
    if (g_pending_check != nullptr) unchecked.push_back(g_pending_check);
    g_pending_check = nullptr;
    return unchecked;
  }, "Launches not followed by C10_CUDA_KERNEL_LAUNCH_CHECK (before the next launch, or "
     "yet), by kernel name; clears the list.");
  m.def("stats", [] {
    std::lock_guard<std::mutex> lock(g_mutex);
    return std::map<std::string, int64_t>{
        {"launches", g_stats.launches}, {"blocks", g_stats.blocks},
        {"threads", g_stats.threads},   {"switches", g_stats.switches},
        {"barriers", g_stats.barriers}, {"shuffles", g_stats.shuffles}};
  }, "Counts of launches, blocks, threads, fiber switches, barriers and shuffles so far.");
  m.attr("asan") = py::bool_(PYNOTES_EMU_ASAN);
}
