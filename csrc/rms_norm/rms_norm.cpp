// RMSNorm binding: schemas, argument checks, and the CPU / CUDA implementations behind
// trainer_kernels::rms_norm_fwd and trainer_kernels::rms_norm_bwd.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "rms_norm.h"

#ifdef TRAINER_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "rms_norm_cuda.h"
#endif

namespace trainer_kernels {
namespace {

constexpr const char* kFwd = "trainer_kernels::rms_norm_fwd";
constexpr const char* kBwd = "trainer_kernels::rms_norm_bwd";

void check_x_w(const at::Tensor& x, const at::Tensor& w, const char* op) {
  check_float(x, op, "x");
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) > 0, op, ": x must have a non-empty last dim, got shape ",
                    x.sizes());
  check_contiguous(x, op, "x");
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == x.size(-1), op, ": weight must have shape (",
                    x.size(-1), ",) to match the last dim of x, got ", w.sizes());
  check_contiguous(w, op, "weight");
  check_same_device(x, w, op, "x", "weight");
  TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type() || w.scalar_type() == at::kFloat, op,
                   ": weight must be float32 or x's dtype (", x.scalar_type(), "), got ", w.scalar_type());
}

at::ScalarType acc_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_bwd(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w, const at::Tensor& rstd) {
  check_x_w(x, w, kBwd);
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), kBwd, ": grad_y shape ", grad_y.sizes(),
                    " must equal x shape ", x.sizes());
  check_same_dtype(grad_y, x, kBwd, "grad_y", "x");
  check_contiguous(grad_y, kBwd, "grad_y");
  check_same_device(grad_y, x, kBwd, "grad_y", "x");
  TORCH_CHECK_VALUE(rstd.numel() * x.size(-1) == x.numel(), kBwd, ": rstd must hold one value per row of x, got shape ",
                    rstd.sizes());
  check_dtype(rstd, acc_type(x), kBwd, "rstd");
  check_contiguous(rstd, kBwd, "rstd");
  check_same_device(rstd, x, kBwd, "rstd", "x");
}

std::tuple<at::Tensor, at::Tensor> fwd_cpu(const at::Tensor& x, const at::Tensor& w, double eps) {
  check_x_w(x, w, kFwd);
  return rms_norm_fwd_cpu(x, w, eps);
}

std::tuple<at::Tensor, at::Tensor> bwd_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w,
                                           const at::Tensor& rstd) {
  check_bwd(grad_y, x, w, rstd);
  return rms_norm_bwd_cpu(grad_y, x, w, rstd);
}

#ifdef TRAINER_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> fwd_cuda(const at::Tensor& x, const at::Tensor& w, double eps) {
  check_x_w(x, w, kFwd);
  const DType xd = cuda_dtype(x, kFwd, "x");
  const DType wd = cuda_dtype(w, kFwd, "weight");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  at::Tensor rstd = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kFloat));
  const int64_t cols = x.size(-1);
  const cudaError_t err = launch_rms_norm_fwd(xd, wd, x.data_ptr(), w.data_ptr(), y.data_ptr(),
                                              rstd.data_ptr<float>(), x.numel() / cols, cols,
                                              static_cast<float>(eps), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kFwd, ": kernel launch failed: ", cudaGetErrorString(err));
  return {y, rstd};
}

std::tuple<at::Tensor, at::Tensor> bwd_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w,
                                            const at::Tensor& rstd) {
  check_bwd(grad_y, x, w, rstd);
  const DType xd = cuda_dtype(x, kBwd, "x");
  const DType wd = cuda_dtype(w, kBwd, "weight");
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  TORCH_CHECK_VALUE(cols <= rms_norm_bwd_max_cols(), kBwd, ": the CUDA backward supports hidden sizes up to ",
                    rms_norm_bwd_max_cols(), ", got ", cols, "; use kernels=reference for this model");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor gx = at::empty_like(x);
  const bool aligned = rms_norm_vectorizable(xd, cols, {grad_y.data_ptr(), x.data_ptr(), w.data_ptr(), gx.data_ptr()});
  const int blocks = rms_norm_bwd_blocks(rows, cols, xd, wd, aligned);
  at::Tensor partial = at::empty({blocks, cols}, x.options().dtype(at::kFloat));
  const cudaError_t err = launch_rms_norm_bwd(xd, wd, grad_y.data_ptr(), x.data_ptr(), w.data_ptr(),
                                              rstd.data_ptr<float>(), gx.data_ptr(), partial.data_ptr<float>(),
                                              rows, cols, aligned, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kBwd, ": kernel launch failed: ", cudaGetErrorString(err));
  // rows == 0 launches nothing: the partials stay unwritten, so the gradient is zero by definition.
  at::Tensor gw = rows == 0 ? at::zeros_like(w) : partial.sum(0).to(w.scalar_type());
  return {gx, gw};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(trainer_kernels, m) {
  m.def("rms_norm_fwd(Tensor x, Tensor weight, float eps) -> (Tensor y, Tensor rstd)");
  m.def("rms_norm_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor rstd) -> (Tensor grad_x, Tensor grad_weight)");
}

TORCH_LIBRARY_IMPL(trainer_kernels, CPU, m) {
  m.impl("rms_norm_fwd", &fwd_cpu);
  m.impl("rms_norm_bwd", &bwd_cpu);
}

#ifdef TRAINER_WITH_CUDA
TORCH_LIBRARY_IMPL(trainer_kernels, CUDA, m) {
  m.impl("rms_norm_fwd", &fwd_cuda);
  m.impl("rms_norm_bwd", &bwd_cuda);
}
#endif

}  // namespace trainer_kernels
