// RMSNorm forward and backward. One block per row (forward) / a persistent grid of blocks
// walking rows (backward, so each block keeps its slice of the weight gradient in
// registers across rows). Loads are 16-byte packs when the row is aligned, else scalars.
#include "../common/cuda_common.cuh"
#include "rms_norm_cuda.h"

namespace trainer_kernels {
namespace {

constexpr int kMaxThreads = 1024;
constexpr int kBwdThreads = 512;
constexpr int kMaxAccFloats = 32;  // weight-gradient accumulators per thread (ITEMS * VEC)

template <typename T, typename W, int VEC>
__global__ void __launch_bounds__(kMaxThreads)
rms_norm_fwd_kernel(const T* __restrict__ x, const W* __restrict__ w, T* __restrict__ y,
                    float* __restrict__ rstd, int64_t rows, int cols, float eps) {
  __shared__ float scratch[32];
  const int packs = cols / VEC;
  using PT = Pack<T, VEC>;
  using PW = Pack<W, VEC>;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const PT* xr = reinterpret_cast<const PT*>(x + row * cols);
    PT* yr = reinterpret_cast<PT*>(y + row * cols);
    float sumsq = 0.f;
    for (int p = threadIdx.x; p < packs; p += blockDim.x) {
      const PT xv = xr[p];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float f = to_float(xv.v[j]);
        sumsq += f * f;
      }
    }
    sumsq = block_sum(sumsq, scratch);
    const float r = rsqrtf(sumsq / cols + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    // The second read of the row hits L1/L2: the block just loaded it.
    for (int p = threadIdx.x; p < packs; p += blockDim.x) {
      const PT xv = xr[p];
      const PW wv = reinterpret_cast<const PW*>(w)[p];
      PT out;
#pragma unroll
      for (int j = 0; j < VEC; ++j) out.v[j] = from_float<T>(to_float(xv.v[j]) * r * to_float(wv.v[j]));
      yr[p] = out;
    }
  }
}

// dx = r*g*w - x * r^3 * mean(g*w*x);  dw += g*x*r (this block's rows, fp32, in registers).
template <typename T, typename W, int VEC, int ITEMS>
__global__ void __launch_bounds__(kBwdThreads)
rms_norm_bwd_kernel(const T* __restrict__ grad_y, const T* __restrict__ x, const W* __restrict__ w,
                    const float* __restrict__ rstd, T* __restrict__ grad_x,
                    float* __restrict__ grad_w_partial, int64_t rows, int cols) {
  __shared__ float scratch[32];
  const int packs = cols / VEC;
  using PT = Pack<T, VEC>;
  using PW = Pack<W, VEC>;
  float acc[ITEMS][VEC];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i)
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[i][j] = 0.f;

  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const PT* gr = reinterpret_cast<const PT*>(grad_y + row * cols);
    const PT* xr = reinterpret_cast<const PT*>(x + row * cols);
    PT* dxr = reinterpret_cast<PT*>(grad_x + row * cols);
    const float r = rstd[row];
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int p = threadIdx.x + i * blockDim.x;
      if (p < packs) {
        const PT gv = gr[p], xv = xr[p];
        const PW wv = reinterpret_cast<const PW*>(w)[p];
#pragma unroll
        for (int j = 0; j < VEC; ++j) dot += to_float(gv.v[j]) * to_float(wv.v[j]) * to_float(xv.v[j]);
      }
    }
    dot = block_sum(dot, scratch);
    const float c = r * r * r * dot / cols;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int p = threadIdx.x + i * blockDim.x;
      if (p < packs) {
        const PT gv = gr[p], xv = xr[p];
        const PW wv = reinterpret_cast<const PW*>(w)[p];
        PT out;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float g = to_float(gv.v[j]), xf = to_float(xv.v[j]);
          out.v[j] = from_float<T>(r * g * to_float(wv.v[j]) - xf * c);
          acc[i][j] += g * xf * r;
        }
        dxr[p] = out;
      }
    }
  }
  float* part = grad_w_partial + static_cast<int64_t>(blockIdx.x) * cols;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int p = threadIdx.x + i * blockDim.x;
    if (p < packs) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) part[p * VEC + j] = acc[i][j];
    }
  }
}

int vec_for(DType dtype, bool aligned) {
  if (!aligned) return 1;
  return dtype == DType::Float32 ? 4 : 8;
}

// Smallest ITEMS (packs per thread) keeping the block at <= kBwdThreads threads.
int bwd_items(int64_t packs) {
  int items = 1;
  while (packs > static_cast<int64_t>(kBwdThreads) * items) items *= 2;
  return items;
}

template <typename T, typename W, int VEC>
void fwd_typed(const void* x, const void* w, void* y, float* rstd, int64_t rows, int cols, float eps,
               cudaStream_t stream) {
  const int packs = cols / VEC;
  const int threads = std::min(kMaxThreads, std::max(32, round_up(packs, 32)));
  const int64_t blocks = std::min<int64_t>(rows, 1 << 30);
  rms_norm_fwd_kernel<T, W, VEC><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const W*>(w), static_cast<T*>(y), rstd, rows, cols, eps);
}

template <typename T, typename W, int VEC, int ITEMS>
void bwd_items_typed(const void* gy, const void* x, const void* w, const float* rstd, void* gx,
                     float* part, int64_t rows, int cols, int blocks, cudaStream_t stream) {
  if constexpr (ITEMS * VEC <= kMaxAccFloats) {
    const int packs = cols / VEC;
    const int threads = std::min(kBwdThreads, std::max(32, round_up((packs + ITEMS - 1) / ITEMS, 32)));
    rms_norm_bwd_kernel<T, W, VEC, ITEMS><<<blocks, threads, 0, stream>>>(
        static_cast<const T*>(gy), static_cast<const T*>(x), static_cast<const W*>(w), rstd,
        static_cast<T*>(gx), part, rows, cols);
  }
}

template <typename T, typename W, int VEC>
void bwd_typed(const void* gy, const void* x, const void* w, const float* rstd, void* gx, float* part,
               int64_t rows, int cols, int blocks, cudaStream_t stream) {
  switch (bwd_items(cols / VEC)) {
    case 1: bwd_items_typed<T, W, VEC, 1>(gy, x, w, rstd, gx, part, rows, cols, blocks, stream); break;
    case 2: bwd_items_typed<T, W, VEC, 2>(gy, x, w, rstd, gx, part, rows, cols, blocks, stream); break;
    case 4: bwd_items_typed<T, W, VEC, 4>(gy, x, w, rstd, gx, part, rows, cols, blocks, stream); break;
    case 8: bwd_items_typed<T, W, VEC, 8>(gy, x, w, rstd, gx, part, rows, cols, blocks, stream); break;
    case 16: bwd_items_typed<T, W, VEC, 16>(gy, x, w, rstd, gx, part, rows, cols, blocks, stream); break;
    case 32: bwd_items_typed<T, W, VEC, 32>(gy, x, w, rstd, gx, part, rows, cols, blocks, stream); break;
    default: break;  // rejected by the binding through rms_norm_bwd_max_cols
  }
}

// Calls f(T*, W*) for the (x, w) dtype pair: w is x's dtype or float32.
template <typename F>
void dispatch_xw(DType x_dtype, DType w_dtype, F&& f) {
  dispatch_dtype(x_dtype, [&](auto* xt) {
    using T = std::remove_pointer_t<decltype(xt)>;
    if (w_dtype == DType::Float32) {
      f(xt, static_cast<float*>(nullptr));
    } else {
      f(xt, static_cast<T*>(nullptr));
    }
  });
}

}  // namespace

cudaError_t launch_rms_norm_fwd(DType x_dtype, DType w_dtype, const void* x, const void* w, void* y,
                                float* rstd, int64_t rows, int64_t cols, float eps, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const bool aligned = rms_norm_vectorizable(x_dtype, cols, {x, w, y});
  dispatch_xw(x_dtype, w_dtype, [&](auto* xt, auto* wt) {
    using T = std::remove_pointer_t<decltype(xt)>;
    using W = std::remove_pointer_t<decltype(wt)>;
    constexpr int V = vec_width<T>();
    if (aligned) {
      fwd_typed<T, W, V>(x, w, y, rstd, rows, static_cast<int>(cols), eps, stream);
    } else {
      fwd_typed<T, W, 1>(x, w, y, rstd, rows, static_cast<int>(cols), eps, stream);
    }
  });
  return cudaGetLastError();
}

int64_t rms_norm_bwd_max_cols() {
  return static_cast<int64_t>(kBwdThreads) * kMaxAccFloats;  // ITEMS * VEC <= kMaxAccFloats
}

bool rms_norm_vectorizable(DType x_dtype, int64_t cols, std::initializer_list<const void*> ptrs) {
  if (cols % vec_for(x_dtype, true) != 0) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

int rms_norm_bwd_blocks(int64_t rows, int64_t cols, DType x_dtype, bool aligned) {
  const int packs = static_cast<int>(cols / vec_for(x_dtype, aligned));
  const int items = bwd_items(packs);
  const int threads = std::min(kBwdThreads, std::max(32, round_up((packs + items - 1) / items, 32)));
  const int per_sm = std::max(1, 2048 / threads);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(rows, static_cast<int64_t>(sm_count()) * per_sm)));
}

cudaError_t launch_rms_norm_bwd(DType x_dtype, DType w_dtype, const void* grad_y, const void* x,
                                const void* w, const float* rstd, void* grad_x, float* grad_w_partial,
                                int64_t rows, int64_t cols, bool aligned, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int blocks = rms_norm_bwd_blocks(rows, cols, x_dtype, aligned);
  dispatch_xw(x_dtype, w_dtype, [&](auto* xt, auto* wt) {
    using T = std::remove_pointer_t<decltype(xt)>;
    using W = std::remove_pointer_t<decltype(wt)>;
    constexpr int V = vec_width<T>();
    if (aligned) {
      bwd_typed<T, W, V>(grad_y, x, w, rstd, grad_x, grad_w_partial, rows, static_cast<int>(cols), blocks, stream);
    } else {
      bwd_typed<T, W, 1>(grad_y, x, w, rstd, grad_x, grad_w_partial, rows, static_cast<int>(cols), blocks, stream);
    }
  });
  return cudaGetLastError();
}

}  // namespace trainer_kernels
