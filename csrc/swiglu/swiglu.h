// SwiGLU C++ CPU implementation (arguments already checked by swiglu.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace trainer_kernels {

at::Tensor swiglu_fwd_cpu(const at::Tensor& a, const at::Tensor& b);
std::tuple<at::Tensor, at::Tensor> swiglu_bwd_cpu(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b);

}  // namespace trainer_kernels
