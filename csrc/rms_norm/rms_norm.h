// RMSNorm C++ CPU implementation (arguments already checked by the binding in rms_norm.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace trainer_kernels {

// x (..., D) contiguous, w (D) in x's dtype or float32 -> (y like x, rstd (...) in the accumulation dtype).
std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cpu(const at::Tensor& x, const at::Tensor& w, double eps);

// -> (grad_x like x, grad_w like w); grad_w is reduced over all rows in the accumulation dtype.
std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                    const at::Tensor& w, const at::Tensor& rstd);

}  // namespace trainer_kernels
