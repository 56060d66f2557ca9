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

// The channels-last float/double backward takes its per-channel sums of dy and dy * (x - mean)
// either along the rows (sums in memory) or down them (sums in registers). The bits are the
// same, the speed depends on the CPU (see grad_column_sums). The first backward of each shape
// class runs the whole kernel both ways, twice each, alternating, and keeps the faster for the
// process: every run writes the same outputs, so the last one is the call's result.
// PYNOTES_GROUP_NORM_SUMS=rows or =columns fixes the choice (the tests run both).
struct SumsShapeClass {
  c10::ScalarType dtype;
  bool silu;
  int64_t n, c, hxw;
  int threads;
  bool operator<(const SumsShapeClass& o) const {
    return std::tie(dtype, silu, n, c, hxw, threads) <
           std::tie(o.dtype, o.silu, o.n, o.c, o.hxw, o.threads);
  }
};

ChoiceTable<SumsShapeClass, GroupNormSumsChoice>& sums_choices() {
  static ChoiceTable<SumsShapeClass, GroupNormSumsChoice> table;
  return table;
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

// Runs the backward kernel with args.sums_along_rows chosen, where the kernel has the choice
// (Half/BFloat16 always walk along the rows, widened a block at a time).
void run_backward_kernel(GroupNormCpuBackwardArgs args) {
  const auto kernel = PYNOTES_CPU_KERNEL(group_norm_backward_cpu_kernel);
  const bool has_choice =
      args.channels_last && (args.dtype == at::kFloat || args.dtype == at::kDouble);
  const int forced = forced_sums_along_rows();
  if (!has_choice || forced >= 0) {
    args.sums_along_rows = forced == 1;
    kernel(args);
    return;
  }
  const SumsShapeClass key{args.dtype, args.silu, round_up_pow2(args.N), round_up_pow2(args.C),
                           round_up_pow2(args.HxW), at::get_num_threads()};
  if (const auto known = sums_choices().find(key)) {
    args.sums_along_rows = known->along_rows;
    kernel(args);
    return;
  }
  auto seconds = [&](bool along_rows) {
    args.sums_along_rows = along_rows;
    return seconds_of([&] { kernel(args); });
  };
  double rows_s = 1e300, columns_s = 1e300;
  for (int round = 0; round < 2; ++round) {
    columns_s = std::min(columns_s, seconds(false));
    rows_s = std::min(rows_s, seconds(true));
  }
  const GroupNormSumsChoice choice{key.dtype,   key.silu,          key.n,  key.c,    key.hxw,
                                   key.threads, rows_s < columns_s, rows_s, columns_s};
  sums_choices().insert(key, choice);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_cpu(
    const at::Tensor& input, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, bool silu) {
  GroupNormForward f = prepare_group_norm_forward(input, num_groups, weight, bias, eps);
  if (f.x.numel() > 0) {
    GroupNormCpuForwardArgs args{
        f.x.scalar_type(), f.channels_last, silu, f.N, f.C, f.HxW, f.G, eps,
        f.x.const_data_ptr(),
        f.weight.defined() ? f.weight.const_data_ptr() : nullptr,
        f.bias.defined() ? f.bias.const_data_ptr() : nullptr,
        f.y.mutable_data_ptr(), f.mean.mutable_data_ptr(), f.rstd.mutable_data_ptr()};
    args.stream_output = stream_output(f.y, 2);  // x, y
    // PYNOTES_GROUP_NORM_COLUMNS=0 or =1 fixes how the channels-last forward walks its rows
    // (GroupNormCpuForwardArgs::by_columns; the kernel decides by a rule otherwise).
    args.by_columns = forced_flag("PYNOTES_GROUP_NORM_COLUMNS");
    PYNOTES_CPU_KERNEL(group_norm_forward_cpu_kernel)(args);
  }
  return {f.y, f.mean, f.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool silu) {
  GroupNormBackward b =
      prepare_group_norm_backward(grad_output, input, mean, rstd, num_groups, weight, bias);
  if (b.x.numel() > 0) {
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
  return backward_outputs(b);
}

}  // namespace

std::vector<GroupNormSumsChoice> group_norm_sums_choices() { return sums_choices().all(); }

TORCH_LIBRARY_IMPL(pynotes, CPU, m) {
  m.impl("group_norm", &group_norm_cpu);
  m.impl("group_norm_backward", &group_norm_backward_cpu);
}

}  // namespace pynotes
