// pynotes._C: loading it registers every operator (TORCH_LIBRARY in pynotes.cpp); the module
// itself reports how it was built and holds what cannot be an operator: the tree of one
// process of a data-parallel fit, which calls back into Python (torch.distributed) per level.
// Compiled by setup.py only, not by CMakeLists.txt.
#include <ATen/ops/from_blob.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include "build_info.h"
#include "gbdt/gbdt_ops.h"

namespace py = pybind11;

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
  m.def(
      "gbdt_grow_tree_all_reduce",
      [](const at::Tensor& bins, const at::Tensor& grad, const at::Tensor& hess,
         const std::optional<at::Tensor>& feature_mask, int64_t max_depth, int64_t num_bins,
         double reg_lambda, double gamma, double min_child_weight, int64_t quantize_bins,
         int64_t seed, const std::optional<at::Tensor>& categorical, int64_t processes,
         int64_t row_offset, const py::function& all_reduce) {
        // The kernel runs without the GIL; each reduction takes it to call all_reduce(kind,
        // buffer) on a tensor over the kernel's buffer, which it must update in place.
        const pynotes::GbdtAllReduce reduce = [&](pynotes::GbdtReduce kind, void* data,
                                                  int64_t n) {
          const bool integer = kind == pynotes::GbdtReduce::kSum;
          py::gil_scoped_acquire gil;
          all_reduce(static_cast<int64_t>(kind),
                     at::from_blob(data, {n}, at::TensorOptions().dtype(
                                                  integer ? at::kLong : at::kDouble)));
        };
        py::gil_scoped_release no_gil;
        return pynotes::gbdt_grow_tree_all_reduce_cpu(
            bins, grad, hess, feature_mask, max_depth, num_bins, reg_lambda, gamma,
            min_child_weight, quantize_bins, seed, categorical, reduce, processes, row_offset);
      },
      "gbdt_grow_tree on the CPU for one process of a data-parallel fit: all_reduce(kind, "
      "buffer) combines in place what the processes computed apart (pynotes.ops.gbdt).");
}
