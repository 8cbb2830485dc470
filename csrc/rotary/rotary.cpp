// Rotary embedding binding: trainer_kernels::rotary(q, k, cos, sin, inverse) -> (q_rot, k_rot).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>

#include "../common/checks.h"
#include "rotary.h"

#ifdef TRAINER_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "rotary_cuda.h"
#endif

namespace trainer_kernels {
namespace {

constexpr const char* kOp = "trainer_kernels::rotary";

void check_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin) {
  check_float(q, kOp, "q");
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4, kOp, ": q and k must be (B, heads, T, head_dim), got ",
                    q.sizes(), " and ", k.sizes());
  check_same_dtype(q, k, kOp, "q", "k");
  check_same_device(q, k, kOp, "q", "k");
  TORCH_CHECK_VALUE(q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(3) == k.size(3), kOp,
                    ": q and k must agree on batch, sequence and head_dim, got ", q.sizes(), " and ", k.sizes());
  TORCH_CHECK_VALUE(q.size(3) % 2 == 0, kOp, ": head_dim must be even, got ", q.size(3));
  TORCH_CHECK_VALUE(q.stride(3) == 1 && k.stride(3) == 1, kOp,
                    ": q and k need a contiguous last dim (stride 1), got strides ", q.strides(), " and ",
                    k.strides());
  const int64_t T = q.size(2), half = q.size(3) / 2;
  for (const auto* t : {&cos, &sin}) {
    const char* name = t == &cos ? "cos" : "sin";
    check_dtype(*t, at::kFloat, kOp, name);
    check_contiguous(*t, kOp, name);
    check_same_device(*t, q, kOp, name, "q");
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == T && t->size(1) == half, kOp, ": ", name, " must be (T=", T,
                      ", head_dim/2=", half, "), got ", t->sizes());
  }
  const int64_t rows = q.size(0) * (q.size(1) + k.size(1)) * T;
  TORCH_CHECK_VALUE(rows < std::numeric_limits<int32_t>::max(), kOp, ": too many rows (", rows, ")");
}

std::tuple<at::Tensor, at::Tensor> rotary_cpu_entry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                                    const at::Tensor& sin, bool inverse) {
  check_args(q, k, cos, sin);
  return rotary_cpu(q, k, cos, sin, inverse);
}

#ifdef TRAINER_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> rotary_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                               const at::Tensor& sin, bool inverse) {
  check_args(q, k, cos, sin);
  const DType dt = cuda_dtype(q, kOp, "q");
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor q_out = at::empty(q.sizes(), q.options());
  at::Tensor k_out = at::empty(k.sizes(), k.options());
  const RotaryOperand qo{q.data_ptr(), q_out.data_ptr(), q.size(1), q.stride(0), q.stride(1), q.stride(2)};
  const RotaryOperand ko{k.data_ptr(), k_out.data_ptr(), k.size(1), k.stride(0), k.stride(1), k.stride(2)};
  const cudaError_t err = launch_rotary(dt, qo, ko, cos.data_ptr<float>(), sin.data_ptr<float>(), q.size(0), q.size(2),
                                        q.size(3), inverse, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kOp, ": kernel launch failed: ", cudaGetErrorString(err));
  return {q_out, k_out};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(trainer_kernels, m) {
  m.def("rotary(Tensor q, Tensor k, Tensor cos, Tensor sin, bool inverse=False) -> (Tensor q_out, Tensor k_out)");
}

TORCH_LIBRARY_IMPL(trainer_kernels, CPU, m) { m.impl("rotary", &rotary_cpu_entry); }

#ifdef TRAINER_WITH_CUDA
TORCH_LIBRARY_IMPL(trainer_kernels, CUDA, m) { m.impl("rotary", &rotary_cuda); }
#endif

}  // namespace trainer_kernels
