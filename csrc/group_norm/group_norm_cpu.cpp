// CPU group norm ops: checks and allocation (group_norm_args), then the per-ISA kernel.
#include "group_norm/group_norm_cpu.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <tuple>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "common/calibration.h"
#include "common/cpu_dispatch.h"
#include "group_norm/group_norm_args.h"
#include "group_norm/group_norm_cpu_kernel.h"

namespace pynotes {
namespace {

// A shape class of the choices below: dtype, SiLU, N, C and HxW rounded up to powers of two,
// threads.
struct ShapeClass {
  c10::ScalarType dtype;
  bool silu;
  int64_t n, c, hxw;
  int threads;
  bool operator<(const ShapeClass& o) const {
    return std::tie(dtype, silu, n, c, hxw, threads) <
           std::tie(o.dtype, o.silu, o.n, o.c, o.hxw, o.threads);
  }
};

ShapeClass shape_class_of(c10::ScalarType dtype, bool silu, int64_t N, int64_t C, int64_t HxW) {
  return {dtype, silu, round_up_pow2(N), round_up_pow2(C), round_up_pow2(HxW),
          at::get_num_threads()};
}

using WalkChoices = ChoiceTable<ShapeClass, GroupNormWalkChoice>;

// The channels-last float/double backward takes its per-channel sums either along the rows
// (sums in memory) or down them (sums in registers). The bits are the same, the speed depends
// on the CPU (see grad_column_sums). PYNOTES_GROUP_NORM_SUMS=rows or =columns fixes the choice
// (the tests run both).
WalkChoices& sums_choices() {
  static WalkChoices table;
  return table;
}

// The channels-last float/double forward walks its chunks down columns of channels (moments in
// one pass, the normalize parameters in registers) or along the rows (moments in two passes,
// beyond the cache with the next chunk prefetched; the output row by row). Which is faster
// depends on the CPU and C: on one Zen 4, in cache, the columns won for C 64-128 (1.16-1.62x
// against torch where the rows gave 0.85-1.02x), while for C 256-1024 either won, by up to
// 25 %, from one process to another. The moments' last bits differ between the walks.
// PYNOTES_GROUP_NORM_COLUMNS=1 or =0 fixes the choice.
WalkChoices& forward_walk_choices() {
  static WalkChoices table;
  return table;
}

// Whether a kernel measures its walk: channels-last float32 and float64 (Half/BFloat16 rows are
// widened a block at a time; the kernel decides how they are walked).
bool has_walk_choice(bool channels_last, c10::ScalarType dtype) {
  return channels_last && (dtype == at::kFloat || dtype == at::kDouble);
}

// Runs run(along_rows) with the walk chosen for key's class: the first call of a class runs it
// both ways, twice each, alternating, keeps the faster for the process, and ends with a run the
// chosen way (every run writes all the outputs, so the last one is the call's result).
template <typename Run>
void run_measured_walk(WalkChoices& table, const ShapeClass& key, const Run& run) {
  if (const auto known = table.find(key)) {
    run(known->along_rows);
    return;
  }
  double rows_s = 1e300, columns_s = 1e300;
  for (int round = 0; round < 2; ++round) {
    columns_s = std::min(columns_s, seconds_of([&] { run(false); }));
    rows_s = std::min(rows_s, seconds_of([&] { run(true); }));
  }
  const GroupNormWalkChoice choice = table.insert(
      key, {key.dtype, key.silu, key.n, key.c, key.hxw, key.threads, rows_s < columns_s, rows_s,
            columns_s});
  if (!choice.along_rows) run(false);
}

// -1: measure; 0 or 1: sums_along_rows as PYNOTES_GROUP_NORM_SUMS fixes it (read every call,
// so that a test can run both).
int forced_sums_along_rows() {
  const char* env = std::getenv("PYNOTES_GROUP_NORM_SUMS");
  if (env == nullptr || env[0] == '\0') return -1;
  if (std::strcmp(env, "rows") == 0) return 1;
  if (std::strcmp(env, "columns") == 0) return 0;
  TORCH_CHECK(false, "PYNOTES_GROUP_NORM_SUMS must be 'rows' or 'columns', got '", env, "'");
}

// An override read from the environment every call (so that a test can run both ways): -1
// where `name` is unset or empty, else 0 or 1; any other value raises.
int forced_flag(const char* name) {
  const char* env = std::getenv(name);
  if (env == nullptr || env[0] == '\0') return -1;
  if (std::strcmp(env, "1") == 0) return 1;
  if (std::strcmp(env, "0") == 0) return 0;
  TORCH_CHECK(false, name, " must be '0' or '1', got '", env, "'");
}

// A class of the stream choice: a shape class, the layout and the pass.
struct StreamClass {
  ShapeClass shape;
  bool channels_last, backward;
  bool operator<(const StreamClass& o) const {
    return std::tie(shape, channels_last, backward) <
           std::tie(o.shape, o.channels_last, o.backward);
  }
};

// Whether a float32/float64 kernel writes its output (y, dx) with non-temporal stores, which
// skip reading each line before writing it but leave it out of the cache: a gain where the
// tensors the kernel touches outgrow the cache anyway. Where that starts is not what the CPU
// reports: an AMD EPYC (Zen 4, 32 MiB L3) gained from 16 MiB tensors up and lost 0.7x at 4 MiB,
// while on a Xeon VM whose reported 480 MiB L3 read no faster than memory (a probe: 300 GB/s
// from 2 MiB, 52-57 GB/s from 8 MiB) a 4 MiB forward gained 1.1-1.2x and a 64 MiB one 1.6x. So
// the first call of each class (shape class, layout, pass) runs the kernel both ways, twice
// each, alternating, keeps the faster for the process, and ends with a run the chosen way. The
// values are the same either way but for the last bit of some elements of the channels-last
// backward's partial vectors (C not a multiple of the SIMD width), where the compiler forms
// fused multiply-adds differently in the two kernels. PYNOTES_GROUP_NORM_STREAM=0 or =1 fixes
// it.
ChoiceTable<StreamClass, GroupNormStreamChoice>& stream_choices() {
  static ChoiceTable<StreamClass, GroupNormStreamChoice> table;
  return table;
}

// Runs run(stream) with the output's stores chosen: forced, measured (streaming only onto
// pages that exist, see pages_exist), or ordinary for the half types, which the kernels widen
// and never stream.
template <typename Run>
void run_measured_stream(const StreamClass& key, const at::Tensor& output, const Run& run) {
  const int forced = forced_flag("PYNOTES_GROUP_NORM_STREAM");
  const c10::ScalarType dtype = key.shape.dtype;
  if (forced >= 0 || (dtype != at::kFloat && dtype != at::kDouble)) {
    run(forced == 1);
    return;
  }
  if (const auto known = stream_choices().find(key)) {
    run(known->stream && pages_exist(output.const_data_ptr(), output.nbytes()));
    return;
  }
  run(false);  // a first run, which makes the kernel's own measured choices outside the timing
  double streaming_s = 1e300, cached_s = 1e300;
  for (int round = 0; round < 2; ++round) {
    cached_s = std::min(cached_s, seconds_of([&] { run(false); }));
    streaming_s = std::min(streaming_s, seconds_of([&] { run(true); }));
  }
  const ShapeClass& c = key.shape;
  const GroupNormStreamChoice choice = stream_choices().insert(
      key, {c.dtype, c.silu, c.n, c.c, c.hxw, c.threads, key.channels_last, key.backward,
            streaming_s < cached_s, streaming_s, cached_s});
  if (!choice.stream) run(false);  // the call's outputs are the chosen kernel's, as later calls'
}

// Runs the backward kernel with args.sums_along_rows chosen, where the kernel has the choice.
void run_backward_kernel(GroupNormCpuBackwardArgs& args) {
  const auto kernel = PYNOTES_CPU_KERNEL(group_norm_backward_cpu_kernel);
  const int forced = forced_sums_along_rows();
  if (!has_walk_choice(args.channels_last, args.dtype) || forced >= 0) {
    args.sums_along_rows = forced == 1;
    kernel(args);
    return;
  }
  run_measured_walk(sums_choices(),
                    shape_class_of(args.dtype, args.silu, args.N, args.C, args.HxW),
                    [&](bool along_rows) {
                      args.sums_along_rows = along_rows;
                      kernel(args);
                    });
}

void forward_cpu(const GroupNormForward& f, double eps, bool silu) {
  GroupNormCpuForwardArgs args{
      f.x.scalar_type(), f.channels_last, silu, f.N, f.C, f.HxW, f.G, eps,
      f.x.const_data_ptr(),
      f.weight.defined() ? f.weight.const_data_ptr() : nullptr,
      f.bias.defined() ? f.bias.const_data_ptr() : nullptr,
      f.y.mutable_data_ptr(), f.mean.mutable_data_ptr(), f.rstd.mutable_data_ptr()};
  // How the channels-last forward walks its rows (GroupNormCpuForwardArgs::by_columns):
  // forced, measured (float32/float64), or by the kernel's rule (Half/BFloat16).
  const auto kernel = PYNOTES_CPU_KERNEL(group_norm_forward_cpu_kernel);
  const int forced_walk = forced_flag("PYNOTES_GROUP_NORM_COLUMNS");
  const ShapeClass shape = shape_class_of(args.dtype, args.silu, args.N, args.C, args.HxW);
  run_measured_stream({shape, args.channels_last, false}, f.y, [&](bool stream) {
    args.stream_output = stream;
    args.by_columns = forced_walk;
    if (forced_walk >= 0 || !has_walk_choice(args.channels_last, args.dtype)) {
      kernel(args);
    } else {
      run_measured_walk(forward_walk_choices(), shape, [&](bool along_rows) {
        args.by_columns = along_rows ? 0 : 1;
        kernel(args);
      });
    }
  });
}

void backward_cpu(const GroupNormBackward& b, bool silu) {
  GroupNormCpuBackwardArgs args{
      b.x.scalar_type(), b.channels_last, silu, b.N, b.C, b.HxW, b.G,
      b.dy.const_data_ptr(), b.x.const_data_ptr(), b.mean.const_data_ptr(),
      b.rstd.const_data_ptr(),
      b.weight.defined() ? b.weight.const_data_ptr() : nullptr,
      b.bias.defined() ? b.bias.const_data_ptr() : nullptr,
      b.dx.mutable_data_ptr(), b.dweight.mutable_data_ptr(), b.dbias.mutable_data_ptr()};
  run_measured_stream(
      {shape_class_of(args.dtype, args.silu, args.N, args.C, args.HxW), args.channels_last, true},
      b.dx, [&](bool stream) {
        args.stream_output = stream;
        run_backward_kernel(args);
      });
}

const GroupNormKernels& cpu_kernels() {
  static const GroupNormKernels kernels{&forward_cpu, &backward_cpu};
  return kernels;
}

}  // namespace

std::vector<GroupNormWalkChoice> group_norm_sums_choices() { return sums_choices().all(); }

std::vector<GroupNormWalkChoice> group_norm_forward_walk_choices() {
  return forward_walk_choices().all();
}

// Sampled at a quarter, half, three quarters and the end of the block (glibc writes a fresh
// mapping's header on its first page). A fresh page faults in at the first write, where the
// kernel zeroes it through the cache; streaming stores then write each line twice, the zeros
// flushed and then the values. Under glibc's defaults, where every block above its mmap
// threshold (<= 32 MiB) is mapped fresh, a 1 x 512 x 128^2 float32 forward on a Xeon took
// 12.5-13.1 ms streamed, 8.3 ms cached (torch 8.1-8.4 ms), although streaming won on the pages
// the measurement had faulted in.
bool pages_exist(const void* data, int64_t bytes) {
#if defined(__linux__)
  if (bytes <= 0) return true;
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  for (const int64_t offset : {bytes / 4, bytes / 2, bytes / 4 * 3, bytes - 1}) {
    unsigned char resident = 0;
    void* start = reinterpret_cast<void*>((begin + static_cast<uintptr_t>(offset)) & ~(page - 1));
    if (mincore(start, 1, &resident) == 0 && !(resident & 1)) return false;
  }
#endif
  return true;
}

std::vector<GroupNormStreamChoice> group_norm_stream_choices() { return stream_choices().all(); }

TORCH_LIBRARY_IMPL(pynotes, CPU, m) { register_group_norm_ops<cpu_kernels>(m); }

}  // namespace pynotes
