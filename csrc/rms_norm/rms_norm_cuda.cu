// RMSNorm forward and backward. Rows of up to kResidentPacks 16-byte packs (8192 bf16 / 4096 fp32
// elements) run on the "resident" kernels: a persistent grid (as many blocks as fit on the GPU at
// once, from the occupancy calculator, so there is no partial last wave) in which each thread keeps
// its packs of the current row, of the next row (loaded while the current one is reduced, so
// memory stays busy through the block-wide sum) and of the weight in registers; every input
// element is read from memory once. Wider rows take the "wide" kernels: one block per row
// (forward) / a persistent grid that re-reads the row from cache (backward). Each backward block
// keeps its slice of the weight gradient in fp32 registers across its rows. Loads are 16-byte
// packs when the row is aligned, else scalars.
#include <map>
#include <mutex>
#include <tuple>

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

// ITEMS packs of one row per thread: pack k = threadIdx.x + i * blockDim.x for i < ITEMS.
template <typename T, int VEC, int ITEMS>
struct RowPacks {
  Pack<T, VEC> v[ITEMS];

  __device__ __forceinline__ void load(const T* row, int packs) {
    const Pack<T, VEC>* src = reinterpret_cast<const Pack<T, VEC>*>(row);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int k = threadIdx.x + i * blockDim.x;
      if (k < packs) v[i] = src[k];
    }
  }
};

// One pack per thread, so rows of up to 1024 packs; 1024-thread blocks cap registers at 64, which
// the backward's (current + next grad_y and x, weight, fp32 dw) needs at 8 bf16 per pack.
constexpr int kResidentThreads = 1024;
constexpr int kResidentItems = 1;

template <typename T, typename W, int VEC, int ITEMS>
__global__ void __launch_bounds__(kResidentThreads)
rms_norm_fwd_resident_kernel(const T* __restrict__ x, const W* __restrict__ w, T* __restrict__ y,
                             float* __restrict__ rstd, int64_t rows, int cols, float eps) {
  __shared__ float scratch[32];
  const int packs = cols / VEC;
  RowPacks<W, VEC, ITEMS> wv;
  wv.load(w, packs);
  RowPacks<T, VEC, ITEMS> cur, nxt;
  int64_t row = blockIdx.x;
  if (row < rows) cur.load(x + row * cols, packs);
  for (; row < rows; row += gridDim.x) {
    const int64_t next = row + gridDim.x;
    if (next < rows) nxt.load(x + next * cols, packs);  // in flight during this row's reduction
    float sumsq = 0.f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      if (threadIdx.x + i * blockDim.x < packs) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float f = to_float(cur.v[i].v[j]);
          sumsq += f * f;
        }
      }
    }
    sumsq = block_sum(sumsq, scratch);
    const float r = rsqrtf(sumsq / cols + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    Pack<T, VEC>* yr = reinterpret_cast<Pack<T, VEC>*>(y + row * cols);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int k = threadIdx.x + i * blockDim.x;
      if (k < packs) {
        Pack<T, VEC> out;
#pragma unroll
        for (int j = 0; j < VEC; ++j) out.v[j] = from_float<T>(to_float(cur.v[i].v[j]) * r * to_float(wv.v[i].v[j]));
        yr[k] = out;
      }
    }
    cur = nxt;
  }
}

// The backward on resident rows: grad_y and x of the next row load while this row's
// mean(g*w*x) is reduced; the weight stays in registers; dw accumulates in fp32 registers.
template <typename T, typename W, int VEC, int ITEMS>
__global__ void __launch_bounds__(kResidentThreads)
rms_norm_bwd_resident_kernel(const T* __restrict__ grad_y, const T* __restrict__ x, const W* __restrict__ w,
                             const float* __restrict__ rstd, T* __restrict__ grad_x,
                             float* __restrict__ grad_w_partial, int64_t rows, int cols) {
  __shared__ float scratch[32];
  const int packs = cols / VEC;
  float acc[ITEMS][VEC];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i)
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[i][j] = 0.f;
  RowPacks<W, VEC, ITEMS> wv;
  wv.load(w, packs);
  RowPacks<T, VEC, ITEMS> g_cur, x_cur, g_nxt, x_nxt;
  int64_t row = blockIdx.x;
  if (row < rows) {
    g_cur.load(grad_y + row * cols, packs);
    x_cur.load(x + row * cols, packs);
  }
  for (; row < rows; row += gridDim.x) {
    const int64_t next = row + gridDim.x;
    if (next < rows) {
      g_nxt.load(grad_y + next * cols, packs);
      x_nxt.load(x + next * cols, packs);
    }
    const float r = rstd[row];
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      if (threadIdx.x + i * blockDim.x < packs) {
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          dot += to_float(g_cur.v[i].v[j]) * to_float(wv.v[i].v[j]) * to_float(x_cur.v[i].v[j]);
      }
    }
    dot = block_sum(dot, scratch);
    const float c = r * r * r * dot / cols;
    Pack<T, VEC>* dxr = reinterpret_cast<Pack<T, VEC>*>(grad_x + row * cols);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int k = threadIdx.x + i * blockDim.x;
      if (k < packs) {
        Pack<T, VEC> out;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float g = to_float(g_cur.v[i].v[j]), xf = to_float(x_cur.v[i].v[j]);
          out.v[j] = from_float<T>(r * g * to_float(wv.v[i].v[j]) - xf * c);
          acc[i][j] += g * xf * r;
        }
        dxr[k] = out;
      }
    }
    g_cur = g_nxt;
    x_cur = x_nxt;
  }
  float* part = grad_w_partial + static_cast<int64_t>(blockIdx.x) * cols;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int k = threadIdx.x + i * blockDim.x;
    if (k < packs) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) part[k * VEC + j] = acc[i][j];
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

int threads_for(int64_t packs, int items, int max_threads) {
  return std::min(max_threads, std::max(32, round_up(static_cast<int>((packs + items - 1) / items), 32)));
}

// A persistent grid: as many blocks of `kernel` as are resident on the GPU at once (no partial
// last wave, whose few blocks would each walk as many rows as a full wave's), at most one per row.
template <typename K>
int64_t resident_grid(K kernel, int threads, int64_t rows) {
  // The occupancy query costs host time on every launch: remember it per (kernel, block, device).
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int>, int> cache;
  int device = 0;
  cudaGetDevice(&device);
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), threads, device);
  int per_sm = 0;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto hit = cache.find(key);
    if (hit != cache.end()) {
      per_sm = hit->second;
    } else {
      if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0) != cudaSuccess || per_sm < 1) {
        cudaGetLastError();  // clear it: the launch reports any real problem
        per_sm = 1;
      }
      cache.emplace(key, per_sm);
    }
  }
  return std::max<int64_t>(1, std::min<int64_t>(rows, static_cast<int64_t>(sm_count()) * per_sm));
}

// What a launch will run: the kernel, its block size and grid. Computed the same way for the
// binding's partial-buffer size (rms_norm_bwd_blocks) and for the launch itself.
template <typename K>
struct Plan {
  K kernel = nullptr;
  int threads = 0;
  int64_t blocks = 0;
};

template <typename T, typename W, int VEC, int ITEMS>
void plan_resident_fwd(Plan<void (*)(const T*, const W*, T*, float*, int64_t, int, float)>& plan, int64_t rows,
                       int64_t packs) {
  plan.kernel = rms_norm_fwd_resident_kernel<T, W, VEC, ITEMS>;
  plan.threads = threads_for(packs, ITEMS, kResidentThreads);
  plan.blocks = resident_grid(plan.kernel, plan.threads, rows);
}

template <typename T, typename W, int VEC>
Plan<void (*)(const T*, const W*, T*, float*, int64_t, int, float)> fwd_plan(int64_t rows, int64_t cols) {
  Plan<void (*)(const T*, const W*, T*, float*, int64_t, int, float)> plan;
  const int64_t packs = cols / VEC;
  if (packs <= static_cast<int64_t>(kResidentThreads) * kResidentItems) {
    plan_resident_fwd<T, W, VEC, kResidentItems>(plan, rows, packs);
  } else {  // wide rows: one block per row
    plan.kernel = rms_norm_fwd_kernel<T, W, VEC>;
    plan.threads = threads_for(packs, 1, kMaxThreads);
    plan.blocks = std::min<int64_t>(rows, 1 << 30);
  }
  return plan;
}

template <typename T, typename W>
using BwdKernel = void (*)(const T*, const T*, const W*, const float*, T*, float*, int64_t, int);

template <typename T, typename W, int VEC, int ITEMS>
void plan_wide_bwd(Plan<BwdKernel<T, W>>& plan, int64_t rows, int64_t packs) {
  if constexpr (ITEMS * VEC <= kMaxAccFloats) {
    plan.kernel = rms_norm_bwd_kernel<T, W, VEC, ITEMS>;
    plan.threads = threads_for(packs, ITEMS, kBwdThreads);
    plan.blocks = resident_grid(plan.kernel, plan.threads, rows);
  }
}

template <typename T, typename W, int VEC>
Plan<BwdKernel<T, W>> bwd_plan(int64_t rows, int64_t cols) {
  Plan<BwdKernel<T, W>> plan;
  const int64_t packs = cols / VEC;
  if (packs <= static_cast<int64_t>(kResidentThreads) * kResidentItems) {
    plan.kernel = rms_norm_bwd_resident_kernel<T, W, VEC, kResidentItems>;
    plan.threads = threads_for(packs, kResidentItems, kResidentThreads);
    plan.blocks = resident_grid(plan.kernel, plan.threads, rows);
    return plan;
  }
  switch (bwd_items(packs)) {
    case 1: plan_wide_bwd<T, W, VEC, 1>(plan, rows, packs); break;
    case 2: plan_wide_bwd<T, W, VEC, 2>(plan, rows, packs); break;
    case 4: plan_wide_bwd<T, W, VEC, 4>(plan, rows, packs); break;
    case 8: plan_wide_bwd<T, W, VEC, 8>(plan, rows, packs); break;
    case 16: plan_wide_bwd<T, W, VEC, 16>(plan, rows, packs); break;
    case 32: plan_wide_bwd<T, W, VEC, 32>(plan, rows, packs); break;
    default: break;  // rejected by the binding through rms_norm_bwd_max_cols
  }
  return plan;
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

// Calls f(T*, W*, std::integral_constant<int, VEC>) for the dtypes and the pack width the
// pointers allow.
template <typename F>
void dispatch_xw_vec(DType x_dtype, DType w_dtype, bool aligned, F&& f) {
  dispatch_xw(x_dtype, w_dtype, [&](auto* xt, auto* wt) {
    using T = std::remove_pointer_t<decltype(xt)>;
    if (aligned) {
      f(xt, wt, std::integral_constant<int, vec_width<T>()>{});
    } else {
      f(xt, wt, std::integral_constant<int, 1>{});
    }
  });
}

#define TRAINER_XW_VEC_TYPES                                   \
  using T = std::remove_pointer_t<decltype(xt)>;               \
  using W = std::remove_pointer_t<decltype(wt)>;               \
  constexpr int VEC = decltype(vec)::value

}  // namespace

cudaError_t launch_rms_norm_fwd(DType x_dtype, DType w_dtype, const void* x, const void* w, void* y,
                                float* rstd, int64_t rows, int64_t cols, float eps, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const bool aligned = rms_norm_vectorizable(x_dtype, cols, {x, w, y});
  dispatch_xw_vec(x_dtype, w_dtype, aligned, [&](auto* xt, auto* wt, auto vec) {
    TRAINER_XW_VEC_TYPES;
    const auto plan = fwd_plan<T, W, VEC>(rows, cols);
    plan.kernel<<<static_cast<unsigned>(plan.blocks), plan.threads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const W*>(w), static_cast<T*>(y), rstd, rows, static_cast<int>(cols), eps);
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

int rms_norm_bwd_blocks(int64_t rows, int64_t cols, DType x_dtype, DType w_dtype, bool aligned) {
  int64_t blocks = 1;
  dispatch_xw_vec(x_dtype, w_dtype, aligned, [&](auto* xt, auto* wt, auto vec) {
    TRAINER_XW_VEC_TYPES;
    blocks = bwd_plan<T, W, VEC>(rows, cols).blocks;
  });
  return static_cast<int>(std::max<int64_t>(1, blocks));
}

cudaError_t launch_rms_norm_bwd(DType x_dtype, DType w_dtype, const void* grad_y, const void* x,
                                const void* w, const float* rstd, void* grad_x, float* grad_w_partial,
                                int64_t rows, int64_t cols, bool aligned, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  dispatch_xw_vec(x_dtype, w_dtype, aligned, [&](auto* xt, auto* wt, auto vec) {
    TRAINER_XW_VEC_TYPES;
    const auto plan = bwd_plan<T, W, VEC>(rows, cols);
    if (plan.kernel == nullptr) return;  // wider than rms_norm_bwd_max_cols: the binding refused it
    plan.kernel<<<static_cast<unsigned>(plan.blocks), plan.threads, 0, stream>>>(
        static_cast<const T*>(grad_y), static_cast<const T*>(x), static_cast<const W*>(w), rstd,
        static_cast<T*>(grad_x), grad_w_partial, rows, static_cast<int>(cols));
  });
  return cudaGetLastError();
}

}  // namespace trainer_kernels
