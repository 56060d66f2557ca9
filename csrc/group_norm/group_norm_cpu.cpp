// CPU group norm ops: checks and allocation (group_norm_args), then the per-ISA kernel.
#include "group_norm/group_norm_cpu.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <tuple>

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

// Whether the output is written with non-temporal stores: where the tensors the kernel reads
// and writes (`tensors` of the output's size) exceed the last-level cache, so that the output's
// lines would not stay there for whoever reads them next anyway. Measured on an AMD EPYC (Zen
// 4, 32 MiB L3): forward 1.2-1.4x faster from 16 MiB tensors up, 0.7x at 4 MiB (in cache).
// PYNOTES_GROUP_NORM_STREAM=0 or =1 fixes it.
bool stream_output(const at::Tensor& out, int64_t tensors) {
  const int forced = forced_flag("PYNOTES_GROUP_NORM_STREAM");
  if (forced >= 0) return forced == 1;
  return tensors * static_cast<int64_t>(out.nbytes()) >= last_level_cache_bytes();
}

// Runs the backward kernel with args.sums_along_rows chosen, where the kernel has the choice.
void run_backward_kernel(GroupNormCpuBackwardArgs args) {
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
  args.stream_output = stream_output(f.y, 2);  // x, y
  // How the channels-last forward walks its rows (GroupNormCpuForwardArgs::by_columns):
  // forced, measured (float32/float64), or by the kernel's rule (Half/BFloat16).
  const auto kernel = PYNOTES_CPU_KERNEL(group_norm_forward_cpu_kernel);
  args.by_columns = forced_flag("PYNOTES_GROUP_NORM_COLUMNS");
  if (args.by_columns >= 0 || !has_walk_choice(args.channels_last, args.dtype)) {
    kernel(args);
  } else {
    run_measured_walk(forward_walk_choices(),
                      shape_class_of(args.dtype, args.silu, args.N, args.C, args.HxW),
                      [&](bool along_rows) {
                        args.by_columns = along_rows ? 0 : 1;
                        kernel(args);
                      });
  }
}

void backward_cpu(const GroupNormBackward& b, bool silu) {
  GroupNormCpuBackwardArgs args{
      b.x.scalar_type(), b.channels_last, silu, b.N, b.C, b.HxW, b.G,
      b.dy.const_data_ptr(), b.x.const_data_ptr(), b.mean.const_data_ptr(),
      b.rstd.const_data_ptr(),
      b.weight.defined() ? b.weight.const_data_ptr() : nullptr,
      b.bias.defined() ? b.bias.const_data_ptr() : nullptr,
      b.dx.mutable_data_ptr(), b.dweight.mutable_data_ptr(), b.dbias.mutable_data_ptr()};
  args.stream_output = stream_output(b.dx, 3);  // dy, x, dx
  run_backward_kernel(args);
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

TORCH_LIBRARY_IMPL(pynotes, CPU, m) { register_group_norm_ops<cpu_kernels>(m); }

}  // namespace pynotes
