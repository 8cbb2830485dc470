// SwiGLU on the CPU: flat elementwise loops in parallel, math in float (double for float64).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>

#include <cmath>

#include "swiglu.h"

namespace trainer_kernels {

at::Tensor swiglu_fwd_cpu(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "swiglu_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(0, a.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t x = pa[i];
        po[i] = static_cast<scalar_t>(x / (acc_t(1) + std::exp(-x)) * static_cast<acc_t>(pb[i]));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> swiglu_bwd_cpu(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b) {
  at::Tensor ga = at::empty_like(a), gb = at::empty_like(b);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "swiglu_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pg = grad.data_ptr<scalar_t>();
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    scalar_t* pga = ga.data_ptr<scalar_t>();
    scalar_t* pgb = gb.data_ptr<scalar_t>();
    at::parallel_for(0, a.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t g = pg[i], x = pa[i], y = pb[i];
        const acc_t s = acc_t(1) / (acc_t(1) + std::exp(-x));
        pga[i] = static_cast<scalar_t>(g * y * s * (acc_t(1) + x * (acc_t(1) - s)));
        pgb[i] = static_cast<scalar_t>(g * x * s);
      }
    });
  });
  return {ga, gb};
}

}  // namespace trainer_kernels
