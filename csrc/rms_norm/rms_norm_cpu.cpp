// RMSNorm on the CPU: rows in parallel, elementwise math in float (double for float64 inputs), sums in double.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <vector>

#include "rms_norm.h"

namespace trainer_kernels {
namespace {

template <typename T, typename W>
void fwd_rows(const T* x, const W* w, T* y, at::opmath_type<T>* rstd, int64_t rows, int64_t cols,
              double eps) {
  using acc_t = at::opmath_type<T>;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      double sumsq = 0;  // serial sums accumulate in double (see bwd_rows)
      for (int64_t c = 0; c < cols; ++c) sumsq += static_cast<acc_t>(xr[c]) * static_cast<acc_t>(xr[c]);
      const acc_t inv = static_cast<acc_t>(1.0 / std::sqrt(sumsq / cols + eps));
      rstd[r] = inv;
      for (int64_t c = 0; c < cols; ++c)
        yr[c] = static_cast<T>(static_cast<acc_t>(xr[c]) * inv * static_cast<acc_t>(w[c]));
    }
  });
}

// Serial sums (over a row, and the weight gradient over all rows: one row of partial sums per
// worker thread, added up after the loop) accumulate in double, so they lose nothing to
// PyTorch's pairwise reductions.
template <typename T, typename W>
void bwd_rows(const T* gy, const T* x, const W* w, const at::opmath_type<T>* rstd, T* gx, double* gw_partial,
              int64_t rows, int64_t cols) {
  using acc_t = at::opmath_type<T>;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    double* gw = gw_partial + at::get_thread_num() * cols;
    for (int64_t r = begin; r < end; ++r) {
      const T* gr = gy + r * cols;
      const T* xr = x + r * cols;
      T* dxr = gx + r * cols;
      const acc_t inv = rstd[r];
      double dot = 0;
      for (int64_t c = 0; c < cols; ++c)
        dot += static_cast<acc_t>(gr[c]) * static_cast<acc_t>(w[c]) * static_cast<acc_t>(xr[c]);
      const acc_t coef = static_cast<acc_t>(inv * inv * inv * dot / cols);
      for (int64_t c = 0; c < cols; ++c) {
        const acc_t g = gr[c], xc = xr[c];
        dxr[c] = static_cast<T>(inv * g * static_cast<acc_t>(w[c]) - xc * coef);
        gw[c] += static_cast<double>(g * xc * inv);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cpu(const at::Tensor& x, const at::Tensor& w, double eps) {
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  at::Tensor y = at::empty_like(x);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor rstd = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rms_norm_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (w.scalar_type() == x.scalar_type()) {
      fwd_rows<scalar_t, scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                   rstd.data_ptr<acc_t>(), rows, cols, eps);
    } else {
      fwd_rows<scalar_t, float>(x.data_ptr<scalar_t>(), w.data_ptr<float>(), y.data_ptr<scalar_t>(),
                                rstd.data_ptr<acc_t>(), rows, cols, eps);
    }
  });
  return {y, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                    const at::Tensor& w, const at::Tensor& rstd) {
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  at::Tensor gx = at::empty_like(x);
  at::Tensor partial = at::zeros({at::get_num_threads(), cols}, rstd.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rms_norm_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (w.scalar_type() == x.scalar_type()) {
      bwd_rows<scalar_t, scalar_t>(grad_y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                   rstd.data_ptr<acc_t>(), gx.data_ptr<scalar_t>(), partial.data_ptr<double>(),
                                   rows, cols);
    } else {
      bwd_rows<scalar_t, float>(grad_y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<float>(),
                                rstd.data_ptr<acc_t>(), gx.data_ptr<scalar_t>(), partial.data_ptr<double>(),
                                rows, cols);
    }
  });
  return {gx, partial.sum(0).to(w.scalar_type())};
}

}  // namespace trainer_kernels
