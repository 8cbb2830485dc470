// Argument checks shared by the bindings: every failure names the op, the argument and
// what was expected, so a wrong call reads as one clear error instead of a crash.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

#include "dtype.h"

namespace trainer_kernels {

inline void check_defined(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is undefined");
}

inline void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name,
                    " must be contiguous (call .contiguous() first); got strides ", t.strides());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* name_a, const char* name_b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", name_a, " is on ", a.device(), " but ",
                    name_b, " is on ", b.device());
}

inline bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(is_float_type(t.scalar_type()), op, ": ", name,
                   " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
}

inline void check_dtype(const at::Tensor& t, at::ScalarType want, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, op, ": ", name, " must be ", want, ", got ",
                   t.scalar_type());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* op,
                             const char* name_a, const char* name_b) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), op, ": ", name_a, " (", a.scalar_type(),
                   ") and ", name_b, " (", b.scalar_type(), ") must have the same dtype");
}

// The CUDA kernels cover the training dtypes; float64 is a CPU-only (gradcheck) type.
inline DType cuda_dtype(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default:
      TORCH_CHECK_TYPE(false, op, ": the CUDA kernel supports float32, float16 and bfloat16 ",
                       name, ", got ", t.scalar_type(), " (float64 runs on the CPU path only)");
  }
  return DType::Float32;  // unreachable
}

}  // namespace trainer_kernels
