// The CUDA path (issue 8): batched forward and scaled-forward meta-gradients of GD on a dense
// quadratic, float and double, on one GPU. Compiled by nvcc into the extension when CMake
// finds a CUDA compiler (METASTEP_CUDA=AUTO/ON); this header is plain C++ so that the
// bindings (compiled by the host compiler) can call it.
#pragma once
#include <cstdint>
#include <string>

namespace metastep::cuda {

// Number of usable devices; on 0, *why says why (no driver, no device, ...).
int device_count(std::string* why);

// Result of one step size, in log form: M = f(w_t) = sign_M e^{log_M}, dM/deta likewise.
// fail_quantity: 0 none, 1 loss, 2 iterate, 3 tangent, 4 meta-loss, 5 meta-gradient (first
// non-finite value met, at inner step fail_step).
struct ColumnResult {
  double log_M = 0, log_dM = 0;
  int sign_M = 0, sign_dM = 0;
  int fail_quantity = 0;
  std::int64_t fail_step = -1;
};

// How a call is run. gemm picks the product: 0 automatic (cuBLAS where it loads, else our own
// kernel by shape), 1 simple 16 x 16 tiles, 2 register-blocked 64 x 64 tiles split over k, 3
// split-k skinny kernel (at most 8 step sizes), 4 cuBLAS (an error where it does not load).
// cublas_path: the library file to load ("" the usual names, "none" never). graph: replay the
// steps as captured CUDA graphs. The defaults are the fast choices; the others exist so that the
// tests can check every kernel against the CPU.
struct Options {
  int gemm = 0;
  std::string cublas_path;
  bool graph = true;
};

// What a call actually did: the kernel of the per-step product, its k-split, whether the steps
// ran as a graph, and why cuBLAS was not used (empty where it was, or was not asked for).
struct RunInfo {
  int gemm = 0;
  int slices = 1;
  bool graph = false;
  std::string cublas_note;
};

// H: d x d float64 in C order (row-major), converted and laid out column-major on the GPU; w0, wstar: length d; etas: m step sizes; t inner steps. With
// scaled = true the iterate and tangent of every column are renormalised by powers of two
// after each step (the range-safe mode); otherwise plain forward mode. Returns false and sets
// *error on a CUDA failure.
template <class S>
bool forward_batch(const double* H, const S* w0, const S* wstar, int d, const double* etas, int m, std::int64_t t,
                   bool scaled, ColumnResult* out, std::string* error, const Options& options = Options(),
                   RunInfo* info = nullptr);

}  // namespace metastep::cuda
