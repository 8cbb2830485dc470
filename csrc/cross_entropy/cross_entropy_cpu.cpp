// Cross-entropy on the CPU: rows in parallel, max-shifted log-sum-exp in float (double for
// float64; the sum of exponentials in double), gradient written in the logits' dtype.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cmath>
#include <limits>
#include <utility>

#include "cross_entropy.h"

namespace trainer_kernels {
namespace {

// The row's max m and s = sum(exp(x - m)). They are kept apart rather than folded into
// lse = m + log(s): with logits in the thousands one fp32 lse loses the softmax's digits.
template <typename T>
std::pair<at::opmath_type<T>, at::opmath_type<T>> row_max_sum(const T* x, int64_t n) {
  using acc_t = at::opmath_type<T>;
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<acc_t>(x[i]));
  double s = 0;  // a long serial sum: double keeps it as exact as PyTorch's pairwise one
  for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<acc_t>(x[i]) - m);
  return {m, static_cast<acc_t>(s)};
}

// out[i] = coef * exp(x_i - m) - scale * [i == target]; coef includes 1/s. out may alias x.
template <typename T>
void row_grad(const T* x, T* out, int64_t n, int64_t target, at::opmath_type<T> m, at::opmath_type<T> coef,
              at::opmath_type<T> scale) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t p = std::exp(static_cast<acc_t>(x[i]) - m);
    out[i] = static_cast<T>(coef * p - (i == target ? scale : acc_t(0)));
  }
}

at::ScalarType acc_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cross_entropy_fwd_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                                         int64_t ignore_index, double z_loss) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  at::Tensor loss = at::empty({rows}, logits.options().dtype(acc_type(logits)));
  at::Tensor stats = at::empty({rows, 2}, loss.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "cross_entropy_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = logits.data_ptr<scalar_t>();
    const int64_t* t = targets.data_ptr<int64_t>();
    acc_t* pl = loss.data_ptr<acc_t>();
    acc_t* ps = stats.data_ptr<acc_t>();
    const acc_t z = static_cast<acc_t>(z_loss);
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (t[r] == ignore_index) {
          pl[r] = 0, ps[2 * r] = 0, ps[2 * r + 1] = 1;
          continue;
        }
        const auto [m, s] = row_max_sum(x + r * vocab, vocab);
        const acc_t log_s = std::log(s), lse = m + log_s;
        pl[r] = (m - static_cast<acc_t>(x[r * vocab + t[r]])) + log_s + z * lse * lse;
        ps[2 * r] = m, ps[2 * r + 1] = s;
      }
    });
  });
  return {loss, stats};
}

at::Tensor cross_entropy_bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& targets,
                                 const at::Tensor& stats, int64_t ignore_index, double z_loss) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  at::Tensor grad = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "cross_entropy_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = logits.data_ptr<scalar_t>();
    scalar_t* g = grad.data_ptr<scalar_t>();
    const int64_t* t = targets.data_ptr<int64_t>();
    const acc_t* pg = grad_loss.data_ptr<acc_t>();
    const acc_t* ps = stats.data_ptr<acc_t>();
    const acc_t z = static_cast<acc_t>(z_loss);
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* gr = g + r * vocab;
        if (t[r] == ignore_index) {
          std::fill(gr, gr + vocab, static_cast<scalar_t>(0));
          continue;
        }
        const acc_t scale = pg[r], m = ps[2 * r], s = ps[2 * r + 1];
        const acc_t lse = m + std::log(s);
        row_grad(x + r * vocab, gr, vocab, t[r], m, scale * (acc_t(1) + 2 * z * lse) / s, scale);
      }
    });
  });
  return grad;
}

void cross_entropy_fwd_grad_inplace_cpu(at::Tensor& logits, const at::Tensor& targets, at::Tensor& loss,
                                        const at::Tensor& grad_scale, int64_t ignore_index, double z_loss) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "cross_entropy_inplace_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* x = logits.data_ptr<scalar_t>();
    const int64_t* t = targets.data_ptr<int64_t>();
    acc_t* pl = loss.data_ptr<acc_t>();
    const acc_t scale = grad_scale.data_ptr<acc_t>()[0];
    const acc_t z = static_cast<acc_t>(z_loss);
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* xr = x + r * vocab;
        if (t[r] == ignore_index) {
          pl[r] = 0;
          std::fill(xr, xr + vocab, static_cast<scalar_t>(0));
          continue;
        }
        const auto [m, s] = row_max_sum(xr, vocab);
        const acc_t log_s = std::log(s), lse = m + log_s;
        pl[r] = (m - static_cast<acc_t>(xr[t[r]])) + log_s + z * lse * lse;
        row_grad(xr, xr, vocab, t[r], m, scale * (acc_t(1) + 2 * z * lse) / s, scale);
      }
    });
  });
}

}  // namespace trainer_kernels
