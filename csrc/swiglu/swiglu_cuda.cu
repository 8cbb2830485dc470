// SwiGLU forward and backward: elementwise, 16-byte packs with a scalar tail, fp32 math.
#include "../common/cuda_common.cuh"
#include "swiglu_cuda.h"

namespace trainer_kernels {
namespace {

constexpr int kThreads = 256;

// 1 / (1 + exp(-x)) without an IEEE division (its slow-path subroutine call spills registers):
// the fast reciprocal plus one Newton step is as accurate. -x is capped at 88 so the
// denominator stays finite; past that __fdividef returns 0, the right limit.
__device__ __forceinline__ float sigmoid(float x) {
  const float d = 1.f + expf(fminf(-x, 88.f));
  const float r = __fdividef(1.f, d);
  return fmaf(r, fmaf(-d, r, 1.f), r);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
swiglu_fwd_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, int64_t n) {
  using PT = Pack<T, VEC>;
  const int64_t packs = n / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t p = tid; p < packs; p += stride) {
    const PT av = reinterpret_cast<const PT*>(a)[p], bv = reinterpret_cast<const PT*>(b)[p];
    PT o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float x = to_float(av.v[j]);
      o.v[j] = from_float<T>(x * sigmoid(x) * to_float(bv.v[j]));
    }
    reinterpret_cast<PT*>(out)[p] = o;
  }
  for (int64_t i = packs * VEC + tid; i < n; i += stride) {
    const float x = to_float(a[i]);
    out[i] = from_float<T>(x * sigmoid(x) * to_float(b[i]));
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
swiglu_bwd_kernel(const T* __restrict__ grad, const T* __restrict__ a, const T* __restrict__ b,
                  T* __restrict__ grad_a, T* __restrict__ grad_b, int64_t n) {
  using PT = Pack<T, VEC>;
  const int64_t packs = n / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t p = tid; p < packs; p += stride) {
    const PT gv = reinterpret_cast<const PT*>(grad)[p];
    const PT av = reinterpret_cast<const PT*>(a)[p], bv = reinterpret_cast<const PT*>(b)[p];
    PT ga, gb;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float g = to_float(gv.v[j]), x = to_float(av.v[j]), y = to_float(bv.v[j]);
      const float s = sigmoid(x);
      ga.v[j] = from_float<T>(g * y * s * (1.f + x * (1.f - s)));
      gb.v[j] = from_float<T>(g * x * s);
    }
    reinterpret_cast<PT*>(grad_a)[p] = ga;
    reinterpret_cast<PT*>(grad_b)[p] = gb;
  }
  for (int64_t i = packs * VEC + tid; i < n; i += stride) {
    const float g = to_float(grad[i]), x = to_float(a[i]), y = to_float(b[i]);
    const float s = sigmoid(x);
    grad_a[i] = from_float<T>(g * y * s * (1.f + x * (1.f - s)));
    grad_b[i] = from_float<T>(g * x * s);
  }
}

int64_t grid_for(int64_t work) {
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, static_cast<int64_t>(sm_count()) * 32));
}

}  // namespace

cudaError_t launch_swiglu_fwd(DType dtype, const void* a, const void* b, void* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = vec_width<T>();
    const auto *pa = static_cast<const T*>(a), *pb = static_cast<const T*>(b);
    auto* po = static_cast<T*>(out);
    if (aligned16(a) && aligned16(b) && aligned16(out)) {
      swiglu_fwd_kernel<T, V><<<static_cast<unsigned>(grid_for(n / V)), kThreads, 0, stream>>>(pa, pb, po, n);
    } else {
      swiglu_fwd_kernel<T, 1><<<static_cast<unsigned>(grid_for(n)), kThreads, 0, stream>>>(pa, pb, po, n);
    }
  });
  return cudaGetLastError();
}

cudaError_t launch_swiglu_bwd(DType dtype, const void* grad, const void* a, const void* b, void* grad_a,
                              void* grad_b, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = vec_width<T>();
    const auto *pg = static_cast<const T*>(grad), *pa = static_cast<const T*>(a), *pb = static_cast<const T*>(b);
    auto *pga = static_cast<T*>(grad_a), *pgb = static_cast<T*>(grad_b);
    if (aligned16(grad) && aligned16(a) && aligned16(b) && aligned16(grad_a) && aligned16(grad_b)) {
      swiglu_bwd_kernel<T, V><<<static_cast<unsigned>(grid_for(n / V)), kThreads, 0, stream>>>(pg, pa, pb, pga, pgb, n);
    } else {
      swiglu_bwd_kernel<T, 1><<<static_cast<unsigned>(grid_for(n)), kThreads, 0, stream>>>(pg, pa, pb, pga, pgb, n);
    }
  });
  return cudaGetLastError();
}

}  // namespace trainer_kernels
