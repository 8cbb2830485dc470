// CUDA launcher for rotary embeddings on q and k in one launch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/dtype.h"

namespace trainer_kernels {

// One of q / k: (B, heads, T, head_dim) with any strides over the first three dims and a
// contiguous last dim; the output is contiguous.
struct RotaryOperand {
  const void* in;
  void* out;
  int64_t heads;
  int64_t stride_b, stride_h, stride_t;
};

// out = cat(x1*cos - x2*sin, x2*cos + x1*sin) with cos/sin (T, head_dim/2) float32;
// inverse=true rotates by -angle (the backward).
cudaError_t launch_rotary(DType dtype, RotaryOperand q, RotaryOperand k, const float* cos, const float* sin,
                          int64_t batch, int64_t seq_len, int64_t head_dim, bool inverse, cudaStream_t stream);

}  // namespace trainer_kernels
