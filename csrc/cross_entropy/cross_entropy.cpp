// Cross-entropy bindings:
//   trainer_kernels::cross_entropy_fwd / cross_entropy_bwd over (N, V) logits, and
//   trainer_kernels::fused_linear_cross_entropy_fwd, which takes hidden (N, D) and the output
//   weight (V, D) and walks the tokens in chunks so that only one chunk of logits exists at a
//   time. It computes the loss and both gradients in the forward (as Liger-Kernel does): the
//   chunk logits are overwritten by their gradient and immediately folded into grad_hidden and
//   grad_weight, so the backward only scales them by the incoming gradient.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <atomic>
#include <limits>

#include "../common/checks.h"
#include "cross_entropy.h"

#ifdef TRAINER_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cross_entropy_cuda.h"
#endif

namespace trainer_kernels {
namespace {

constexpr const char* kFwd = "trainer_kernels::cross_entropy_fwd";
constexpr const char* kBwd = "trainer_kernels::cross_entropy_bwd";
constexpr const char* kFused = "trainer_kernels::fused_linear_cross_entropy_fwd";

at::ScalarType acc_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_targets(const at::Tensor& targets, int64_t rows, const at::Tensor& like, const char* op) {
  check_dtype(targets, at::kLong, op, "targets");
  TORCH_CHECK_VALUE(targets.dim() == 1 && targets.size(0) == rows, op, ": targets must have shape (", rows,
                    ",), got ", targets.sizes());
  check_contiguous(targets, op, "targets");
  check_same_device(targets, like, op, "targets", "logits");
}

void check_logits(const at::Tensor& logits, const at::Tensor& targets, const char* op) {
  check_float(logits, op, "logits");
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(1) > 0, op, ": logits must be (N, V) with V > 0, got ",
                    logits.sizes());
  TORCH_CHECK_VALUE(logits.size(1) < std::numeric_limits<int32_t>::max(), op, ": vocabulary too large");
  check_contiguous(logits, op, "logits");
  check_targets(targets, logits.size(0), logits, op);
}

// CPU only (free there): a target outside [0, V) that is not ignore_index is an error, as in
// PyTorch. The CUDA kernels cannot check without a host sync; they report such rows as NaN loss.
void check_targets_in_range_cpu(const at::Tensor& targets, int64_t vocab, int64_t ignore_index, const char* op) {
  const int64_t* t = targets.data_ptr<int64_t>();
  for (int64_t i = 0; i < targets.numel(); ++i) {
    TORCH_CHECK_INDEX(t[i] == ignore_index || (t[i] >= 0 && t[i] < vocab), op, ": target ", t[i], " at row ", i,
                      " is outside [0, ", vocab, ") and is not ignore_index (", ignore_index, ")");
  }
}

void check_row_stat(const at::Tensor& t, const at::Tensor& logits, const char* op, const char* name, int64_t width) {
  const bool shape_ok = width == 1 ? (t.dim() == 1 && t.size(0) == logits.size(0))
                                   : (t.dim() == 2 && t.size(0) == logits.size(0) && t.size(1) == width);
  TORCH_CHECK_VALUE(shape_ok, op, ": ", name, " must have shape (", logits.size(0), width == 1 ? "" : ", 2",
                    ",), got ", t.sizes());
  check_dtype(t, acc_type(logits), op, name);
  check_contiguous(t, op, name);
  check_same_device(t, logits, op, name, "logits");
}

std::tuple<at::Tensor, at::Tensor> fwd_cpu(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index,
                                           double z_loss) {
  check_logits(logits, targets, kFwd);
  check_targets_in_range_cpu(targets, logits.size(1), ignore_index, kFwd);
  return cross_entropy_fwd_cpu(logits, targets, ignore_index, z_loss);
}

at::Tensor bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& targets,
                   const at::Tensor& stats, int64_t ignore_index, double z_loss) {
  check_logits(logits, targets, kBwd);
  check_row_stat(grad_loss, logits, kBwd, "grad_loss", 1);
  check_row_stat(stats, logits, kBwd, "stats", 2);
  check_targets_in_range_cpu(targets, logits.size(1), ignore_index, kBwd);
  return cross_entropy_bwd_cpu(grad_loss, logits, targets, stats, ignore_index, z_loss);
}

#ifdef TRAINER_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> fwd_cuda(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index,
                                            double z_loss) {
  check_logits(logits, targets, kFwd);
  const DType dt = cuda_dtype(logits, kFwd, "logits");
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t rows = logits.size(0);
  at::Tensor loss = at::empty({rows}, logits.options().dtype(at::kFloat));
  at::Tensor stats = at::empty({rows, 2}, loss.options());
  const cudaError_t err = launch_cross_entropy_fwd(dt, logits.data_ptr(), targets.data_ptr<int64_t>(),
                                                   loss.data_ptr<float>(), stats.data_ptr<float>(), rows,
                                                   logits.size(1), ignore_index, static_cast<float>(z_loss),
                                                   c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kFwd, ": kernel launch failed: ", cudaGetErrorString(err));
  return {loss, stats};
}

at::Tensor bwd_cuda(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& targets,
                    const at::Tensor& stats, int64_t ignore_index, double z_loss) {
  check_logits(logits, targets, kBwd);
  check_row_stat(grad_loss, logits, kBwd, "grad_loss", 1);
  check_row_stat(stats, logits, kBwd, "stats", 2);
  const DType dt = cuda_dtype(logits, kBwd, "logits");
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor grad = at::empty_like(logits);
  const cudaError_t err = launch_cross_entropy_bwd(dt, grad_loss.data_ptr<float>(), logits.data_ptr(),
                                                   targets.data_ptr<int64_t>(), stats.data_ptr<float>(), grad.data_ptr(),
                                                   logits.size(0), logits.size(1), ignore_index,
                                                   static_cast<float>(z_loss), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kBwd, ": kernel launch failed: ", cudaGetErrorString(err));
  return grad;
}
#endif

// ---- fused linear + cross-entropy -------------------------------------------------------

// The logits of one chunk take at most this much memory (unless a single row is larger).
constexpr int64_t kChunkLogitsBytes = int64_t{1} << 30;

// Rows per chunk: the largest power of two whose logits fit kChunkLogitsBytes, or all rows.
// Few, large chunks: every chunk adds its fp32 weight-gradient partial (read and written in
// full, 4 * V * D bytes) and a matrix product with a short inner dimension; with chunks sized
// like the hidden states instead (Liger-Kernel's rule) a 16384 x 4096 @ 128256 x 4096 loss takes
// 32 chunks and spends more on those than on its products. `requested` > 0 overrides (benchmarks).
int64_t chunk_rows(int64_t n, int64_t vocab, int64_t elem_size, int64_t requested) {
  if (requested > 0) return std::min(requested, std::max<int64_t>(n, 1));
  const int64_t fit = std::max<int64_t>(1, kChunkLogitsBytes / std::max<int64_t>(1, vocab * elem_size));
  int64_t c = 1;
  while (c * 2 <= fit) c *= 2;
  return std::min(c, std::max<int64_t>(n, 1));
}

// Overwrites the chunk logits with grad * grad_scale and writes the chunk's per-row loss.
void chunk_fwd_grad(at::Tensor& logits, const at::Tensor& targets, at::Tensor& loss, const at::Tensor& grad_scale,
                    int64_t ignore_index, double z_loss) {
#ifdef TRAINER_WITH_CUDA
  if (logits.is_cuda()) {
    const cudaError_t err = launch_cross_entropy_fwd_grad_inplace(
        cuda_dtype(logits, kFused, "hidden"), logits.data_ptr(), targets.data_ptr<int64_t>(), loss.data_ptr<float>(),
        grad_scale.data_ptr<float>(), logits.size(0), logits.size(1), ignore_index, static_cast<float>(z_loss),
        c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, kFused, ": kernel launch failed: ", cudaGetErrorString(err));
    return;
  }
#endif
  cross_entropy_fwd_grad_inplace_cpu(logits, targets, loss, grad_scale, ignore_index, z_loss);
}

// Per-row loss of a chunk without gradients (evaluation).
void chunk_fwd(const at::Tensor& logits, const at::Tensor& targets, at::Tensor& loss, int64_t ignore_index,
               double z_loss) {
#ifdef TRAINER_WITH_CUDA
  if (logits.is_cuda()) {
    at::Tensor stats = at::empty({logits.size(0), 2}, loss.options());
    const cudaError_t err = launch_cross_entropy_fwd(cuda_dtype(logits, kFused, "hidden"), logits.data_ptr(),
                                                     targets.data_ptr<int64_t>(), loss.data_ptr<float>(),
                                                     stats.data_ptr<float>(), logits.size(0), logits.size(1),
                                                     ignore_index, static_cast<float>(z_loss),
                                                     c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, kFused, ": kernel launch failed: ", cudaGetErrorString(err));
    return;
  }
#endif
  loss.copy_(std::get<0>(cross_entropy_fwd_cpu(logits, targets, ignore_index, z_loss)));
}

// acc (fp32) += a @ b with low-precision a, b through addmm's out_dtype overload (cuBLAS
// accumulates and writes fp32 directly). Looked up at run time: torch builds without it, or
// whose version rejects an fp32 `self`, fall back. Verified once on a tiny product.
// beta 0 (the first chunk): acc's old contents are not read, so it need not be initialised.
bool addmm_fp32_out(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b, int beta) {
  static std::atomic<int> state{-1};  // -1 unknown, 0 unusable, 1 verified
  if (state.load() == 0) return false;
  try {
    auto handle = c10::Dispatcher::singleton().findSchemaOrThrow("aten::addmm", "dtype_out");
    auto op = handle.typed<at::Tensor&(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::ScalarType,
                                       const at::Scalar&, const at::Scalar&, at::Tensor&)>();
    if (state.load() == -1) {
      at::Tensor probe = at::ones({2, 2}, acc.options());
      at::Tensor m = at::ones({2, 2}, a.options());
      op.call(probe, m, m, at::kFloat, 1, 1, probe);  // expect 1 + 2 = 3 everywhere
      state.store(probe.eq(3).all().item<bool>() ? 1 : 0);
      if (state.load() == 0) return false;
    }
    op.call(acc, a, b, at::kFloat, beta, 1, acc);
    return true;
  } catch (const c10::Error&) {
    state.store(0);
    return false;
  }
}

// acc = grad_logits^T @ h for the first chunk (acc uninitialised), acc += ... for the others: the
// first chunk writes the accumulator instead of reading zeros and adding to them.
void accumulate_grad_weight(at::Tensor& acc, const at::Tensor& grad_logits, const at::Tensor& h, bool first) {
  const at::Tensor gt = grad_logits.t();
  if (acc.scalar_type() == grad_logits.scalar_type()) {
    first ? void(at::mm_out(acc, gt, h)) : void(acc.addmm_(gt, h));
  } else if (acc.is_cuda()) {
    if (addmm_fp32_out(acc, gt, h, first ? 0 : 1)) return;
    first ? void(acc.copy_(at::mm(gt, h))) : void(acc.add_(at::mm(gt, h)));  // one rounding per chunk, fp32 sum
  } else {
    const at::Tensor a = gt.to(acc.scalar_type()), b = h.to(acc.scalar_type());
    first ? void(at::mm_out(acc, a, b)) : void(acc.addmm_(a, b));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_fwd(const at::Tensor& hidden, const at::Tensor& weight,
                                                         const at::Tensor& targets, int64_t ignore_index,
                                                         double z_loss, bool compute_grad, int64_t chunk) {
  check_float(hidden, kFused, "hidden");
  TORCH_CHECK_VALUE(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1), kFused,
                    ": hidden must be (N, D) and weight (V, D), got ", hidden.sizes(), " and ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(0) > 0 && weight.size(0) < std::numeric_limits<int32_t>::max(), kFused,
                    ": weight must have 0 < V < 2^31 rows, got ", weight.size(0));
  check_same_dtype(hidden, weight, kFused, "hidden", "weight");
  check_same_device(hidden, weight, kFused, "hidden", "weight");
  check_contiguous(hidden, kFused, "hidden");
  check_contiguous(weight, kFused, "weight");
  check_targets(targets, hidden.size(0), hidden, kFused);
  if (hidden.is_cpu()) check_targets_in_range_cpu(targets, weight.size(0), ignore_index, kFused);
  if (hidden.is_cuda()) cuda_dtype(hidden, kFused, "hidden");
#ifdef TRAINER_WITH_CUDA
  const c10::OptionalDeviceGuard guard(hidden.device());
#endif
  // The matmuls below run in the given dtype even inside an autocast region (the Python
  // side casts the inputs to the autocast dtype first).
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);

  const int64_t n = hidden.size(0), vocab = weight.size(0), dim = hidden.size(1);
  const auto acc = acc_type(hidden);
  const at::Tensor inv_valid = targets.ne(ignore_index).sum().clamp_min(1).to(acc).reciprocal();
  at::Tensor loss_rows = at::empty({n}, hidden.options().dtype(acc));
  at::Tensor grad_hidden = at::empty({compute_grad ? n : 0, dim}, hidden.options());
  // grad_weight sums over every chunk: accumulate in fp32 unless the weight already is.
  const auto gw_type = hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // Written by the first chunk (no rows, no chunk: zeros).
  at::Tensor grad_weight_acc = !compute_grad ? at::empty({0, dim}, weight.options())
                               : n == 0      ? at::zeros({vocab, dim}, weight.options().dtype(gw_type))
                                             : at::empty({vocab, dim}, weight.options().dtype(gw_type));
  TORCH_CHECK_VALUE(chunk >= 0, kFused, ": chunk_rows must be >= 0 (0: automatic), got ", chunk);
  const int64_t step = chunk_rows(n, vocab, hidden.element_size(), chunk);
  for (int64_t start = 0; start < n; start += step) {
    const int64_t rows = std::min(step, n - start);
    const at::Tensor h = hidden.narrow(0, start, rows);
    const at::Tensor t = targets.narrow(0, start, rows);
    at::Tensor loss_c = loss_rows.narrow(0, start, rows);
    at::Tensor logits = at::mm(h, weight.t());  // (rows, V): the only logits alive
    if (compute_grad) {
      chunk_fwd_grad(logits, t, loss_c, inv_valid, ignore_index, z_loss);
      at::Tensor gh = grad_hidden.narrow(0, start, rows);
      at::mm_out(gh, logits, weight);
      accumulate_grad_weight(grad_weight_acc, logits, h, /*first=*/start == 0);
    } else {
      chunk_fwd(logits, t, loss_c, ignore_index, z_loss);
    }
  }
  at::Tensor loss = loss_rows.sum().mul(inv_valid);
  at::Tensor grad_weight = compute_grad ? grad_weight_acc.to(weight.scalar_type()) : grad_weight_acc;
  return {loss, grad_hidden, grad_weight};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(trainer_kernels, m) {
  m.def(
      "cross_entropy_fwd(Tensor logits, Tensor targets, int ignore_index, float z_loss) -> (Tensor loss, Tensor stats)");
  m.def(
      "cross_entropy_bwd(Tensor grad_loss, Tensor logits, Tensor targets, Tensor stats, int ignore_index, "
      "float z_loss) -> Tensor");
  m.def(
      "fused_linear_cross_entropy_fwd(Tensor hidden, Tensor weight, Tensor targets, int ignore_index, float z_loss, "
      "bool compute_grad, int chunk_rows=0) -> (Tensor loss, Tensor grad_hidden, Tensor grad_weight)");
}

TORCH_LIBRARY_IMPL(trainer_kernels, CPU, m) {
  m.impl("cross_entropy_fwd", &fwd_cpu);
  m.impl("cross_entropy_bwd", &bwd_cpu);
  m.impl("fused_linear_cross_entropy_fwd", &fused_fwd);
}

#ifdef TRAINER_WITH_CUDA
TORCH_LIBRARY_IMPL(trainer_kernels, CUDA, m) {
  m.impl("cross_entropy_fwd", &fwd_cuda);
  m.impl("cross_entropy_bwd", &bwd_cuda);
  m.impl("fused_linear_cross_entropy_fwd", &fused_fwd);
}
#endif

}  // namespace trainer_kernels
