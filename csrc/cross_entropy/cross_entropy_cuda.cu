// Cross-entropy over a large vocabulary. One block per row; a single pass computes the row
// max m and s = sum(exp(x - m)) with an online softmax (running max, rescaled sum), so the
// logits are read once in the forward and once in the backward, and no fp32 copy of the
// (rows, vocab) logits or of their gradient ever exists. The backward gets (m, s), not
// lse = m + log(s): with logits in the thousands a single fp32 lse would lose the digits
// that softmax = exp(x - m) / s needs.
// Rows need not be 16-byte aligned (vocab 50257): each row is split into a scalar head up
// to the first aligned address, 16-byte packs, and a scalar tail.
#include <cmath>

#include "../common/cuda_common.cuh"
#include "cross_entropy_cuda.h"

namespace trainer_kernels {
namespace {

constexpr int kMaxThreads = 1024;

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

// Online softmax state: the values seen so far satisfy sum(exp(x)) = s * exp(m).
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.f};
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ __forceinline__ void absorb(MaxSum& st, float x) {
  if (x > st.m) {
    st.s = st.s * expf(st.m - x) + 1.f;
    st.m = x;
  } else if (x != -INFINITY) {
    st.s += expf(x - st.m);
  }
}

// A pack rescales the running sum at most once (to the pack's max), then adds VEC terms.
template <int VEC>
__device__ __forceinline__ void absorb_pack(MaxSum& st, const float (&x)[VEC]) {
  float pm = x[0];
#pragma unroll
  for (int j = 1; j < VEC; ++j) pm = fmaxf(pm, x[j]);
  if (pm == -INFINITY) return;
  if (pm > st.m) {
    st.s *= expf(st.m - pm);
    st.m = pm;
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) st.s += expf(x[j] - st.m);
}

// (max, sum(exp(x - max))) of one row, returned to every thread of the block.
template <typename T, int VEC>
__device__ MaxSum row_max_sum(const T* row, int n, MaxSum* scratch) {
  using PT = Pack<T, VEC>;
  const RowSplit sp = split_row<T, VEC>(row, n);
  MaxSum st{-INFINITY, 0.f};
  for (int i = threadIdx.x; i < sp.head; i += blockDim.x) absorb(st, to_float(row[i]));
  const PT* packs = reinterpret_cast<const PT*>(row + sp.head);
  for (int p = threadIdx.x; p < sp.packs; p += blockDim.x) {
    const PT v = packs[p];
    float x[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) x[j] = to_float(v.v[j]);
    absorb_pack<VEC>(st, x);
  }
  for (int i = sp.tail_start + threadIdx.x; i < n; i += blockDim.x) absorb(st, to_float(row[i]));

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
  return st;
}

// grad = coef * softmax - onehot_scale * onehot(target), written over `out` (may alias
// `in`); softmax = exp(x - m) * inv_s. `coef` already includes inv_s.
template <typename T, int VEC>
__device__ void write_grad(const T* in, T* out, int n, int64_t target, float m, float coef, float onehot_scale) {
  using PT = Pack<T, VEC>;
  const RowSplit sp = split_row<T, VEC>(in, n);
  for (int i = threadIdx.x; i < sp.head; i += blockDim.x) {
    const float p = expf(to_float(in[i]) - m);
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
      const float p = expf(to_float(v.v[j]) - m);
      g.v[j] = from_float<T>(coef * p - (base + j == target ? onehot_scale : 0.f));
    }
    dst[pk] = g;
  }
  for (int i = sp.tail_start + threadIdx.x; i < n; i += blockDim.x) {
    const float p = expf(to_float(in[i]) - m);
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
                         float* __restrict__ stats, int64_t rows, int vocab, int64_t ignore_index, float z_loss) {
  __shared__ MaxSum scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t t = targets[row];
    if (t == ignore_index) {  // block-uniform: the whole block skips the row
      if (threadIdx.x == 0) loss[row] = 0.f, stats[2 * row] = 0.f, stats[2 * row + 1] = 1.f;
      continue;
    }
    const T* x = logits + row * vocab;
    const MaxSum st = row_max_sum<T, VEC>(x, vocab, scratch);
    if (threadIdx.x == 0) {
      const float log_s = logf(st.s), lse = st.m + log_s;
      loss[row] = in_vocab(t, vocab) ? (st.m - to_float(x[t])) + log_s + z_loss * lse * lse : NAN;
      stats[2 * row] = st.m;
      stats[2 * row + 1] = st.s;
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads)
cross_entropy_bwd_kernel(const float* __restrict__ grad_loss, const T* __restrict__ logits,
                         const int64_t* __restrict__ targets, const float* __restrict__ stats,
                         T* __restrict__ grad_logits, int64_t rows, int vocab, int64_t ignore_index, float z_loss) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t t = targets[row];
    T* g = grad_logits + row * vocab;
    if (t == ignore_index) {
      write_zeros<T, VEC>(g, vocab);
      continue;
    }
    const float scale = grad_loss[row], m = stats[2 * row], s = stats[2 * row + 1];
    const float lse = m + logf(s);
    write_grad<T, VEC>(logits + row * vocab, g, vocab, t, m, scale * (1.f + 2.f * z_loss * lse) / s, scale);
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
    // Read the target logit before any thread overwrites the row (row_max_sum synchronises).
    const float x_t = in_vocab(t, vocab) ? to_float(x[t]) : NAN;
    const MaxSum st = row_max_sum<T, VEC>(x, vocab, scratch);
    const float log_s = logf(st.s), lse = st.m + log_s;
    if (threadIdx.x == 0) loss[row] = (st.m - x_t) + log_s + z_loss * lse * lse;
    write_grad<T, VEC>(x, x, vocab, t, st.m, scale * (1.f + 2.f * z_loss * lse) / st.s, scale);
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
                                     float* stats, int64_t rows, int64_t vocab, int64_t ignore_index, float z_loss,
                                     cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = vec_width<T>();
    cross_entropy_fwd_kernel<T, V><<<static_cast<unsigned>(blocks_for(rows)), threads_for(vocab, V), 0, stream>>>(
        static_cast<const T*>(logits), targets, loss, stats, rows, static_cast<int>(vocab), ignore_index, z_loss);
  });
  return cudaGetLastError();
}

cudaError_t launch_cross_entropy_bwd(DType dtype, const float* grad_loss, const void* logits, const int64_t* targets,
                                     const float* stats, void* grad_logits, int64_t rows, int64_t vocab,
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
          grad_loss, in, targets, stats, out, rows, static_cast<int>(vocab), ignore_index, z_loss);
    } else {
      cross_entropy_bwd_kernel<T, 1><<<blocks, threads_for(vocab, 1), 0, stream>>>(
          grad_loss, in, targets, stats, out, rows, static_cast<int>(vocab), ignore_index, z_loss);
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
