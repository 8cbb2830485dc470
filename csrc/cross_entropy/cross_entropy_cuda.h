// CUDA launchers for cross-entropy over (rows, vocab) logits with int64 targets.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/dtype.h"

namespace trainer_kernels {

// Per row: loss = lse - logit[target] + z_loss * lse^2 (0 for ignored rows, NaN for a
// target outside [0, vocab)), and stats (rows, 2) = (max, sum(exp(logit - max))), the
// softmax statistics the backward needs ((0, 1) for ignored rows).
cudaError_t launch_cross_entropy_fwd(DType dtype, const void* logits, const int64_t* targets, float* loss,
                                     float* stats, int64_t rows, int64_t vocab, int64_t ignore_index, float z_loss,
                                     cudaStream_t stream);

// grad = grad_loss[row] * (softmax * (1 + 2 z lse) - onehot(target)), zero for ignored rows,
// written in the logits' dtype.
cudaError_t launch_cross_entropy_bwd(DType dtype, const float* grad_loss, const void* logits, const int64_t* targets,
                                     const float* stats, void* grad_logits, int64_t rows, int64_t vocab,
                                     int64_t ignore_index, float z_loss, cudaStream_t stream);

// Forward and backward in one pass over a chunk, overwriting the logits with their
// gradient times *grad_scale (a device scalar, so no host sync). Used by the fused
// linear cross-entropy, whose chunk logits are a scratch buffer.
cudaError_t launch_cross_entropy_fwd_grad_inplace(DType dtype, void* logits, const int64_t* targets, float* loss,
                                                  const float* grad_scale, int64_t rows, int64_t vocab,
                                                  int64_t ignore_index, float z_loss, cudaStream_t stream);

}  // namespace trainer_kernels
