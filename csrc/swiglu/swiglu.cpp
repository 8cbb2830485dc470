// SwiGLU binding: trainer_kernels::swiglu_fwd(a, b) -> silu(a) * b and its backward.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "swiglu.h"

#ifdef TRAINER_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "swiglu_cuda.h"
#endif

namespace trainer_kernels {
namespace {

constexpr const char* kFwd = "trainer_kernels::swiglu_fwd";
constexpr const char* kBwd = "trainer_kernels::swiglu_bwd";

void check_pair(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name_b) {
  check_float(a, op, "a");
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), op, ": a ", a.sizes(), " and ", name_b, " ", b.sizes(),
                    " must have the same shape");
  check_same_dtype(a, b, op, "a", name_b);
  check_same_device(a, b, op, "a", name_b);
  check_contiguous(a, op, "a");
  check_contiguous(b, op, name_b);
}

at::Tensor fwd_cpu(const at::Tensor& a, const at::Tensor& b) {
  check_pair(a, b, kFwd, "b");
  return swiglu_fwd_cpu(a, b);
}

std::tuple<at::Tensor, at::Tensor> bwd_cpu(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b) {
  check_pair(a, b, kBwd, "b");
  check_pair(a, grad, kBwd, "grad");
  return swiglu_bwd_cpu(grad, a, b);
}

#ifdef TRAINER_WITH_CUDA
at::Tensor fwd_cuda(const at::Tensor& a, const at::Tensor& b) {
  check_pair(a, b, kFwd, "b");
  const DType dt = cuda_dtype(a, kFwd, "a");
  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty_like(a);
  const cudaError_t err =
      launch_swiglu_fwd(dt, a.data_ptr(), b.data_ptr(), out.data_ptr(), a.numel(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kFwd, ": kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

std::tuple<at::Tensor, at::Tensor> bwd_cuda(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b) {
  check_pair(a, b, kBwd, "b");
  check_pair(a, grad, kBwd, "grad");
  const DType dt = cuda_dtype(a, kBwd, "a");
  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor ga = at::empty_like(a), gb = at::empty_like(b);
  const cudaError_t err = launch_swiglu_bwd(dt, grad.data_ptr(), a.data_ptr(), b.data_ptr(), ga.data_ptr(),
                                            gb.data_ptr(), a.numel(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kBwd, ": kernel launch failed: ", cudaGetErrorString(err));
  return {ga, gb};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(trainer_kernels, m) {
  m.def("swiglu_fwd(Tensor a, Tensor b) -> Tensor");
  m.def("swiglu_bwd(Tensor grad, Tensor a, Tensor b) -> (Tensor grad_a, Tensor grad_b)");
}

TORCH_LIBRARY_IMPL(trainer_kernels, CPU, m) {
  m.impl("swiglu_fwd", &fwd_cpu);
  m.impl("swiglu_bwd", &bwd_cpu);
}

#ifdef TRAINER_WITH_CUDA
TORCH_LIBRARY_IMPL(trainer_kernels, CUDA, m) {
  m.impl("swiglu_fwd", &fwd_cuda);
  m.impl("swiglu_bwd", &bwd_cuda);
}
#endif

}  // namespace trainer_kernels
