// Rotary embedding (rotate-half) for q and k in a single launch: one thread per pack of
// VEC pairs (x1[i..i+VEC), x2[i..i+VEC)), 16-byte loads when every stride allows it.
#include "../common/cuda_common.cuh"
#include "rotary_cuda.h"

namespace trainer_kernels {
namespace {

constexpr int kThreads = 256;

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
rotary_kernel(RotaryOperand q, RotaryOperand k, const float* __restrict__ cos, const float* __restrict__ sin,
              unsigned batch, unsigned seq_len, unsigned half, float sign) {
  using PT = Pack<T, VEC>;
  using PF = Pack<float, VEC>;
  const unsigned packs = half / VEC;
  const unsigned q_rows = batch * static_cast<unsigned>(q.heads) * seq_len;
  const unsigned rows = q_rows + batch * static_cast<unsigned>(k.heads) * seq_len;
  const uint64_t total = static_cast<uint64_t>(rows) * packs;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    unsigned row = static_cast<unsigned>(i / packs);
    const unsigned p = static_cast<unsigned>(i - static_cast<uint64_t>(row) * packs);
    const bool is_q = row < q_rows;
    const RotaryOperand& op = is_q ? q : k;
    if (!is_q) row -= q_rows;
    const unsigned t = row % seq_len;
    const unsigned bh = row / seq_len;
    const unsigned h = bh % static_cast<unsigned>(op.heads);
    const unsigned b = bh / static_cast<unsigned>(op.heads);
    const T* src = static_cast<const T*>(op.in) + b * op.stride_b + h * op.stride_h + t * op.stride_t;
    T* dst = static_cast<T*>(op.out) + static_cast<int64_t>(row) * 2 * half;
    const PT x1 = reinterpret_cast<const PT*>(src)[p];
    const PT x2 = reinterpret_cast<const PT*>(src + half)[p];
    const PF c = reinterpret_cast<const PF*>(cos + static_cast<int64_t>(t) * half)[p];
    const PF s = reinterpret_cast<const PF*>(sin + static_cast<int64_t>(t) * half)[p];
    PT o1, o2;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float a = to_float(x1.v[j]), bb = to_float(x2.v[j]);
      const float sj = sign * s.v[j];
      o1.v[j] = from_float<T>(a * c.v[j] - bb * sj);
      o2.v[j] = from_float<T>(bb * c.v[j] + a * sj);
    }
    reinterpret_cast<PT*>(dst)[p] = o1;
    reinterpret_cast<PT*>(dst + half)[p] = o2;
  }
}

template <typename T, int VEC>
void launch_typed(RotaryOperand q, RotaryOperand k, const float* cos, const float* sin, int64_t batch,
                  int64_t seq_len, int64_t half, float sign, cudaStream_t stream) {
  const int64_t rows = batch * (q.heads + k.heads) * seq_len;
  const int64_t work = rows * (half / VEC);
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads,
                                                                 static_cast<int64_t>(sm_count()) * 32));
  rotary_kernel<T, VEC><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      q, k, cos, sin, static_cast<unsigned>(batch), static_cast<unsigned>(seq_len), static_cast<unsigned>(half), sign);
}

bool operand_vectorizable(const RotaryOperand& op, int vec) {
  return aligned16(op.in) && aligned16(op.out) && op.stride_b % vec == 0 && op.stride_h % vec == 0 &&
         op.stride_t % vec == 0;
}

}  // namespace

cudaError_t launch_rotary(DType dtype, RotaryOperand q, RotaryOperand k, const float* cos, const float* sin,
                          int64_t batch, int64_t seq_len, int64_t head_dim, bool inverse, cudaStream_t stream) {
  const int64_t half = head_dim / 2;
  if (batch * seq_len * half == 0) return cudaSuccess;
  const float sign = inverse ? -1.f : 1.f;
  dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = vec_width<T>();
    const bool vec = half % V == 0 && aligned16(cos) && aligned16(sin) && operand_vectorizable(q, V) &&
                     operand_vectorizable(k, V);
    if (vec) {
      launch_typed<T, V>(q, k, cos, sin, batch, seq_len, half, sign, stream);
    } else {
      launch_typed<T, 1>(q, k, cos, sin, batch, seq_len, half, sign, stream);
    }
  });
  return cudaGetLastError();
}

}  // namespace trainer_kernels
