// The element types the CUDA launchers accept. The launchers take raw pointers and this
// tag so the .cu files need only the CUDA toolkit, not the torch headers (they compile
// standalone with nvcc, which is how the ptxas register/spill check runs without a GPU).
#pragma once

namespace trainer_kernels {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

}  // namespace trainer_kernels
