// Cross-entropy C++ CPU implementation (arguments already checked by cross_entropy.cpp).
// loss (N) and stats (N, 2) = (row max, sum(exp(logit - max))) are float32, or float64 for
// float64 logits.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace trainer_kernels {

std::tuple<at::Tensor, at::Tensor> cross_entropy_fwd_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                                         int64_t ignore_index, double z_loss);

at::Tensor cross_entropy_bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& targets,
                                 const at::Tensor& stats, int64_t ignore_index, double z_loss);

// Per-row loss into `loss` and the logits overwritten by their gradient times grad_scale[0].
void cross_entropy_fwd_grad_inplace_cpu(at::Tensor& logits, const at::Tensor& targets, at::Tensor& loss,
                                        const at::Tensor& grad_scale, int64_t ignore_index, double z_loss);

}  // namespace trainer_kernels
