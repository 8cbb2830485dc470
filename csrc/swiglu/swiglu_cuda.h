// CUDA launchers for SwiGLU, silu(a) * b, over flat contiguous tensors.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/dtype.h"

namespace trainer_kernels {

cudaError_t launch_swiglu_fwd(DType dtype, const void* a, const void* b, void* out, int64_t n, cudaStream_t stream);

// grad_a = g * b * sig(a) * (1 + a * (1 - sig(a))),  grad_b = g * silu(a).
cudaError_t launch_swiglu_bwd(DType dtype, const void* grad, const void* a, const void* b, void* grad_a,
                              void* grad_b, int64_t n, cudaStream_t stream);

}  // namespace trainer_kernels
