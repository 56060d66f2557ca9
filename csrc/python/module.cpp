// pynotes._C: loading it registers every operator (TORCH_LIBRARY in pynotes.cpp); the module
// itself reports how it was built and holds what cannot be an operator: the tree of one
// process of a data-parallel fit, which calls back into Python (torch.distributed) per level,
// and the CPU block cache (pynotes.memory).
// Compiled by setup.py only, not by CMakeLists.txt.
#include <ATen/ops/from_blob.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include "build_info.h"
#include "common/cpu_cache.h"
#include "common/matmul.h"
#include "gbdt/gbdt.h"
#include "gbdt/gbdt_ops.h"
#include "group_norm/group_norm_cpu.h"
#include "lstm/lstm_ops.h"

namespace py = pybind11;

namespace {

// The fields of an LSTM shape class (lstm_ops.h: dtype, batch and hidden rounded up, threads).
template <typename Choice>
py::dict lstm_shape_class(const Choice& c) {
  py::dict d;
  d["dtype"] = std::string(c10::toString(c.dtype));
  d["shape_class"] = py::make_tuple(c.batch, c.hidden);
  d["threads"] = c.threads;
  return d;
}

// An LSTM path's measured cost in microseconds: (fixed, per step), or None.
py::object microseconds(const std::optional<pynotes::LstmPathCost>& cost) {
  if (!cost) return py::none();
  return py::make_tuple(cost->fixed_seconds * 1e6, cost->step_seconds * 1e6);
}

// An LSTM engine-or-products choice: its shape class, both costs and the shortest sequence
// that runs on the engine (None: none does).
template <typename Choice>
py::dict lstm_engine_or_products(const Choice& c) {
  py::dict d = lstm_shape_class(c);
  d["engine_us"] = microseconds(c.engine);
  d["products_us"] = microseconds(c.products);
  const int64_t from = pynotes::engine_from_steps(c);
  d["engine_from_steps"] = from < 0 ? py::object(py::none()) : py::object(py::int_(from));
  return d;
}

// The fields of a group norm shape class (group_norm_cpu.h: dtype, SiLU, N, C and HxW rounded
// up, threads).
template <typename Choice>
py::dict group_norm_shape_class(const Choice& c) {
  py::dict d;
  d["dtype"] = std::string(c10::toString(c.dtype));
  d["silu"] = c.silu;
  d["shape_class"] = py::make_tuple(c.n, c.c, c.hxw);
  d["threads"] = c.threads;
  return d;
}

// A list of group norm walk choices (group_norm_cpu.h) as dicts.
py::list walk_choices(const std::vector<pynotes::GroupNormWalkChoice>& choices) {
  py::list out;
  for (const pynotes::GroupNormWalkChoice& c : choices) {
    py::dict d = group_norm_shape_class(c);
    d["walk"] = c.along_rows ? "rows" : "columns";
    d["rows_us"] = c.along_rows_seconds * 1e6;
    d["columns_us"] = c.down_columns_seconds * 1e6;
    out.append(d);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pynotes C++/CUDA kernels";
  m.def("build_info", [] {
    const pynotes::BuildInfo info = pynotes::build_info();
    pybind11::dict d;
    d["with_cuda"] = info.with_cuda;
    d["cuda_version"] = info.cuda_version.empty() ? pybind11::object(pybind11::none())
                                                   : pybind11::object(pybind11::str(info.cuda_version));
    d["cuda_archs"] = info.cuda_archs;
    d["cpu_capability"] = info.cpu_capability;
    d["num_threads"] = info.num_threads;
    return d;
  }, "How this extension was built and what it runs with.");
  m.def("matmul_choices", [] {
    py::list out;
    for (const pynotes::MatmulChoice& c : pynotes::matmul_choices()) {
      py::dict d;
      d["shape_class"] = py::make_tuple(c.m, c.n, c.k);
      d["layouts"] = std::string(c.a_row_major ? "row" : "col") + "," +
                     (c.b_row_major ? "row" : "col");
      d["threads"] = c.threads;
      d["backend"] = c.onednn ? "onednn" : "aten";
      d["onednn_us"] = c.onednn_seconds * 1e6;
      d["aten_us"] = c.aten_seconds * 1e6;
      out.append(d);
    }
    return out;
  }, "The float32 CPU matrix-product backends chosen so far, by measurement (matmul.cpp).");
  m.def("packed_matmul_choices", [] {
    py::list out;
    for (const pynotes::PackedMatmulChoice& c : pynotes::packed_matmul_choices()) {
      py::dict d;
      using Backend = pynotes::RepeatedMatmul::Backend;
      d["shape_class"] = py::make_tuple(c.m, c.n, c.k);
      d["dtype"] = std::string(c10::toString(c.dtype));
      d["threads"] = c.threads;
      d["backend"] = c.backend == Backend::mkl      ? "mkl"
                     : c.backend == Backend::onednn ? "onednn"
                                                    : "unpacked";
      auto us = [](double s) {  // < 0: the backend cannot run here
        return s < 0 ? py::object(py::none()) : py::object(py::float_(s * 1e6));
      };
      d["unpacked_us"] = us(c.unpacked_seconds);
      d["mkl_us"] = us(c.mkl_seconds);
      d["onednn_us"] = us(c.onednn_seconds);
      out.append(d);
    }
    return out;
  }, "How repeated products with one weight run (packed for MKL or oneDNN, or not), per "
     "shape class, chosen so far by measurement (matmul.cpp).");
  m.def("mkl_packed_gemm_available", &pynotes::mkl_packed_gemm_available,
        "Whether torch's MKL exports a packed float32 GEMM that works (matmul.cpp).");
  m.def("onednn_packed_linear_available", &pynotes::onednn_packed_linear_available,
        "Whether torch's oneDNN packed linear runs in this dtype on this CPU (matmul.cpp).");
  m.def("onednn_runs_float32", &pynotes::onednn_runs_float32,
        "Whether torch's oneDNN matmul runs float32 on this CPU (else products use at::mm).");
  m.def("lstm_engine_choices", [] {
    py::list out;
    for (const pynotes::LstmEngineChoice& c : pynotes::lstm_engine_choices()) {
      py::dict d = lstm_engine_or_products(c);
      d["train"] = c.train;
      // None: the engine does not project itself here
      d["engine_after_matmul_us"] = microseconds(c.engine_after_matmul);
      d["engine_input_per_step_us"] = microseconds(c.engine_input_per_step);
      d["engine_w_hh_rows_us"] = microseconds(c.engine_w_hh_rows);  // (batch 1, float32)
      out.append(d);
    }
    return out;
  }, "The LSTM layer paths (recurrent engine or per-step products) chosen so far, by "
     "measurement (lstm_ops.cpp).");
  m.def("lstm_backward_choices", [] {
    py::list out;
    for (const pynotes::LstmBackwardChoice& c : pynotes::lstm_backward_choices()) {
      out.append(lstm_engine_or_products(c));
    }
    return out;
  }, "The LSTM layer's backward paths (recurrent engine or per-step products) chosen so far, "
     "by measurement (lstm_ops.cpp).");
  m.def("lstm_onednn_rnn_costs", [] {
    py::list out;
    for (const pynotes::LstmOnednnRnnCost& c : pynotes::lstm_onednn_rnn_costs()) {
      py::dict d = lstm_shape_class(c);
      d["rnn_us"] = c.rnn ? py::object(py::make_tuple(c.rnn->fixed_seconds * 1e6,
                                                        c.rnn->step_seconds * 1e6))
                          : py::object(py::none());  // None: oneDNN could not run it
      out.append(d);
    }
    return out;
  }, "The inference cost of torch's oneDNN RNN layer per LSTM shape class, measured so far "
     "(lstm_ops.cpp); compared with lstm_engine_choices.");
  m.def("lstm_cell_choices", [] {
    py::list out;
    for (const pynotes::LstmCellChoice& c : pynotes::lstm_cell_choices()) {
      py::dict d;
      d["dtype"] = std::string(c10::toString(c.dtype));
      d["shape_class"] = py::make_tuple(c.batch, c.input, c.hidden);
      d["threads"] = c.threads;
      d["fused_us"] = c.fused_seconds * 1e6;
      d["products_us"] = c.products_seconds * 1e6;
      d["form"] = c.fused() ? "fused" : "products";
      out.append(d);
    }
    return out;
  }, "How the LSTM cell ran per shape class, chosen so far by measurement (lstm_ops.cpp): one "
     "fused kernel or two products and the step kernel.");
  m.def("group_norm_sums_choices", [] { return walk_choices(pynotes::group_norm_sums_choices()); },
        "How the channels-last group norm backward takes its per-channel sums, chosen so far "
        "by measurement (group_norm_cpu.cpp).");
  m.def("group_norm_forward_walks", [] {
    return walk_choices(pynotes::group_norm_forward_walk_choices());
  }, "How the channels-last group norm forward walks its rows, chosen so far by measurement "
     "(group_norm_cpu.cpp).");
  m.def("pages_exist", [](const at::Tensor& t) {
    TORCH_CHECK(t.device().is_cpu(), "pages_exist: expected a CPU tensor, got ", t.device());
    return pynotes::pages_exist(t.const_data_ptr(), static_cast<int64_t>(t.nbytes()));
  }, "Whether a CPU tensor's pages are in memory already, not a fresh mapping (sampled); group "
     "norm streams its output only onto such pages (group_norm_cpu.cpp).");
  m.def("group_norm_stream_choices", [] {
    py::list out;
    for (const pynotes::GroupNormStreamChoice& c : pynotes::group_norm_stream_choices()) {
      py::dict d = group_norm_shape_class(c);
      d["layout"] = c.channels_last ? "channels_last" : "contiguous";
      d["pass"] = c.backward ? "backward" : "forward";
      d["stream"] = c.stream;
      d["streaming_us"] = c.streaming_seconds * 1e6;
      d["cached_us"] = c.cached_seconds * 1e6;
      out.append(d);
    }
    return out;
  }, "Whether the group norm kernels write their output with non-temporal stores, chosen so "
     "far by measurement (group_norm_cpu.cpp).");
  m.def("cpu_cache_enable", &pynotes::cpu_cache::enable, py::arg("limit_bytes"),
        py::arg("min_block_bytes"));
  m.def("cpu_cache_disable", &pynotes::cpu_cache::disable);
  m.def("cpu_cache_empty", &pynotes::cpu_cache::empty);
  m.def("cpu_cache_stats", [] {
    const pynotes::cpu_cache::Stats s = pynotes::cpu_cache::stats();
    py::dict d;
    d["enabled"] = s.enabled;
    d["limit_bytes"] = s.limit_bytes;
    d["min_block_bytes"] = s.min_block_bytes;
    d["cached_bytes"] = s.cached_bytes;
    d["cached_blocks"] = s.cached_blocks;
    d["live_blocks"] = s.live_blocks;
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    return d;
  });
  m.def(
      "gbdt_grow_tree_distributed",
      [](const at::Tensor& bins, const at::Tensor& grad, const at::Tensor& hess,
         const std::optional<at::Tensor>& feature_mask, int64_t max_depth, int64_t num_bins,
         double reg_lambda, double gamma, double min_child_weight, int64_t quantize_bins,
         int64_t seed, const std::optional<at::Tensor>& categorical, int64_t processes,
         int64_t rank, int64_t row_offset, const py::function& collective) {
        // The kernel runs without the GIL; each collective takes it to call collective(op,
        // buffer) on a tensor over the kernel's buffer, which it must update in place.
        const pynotes::GbdtCollective call = [&](pynotes::GbdtCollectiveOp op, void* data,
                                                 int64_t n) {
          const bool integer = op != pynotes::GbdtCollectiveOp::kMax;
          py::gil_scoped_acquire gil;
          collective(static_cast<int64_t>(op),
                     at::from_blob(data, {n}, at::TensorOptions().dtype(
                                                  integer ? at::kLong : at::kDouble)));
        };
        py::gil_scoped_release no_gil;
        return pynotes::gbdt_grow_tree_distributed_cpu(
            bins, grad, hess, feature_mask, max_depth, num_bins, reg_lambda, gamma,
            min_child_weight, quantize_bins, seed, categorical, call, processes, rank,
            row_offset);
      },
      "gbdt_grow_tree on the CPU for process `rank` of a data-parallel fit: collective(op, "
      "buffer) combines in place what the processes computed apart (pynotes.ops.gbdt).");
  m.def("gbdt_boost_step", &pynotes::gbdt_boost_step_cpu, py::arg("margin"), py::arg("value"),
        py::arg("leaf"), py::arg("y"), py::arg("weight"), py::arg("grad"), py::arg("hess"),
        py::arg("loss"), py::call_guard<py::gil_scoped_release>(),
        "The GBDT trainer's pass over the rows between trees on the CPU: margin += "
        "value[leaf] (a tree's), then the loss's gradient and hessian into grad and hess "
        "(pynotes.gbdt.objectives).");
  m.def("gbdt_release_grower_buffers", &pynotes::gbdt_release_grower_buffers_cpu,
        "Frees the buffers gbdt_grow_tree keeps on the calling thread between trees.");
  m.def("gbdt_fixed_point_scale", &pynotes::gbdt::fixed_point_scale,
        "The scale of a data-parallel fit's fixed-point sums (csrc/gbdt/gbdt.h; tested against "
        "pynotes.reference.gbdt.fixed_point_scale).");
}
