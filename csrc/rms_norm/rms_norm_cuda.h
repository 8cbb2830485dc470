// CUDA launchers for RMSNorm (raw pointers; the binding checks every argument first).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <initializer_list>

#include "../common/dtype.h"

namespace trainer_kernels {

// y = x * rstd * w and rstd = 1/sqrt(mean(x^2) + eps) per row. w is x's dtype or float32.
cudaError_t launch_rms_norm_fwd(DType x_dtype, DType w_dtype, const void* x, const void* w, void* y,
                                float* rstd, int64_t rows, int64_t cols, float eps, cudaStream_t stream);

// Largest hidden size the backward kernel keeps in registers (an error names it past that).
int64_t rms_norm_bwd_max_cols();

// Whether rows of `cols` elements at these pointers can move as 16-byte packs.
bool rms_norm_vectorizable(DType x_dtype, int64_t cols, std::initializer_list<const void*> ptrs);

// Blocks the backward launches: the binding allocates (blocks, cols) fp32 for the partial
// weight gradients, which it then sums over dim 0.
int rms_norm_bwd_blocks(int64_t rows, int64_t cols, DType x_dtype, DType w_dtype, bool aligned);

cudaError_t launch_rms_norm_bwd(DType x_dtype, DType w_dtype, const void* grad_y, const void* x,
                                const void* w, const float* rstd, void* grad_x, float* grad_w_partial,
                                int64_t rows, int64_t cols, bool aligned, cudaStream_t stream);

}  // namespace trainer_kernels
