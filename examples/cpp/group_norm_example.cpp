// Calls pynotes group norm from C++ (through the dispatcher, with autograd) and checks it
// against ATen's group norm. Exit status 0 on agreement.
#include <torch/torch.h>

#include <iostream>

#include "build_info.h"
#include "ops.h"

int main() {
  torch::manual_seed(0);
  const auto info = pynotes::build_info();
  std::cout << "pynotes C++ library: CPU kernels " << info.cpu_capability << ", "
            << info.num_threads << " threads, CUDA " << (info.with_cuda ? "yes" : "no") << "\n";

  auto x = torch::randn({4, 32, 9, 7}).contiguous(at::MemoryFormat::ChannelsLast).requires_grad_();
  auto weight = torch::randn({32}).requires_grad_();
  auto bias = torch::randn({32}).requires_grad_();

  auto [y, mean, rstd] = pynotes::group_norm(x, 8, weight, bias, 1e-5, /*silu=*/true);
  y.sum().backward();

  auto x_ref = x.detach().clone().requires_grad_();
  auto w_ref = weight.detach().clone().requires_grad_();
  auto b_ref = bias.detach().clone().requires_grad_();
  auto y_ref = torch::silu(torch::group_norm(x_ref, 8, w_ref, b_ref, 1e-5));
  y_ref.sum().backward();

  const double out_err = (y - y_ref).abs().max().item<double>();
  const double grad_err = std::max({(x.grad() - x_ref.grad()).abs().max().item<double>(),
                                    (weight.grad() - w_ref.grad()).abs().max().item<double>(),
                                    (bias.grad() - b_ref.grad()).abs().max().item<double>()});
  std::cout << "max |output - ATen| = " << out_err << ", max |grad - ATen| = " << grad_err
            << ", output channels_last: " << y.is_contiguous(at::MemoryFormat::ChannelsLast)
            << "\n";
  const bool ok = out_err < 1e-4 && grad_err < 1e-3;
  std::cout << (ok ? "OK" : "MISMATCH") << std::endl;
  return ok ? 0 : 1;
}
