// Rotary embedding on the CPU: (batch, head, position) rows in parallel, math in float
// (double for float64), reading q/k through their strides so no copy is made first.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "rotary.h"

namespace trainer_kernels {
namespace {

template <typename T>
at::Tensor rotate(const at::Tensor& x, const float* cos, const float* sin, double sign) {
  using acc_t = at::opmath_type<T>;
  const int64_t B = x.size(0), H = x.size(1), S = x.size(2), D = x.size(3), half = D / 2;
  const int64_t sb = x.stride(0), sh = x.stride(1), st = x.stride(2);
  at::Tensor out = at::empty({B, H, S, D}, x.options());
  const T* in = x.data_ptr<T>();
  T* o = out.data_ptr<T>();
  at::parallel_for(0, B * H * S, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t t = row % S, h = (row / S) % H, b = row / (S * H);
      const T* src = in + b * sb + h * sh + t * st;
      T* dst = o + row * D;
      const float* c = cos + t * half;
      const float* s = sin + t * half;
      for (int64_t i = 0; i < half; ++i) {
        const acc_t x1 = src[i], x2 = src[i + half];
        const acc_t ci = c[i], si = static_cast<acc_t>(sign) * static_cast<acc_t>(s[i]);
        dst[i] = static_cast<T>(x1 * ci - x2 * si);
        dst[i + half] = static_cast<T>(x2 * ci + x1 * si);
      }
    }
  });
  return out;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rotary_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                              const at::Tensor& sin, bool inverse) {
  at::Tensor q_out, k_out;
  const double sign = inverse ? -1.0 : 1.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "rotary_cpu", [&] {
    q_out = rotate<scalar_t>(q, cos.data_ptr<float>(), sin.data_ptr<float>(), sign);
    k_out = rotate<scalar_t>(k, cos.data_ptr<float>(), sin.data_ptr<float>(), sign);
  });
  return {q_out, k_out};
}

}  // namespace trainer_kernels
