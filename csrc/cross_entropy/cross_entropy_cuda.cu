// Cross-entropy over a large vocabulary. One block per row; a single pass computes the
// log-sum-exp with an online softmax (running max and rescaled sum, in base 2), so the
// logits are read once in the forward and once in the backward, and no fp32 copy of the
// (rows, vocab) logits or of their gradient ever exists.
// Rows need not be 16-byte aligned (vocab 50257): each row is split into a scalar head up
// to the first aligned address, 16-byte packs, and a scalar tail.
#include <cmath>

#include "../common/cuda_common.cuh"
#include "cross_entropy_cuda.h"

namespace trainer_kernels {
namespace {

constexpr int kMaxThreads = 1024;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Where a row's 16-byte packs begin and end.
struct RowSplit {
  int head;        // scalar elements before the first aligned address
  int packs;       // 16-byte packs after the head
  int tail_start;  // first scalar element after the packs
};

template <typename T, int VEC>
__device__ __forceinline__ RowSplit split_row(const T* row, int n) {
  if (VEC == 1) return {0, n, n};
  const int misalign = static_cast<int>(reinterpret_cast<uintptr_t>(row) & 15);
  const int head = min(n, ((16 - misalign) & 15) / static_cast<int>(sizeof(T)));
  const int packs = (n - head) / VEC;
  return {head, packs, head + packs * VEC};
}

// Online softmax state in base 2: the row's values u = x*log2(e) satisfy
// sum(2^u) = s * 2^m.
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.f};
  return {m, a.s * exp2f(a.m - m) + b.s * exp2f(b.m - m)};
}

__device__ __forceinline__ void absorb(MaxSum& st, float u) {
  if (u > st.m) {
    st.s = st.s * exp2f(st.m - u) + 1.f;
    st.m = u;
  } else if (u != -INFINITY) {
    st.s += exp2f(u - st.m);
  }
}

template <int VEC>
__device__ __forceinline__ void absorb_pack(MaxSum& st, const float (&u)[VEC]) {
  float pm = u[0];
#pragma unroll
  for (int j = 1; j < VEC; ++j) pm = fmaxf(pm, u[j]);
  if (pm == -INFINITY) return;
  if (pm > st.m) {
    st.s *= exp2f(st.m - pm);
    st.m = pm;
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) st.s += exp2f(u[j] - st.m);
}

// Natural-log log-sum-exp of one row, returned to every thread of the block.
template <typename T, int VEC>
__device__ float row_lse(const T* row, int n, MaxSum* scratch) {
  using PT = Pack<T, VEC>;
  const RowSplit sp = split_row<T, VEC>(row, n);
  MaxSum st{-INFINITY, 0.f};
  for (int i = threadIdx.x; i < sp.head; i += blockDim.x) absorb(st, to_float(row[i]) * kLog2e);
  const PT* packs = reinterpret_cast<const PT*>(row + sp.head);
  for (int p = threadIdx.x; p < sp.packs; p += blockDim.x) {
    const PT v = packs[p];
    float u[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) u[j] = to_float(v.v[j]) * kLog2e;
    absorb_pack<VEC>(st, u);
  }
  for (int i = sp.tail_start + threadIdx.x; i < n; i += blockDim.x) absorb(st, to_float(row[i]) * kLog2e);

  // Block reduction of (m, s): shuffles within warps, then warp 0 merges the warps.
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const MaxSum other{__shfl_xor_sync(0xffffffffu, st.m, offset), __shfl_xor_sync(0xffffffffu, st.s, offset)};
    st = merge(st, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  __syncthreads();  // scratch may still be read from the previous row
  if (lane == 0) scratch[warp] = st;
  __syncthreads();
  st = lane < n_warps ? scratch[lane] : MaxSum{-INFINITY, 0.f};
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const MaxSum other{__shfl_xor_sync(0xffffffffu, st.m, offset), __shfl_xor_sync(0xffffffffu, st.s, offset)};
    st = merge(st, other);
  }
  return (st.m + log2f(st.s)) * kLn2;
}

// grad = coef * softmax - onehot_scale * onehot(target), written over `out` (may alias `in`).
template <typename T, int VEC>
__device__ void write_grad(const T* in, T* out, int n, int64_t target, float lse, float coef, float onehot_scale) {
  using PT = Pack<T, VEC>;
  const RowSplit sp = split_row<T, VEC>(in, n);
  const float lse2 = lse * kLog2e;
  for (int i = threadIdx.x; i < sp.head; i += blockDim.x) {
    const float p = exp2f(fmaf(to_float(in[i]), kLog2e, -lse2));
    out[i] = from_float<T>(coef * p - (i == target ? onehot_scale : 0.f));
  }
  const PT* src = reinterpret_cast<const PT*>(in + sp.head);
  PT* dst = reinterpret_cast<PT*>(out + sp.head);
  for (int pk = threadIdx.x; pk < sp.packs; pk += blockDim.x) {
    const PT v = src[pk];
    const int base = sp.head + pk * VEC;
    PT g;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float p = exp2f(fmaf(to_float(v.v[j]), kLog2e, -lse2));
      g.v[j] = from_float<T>(coef * p - (base + j == target ? onehot_scale : 0.f));
    }
    dst[pk] = g;
  }
  for (int i = sp.tail_start + threadIdx.x; i < n; i += blockDim.x) {
    const float p = exp2f(fmaf(to_float(in[i]), kLog2e, -lse2));
    out[i] = from_float<T>(coef * p - (i == target ? onehot_scale : 0.f));
  }
}

template <typename T, int VEC>
__device__ void write_zeros(T* out, int n) {
  using PT = Pack<T, VEC>;
  const RowSplit sp = split_row<T, VEC>(out, n);
  const T zero = from_float<T>(0.f);
  for (int i = threadIdx.x; i < sp.head; i += blockDim.x) out[i] = zero;
  PT z;
#pragma unroll
  for (int j = 0; j < VEC; ++j) z.v[j] = zero;
  PT* dst = reinterpret_cast<PT*>(out + sp.head);
  for (int pk = threadIdx.x; pk < sp.packs; pk += blockDim.x) dst[pk] = z;
  for (int i = sp.tail_start + threadIdx.x; i < n; i += blockDim.x) out[i] = zero;
}

__device__ __forceinline__ bool in_vocab(int64_t t, int n) { return t >= 0 && t < n; }

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads)
cross_entropy_fwd_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets, float* __restrict__ loss,
                         float* __restrict__ lse_out, int64_t rows, int vocab, int64_t ignore_index, float z_loss) {
  __shared__ MaxSum scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t t = targets[row];
    if (t == ignore_index) {  // block-uniform: the whole block skips the row
      if (threadIdx.x == 0) loss[row] = 0.f, lse_out[row] = 0.f;
      continue;
    }
    const T* x = logits + row * vocab;
    const float lse = row_lse<T, VEC>(x, vocab, scratch);
    if (threadIdx.x == 0) {
      loss[row] = in_vocab(t, vocab) ? lse - to_float(x[t]) + z_loss * lse * lse : NAN;
      lse_out[row] = lse;
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads)
cross_entropy_bwd_kernel(const float* __restrict__ grad_loss, const T* __restrict__ logits,
                         const int64_t* __restrict__ targets, const float* __restrict__ lse,
                         T* __restrict__ grad_logits, int64_t rows, int vocab, int64_t ignore_index, float z_loss) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t t = targets[row];
    T* g = grad_logits + row * vocab;
    if (t == ignore_index) {
      write_zeros<T, VEC>(g, vocab);
      continue;
    }
    const float scale = grad_loss[row], l = lse[row];
    write_grad<T, VEC>(logits + row * vocab, g, vocab, t, l, scale * (1.f + 2.f * z_loss * l), scale);
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads)
cross_entropy_fwd_grad_inplace_kernel(T* logits, const int64_t* __restrict__ targets, float* __restrict__ loss,
                                      const float* __restrict__ grad_scale, int64_t rows, int vocab,
                                      int64_t ignore_index, float z_loss) {
  __shared__ MaxSum scratch[32];
  const float scale = *grad_scale;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t t = targets[row];
    T* x = logits + row * vocab;
    if (t == ignore_index) {
      if (threadIdx.x == 0) loss[row] = 0.f;
      write_zeros<T, VEC>(x, vocab);
      continue;
    }
    // Read the target logit before any thread overwrites the row (row_lse synchronises).
    const float x_t = in_vocab(t, vocab) ? to_float(x[t]) : NAN;
    const float lse = row_lse<T, VEC>(x, vocab, scratch);
    if (threadIdx.x == 0) loss[row] = lse - x_t + z_loss * lse * lse;
    write_grad<T, VEC>(x, x, vocab, t, lse, scale * (1.f + 2.f * z_loss * lse), scale);
    __syncthreads();  // the next row's head/tail reads must not race this row's writes
  }
}

int threads_for(int64_t vocab, int vec) {
  const int64_t packs = (vocab + vec - 1) / vec;
  // About four packs per thread keeps enough loads in flight without idle threads on small vocabularies.
  return static_cast<int>(std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, round_up(static_cast<int>((packs + 3) / 4), 32))));
}

int64_t blocks_for(int64_t rows) { return std::max<int64_t>(1, std::min<int64_t>(rows, 1 << 30)); }

}  // namespace

cudaError_t launch_cross_entropy_fwd(DType dtype, const void* logits, const int64_t* targets, float* loss,
                                     float* lse, int64_t rows, int64_t vocab, int64_t ignore_index, float z_loss,
                                     cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = vec_width<T>();
    cross_entropy_fwd_kernel<T, V><<<static_cast<unsigned>(blocks_for(rows)), threads_for(vocab, V), 0, stream>>>(
        static_cast<const T*>(logits), targets, loss, lse, rows, static_cast<int>(vocab), ignore_index, z_loss);
  });
  return cudaGetLastError();
}

cudaError_t launch_cross_entropy_bwd(DType dtype, const float* grad_loss, const void* logits, const int64_t* targets,
                                     const float* lse, void* grad_logits, int64_t rows, int64_t vocab,
                                     int64_t ignore_index, float z_loss, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  // Packs need the input and output rows to share their offset from a 16-byte boundary.
  const bool same_phase = ((reinterpret_cast<uintptr_t>(logits) ^ reinterpret_cast<uintptr_t>(grad_logits)) & 15) == 0;
  dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = vec_width<T>();
    const auto* in = static_cast<const T*>(logits);
    auto* out = static_cast<T*>(grad_logits);
    const unsigned blocks = static_cast<unsigned>(blocks_for(rows));
    if (same_phase) {
      cross_entropy_bwd_kernel<T, V><<<blocks, threads_for(vocab, V), 0, stream>>>(
          grad_loss, in, targets, lse, out, rows, static_cast<int>(vocab), ignore_index, z_loss);
    } else {
      cross_entropy_bwd_kernel<T, 1><<<blocks, threads_for(vocab, 1), 0, stream>>>(
          grad_loss, in, targets, lse, out, rows, static_cast<int>(vocab), ignore_index, z_loss);
    }
  });
  return cudaGetLastError();
}

cudaError_t launch_cross_entropy_fwd_grad_inplace(DType dtype, void* logits, const int64_t* targets, float* loss,
                                                  const float* grad_scale, int64_t rows, int64_t vocab,
                                                  int64_t ignore_index, float z_loss, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = vec_width<T>();
    cross_entropy_fwd_grad_inplace_kernel<T, V><<<static_cast<unsigned>(blocks_for(rows)), threads_for(vocab, V), 0,
                                                  stream>>>(static_cast<T*>(logits), targets, loss, grad_scale, rows,
                                                            static_cast<int>(vocab), ignore_index, z_loss);
  });
  return cudaGetLastError();
}

}  // namespace trainer_kernels
