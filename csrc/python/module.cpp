// pynotes._C: loading it registers every operator (TORCH_LIBRARY in pynotes.cpp); the module
// itself only reports how it was built. Compiled by setup.py only, not by CMakeLists.txt.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "build_info.h"

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
}
