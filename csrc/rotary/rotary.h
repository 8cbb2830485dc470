// Rotary embedding C++ CPU implementation (arguments already checked by rotary.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace trainer_kernels {

// q (B, nh, T, hs), k (B, nkv, T, hs) with a unit-stride last dim; cos/sin (T, hs/2) float32.
// Returns contiguous rotated copies; inverse=true rotates by -angle.
std::tuple<at::Tensor, at::Tensor> rotary_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                              const at::Tensor& sin, bool inverse);

}  // namespace trainer_kernels
