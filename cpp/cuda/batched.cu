// CUDA path (issue 8): batched forward / scaled-forward meta-gradients on one GPU.
//
// Per inner step: one product OUT = H [R | V] for every step size of the batch at once (a
// tiled shared-memory kernel, fused multiply-adds), then one block per step size updates its
// iterate and tangent, forms the next residual and, in the scaled mode, renormalises both by
// powers of two (exact) with the exponents kept in 64-bit integers, as the CPU scaled mode
// does. The sums run in a different order than on the CPU: results agree to rounding, not
// bit for bit.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "metastep_cuda.hpp"

namespace metastep::cuda {
namespace {

constexpr int kTile = 16;
constexpr int kThreads = 256;

__device__ inline float dev_frexp(float x, int* e) { return frexpf(x, e); }
__device__ inline double dev_frexp(double x, int* e) { return frexp(x, e); }
__device__ inline float dev_ldexp(float x, int e) { return ldexpf(x, e); }
__device__ inline double dev_ldexp(double x, int e) { return ldexp(x, e); }
__device__ inline float dev_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ inline double dev_fma(double a, double b, double c) { return fma(a, b, c); }

// C (d x n) = A (d x d) B (d x n), all column-major with leading dimension d.
template <class S>
__global__ void gemm_kernel(const S* __restrict__ A, const S* __restrict__ B, S* __restrict__ C, int d, int n) {
  __shared__ S As[kTile][kTile + 1];
  __shared__ S Bs[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int row = blockIdx.x * kTile + tx, col = blockIdx.y * kTile + ty;
  S acc = 0;
  for (int k0 = 0; k0 < d; k0 += kTile) {
    // As[kk][r] = A(row0 + r, k0 + kk); Bs[c][kk] = B(k0 + kk, col0 + c)
    As[ty][tx] = (row < d && k0 + ty < d) ? A[row + static_cast<size_t>(k0 + ty) * d] : S(0);
    const int bcol = blockIdx.y * kTile + ty;
    Bs[ty][tx] = (k0 + tx < d && bcol < n) ? B[(k0 + tx) + static_cast<size_t>(bcol) * d] : S(0);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTile; ++kk) acc = dev_fma(As[kk][tx], Bs[ty][kk], acc);
    __syncthreads();
  }
  if (row < d && col < n) C[row + static_cast<size_t>(col) * d] = acc;
}

// Register-blocked product for wide batches: a 64 x 64 tile of C per block of 256 threads, each
// thread 4 x 4 outputs (rows tr + 16 i, columns tc + 16 j), k in slices of 16 through shared
// memory. Every output is one FMA chain over k ascending (deterministic).
constexpr int kBM = 64, kBN = 64, kBK = 16;
template <class S>
__global__ void __launch_bounds__(256) gemm_tiled_kernel(const S* __restrict__ A, const S* __restrict__ B,
                                                         S* __restrict__ C, int d, int n, int kspan) {
  // split over k (blockIdx.z): this block sums k in [z kspan, (z + 1) kspan) into slice z of C
  const int kbeg = blockIdx.z * kspan, kend = (kbeg + kspan < d) ? kbeg + kspan : d;
  C += static_cast<size_t>(blockIdx.z) * n * d;
  __shared__ S As[kBK][kBM];
  __shared__ S Bs[kBK][kBN + 1];
  const int tid = threadIdx.x, tr = tid & 15, tc = tid >> 4;
  const int row0 = blockIdx.x * kBM, col0 = blockIdx.y * kBN;
  S acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = S(0);
  for (int k0 = kbeg; k0 < kend; k0 += kBK) {
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int idx = tid + 256 * l;
      const int r = idx & (kBM - 1), k = idx / kBM;  // consecutive threads: consecutive rows of A
      const int gr = row0 + r, gk = k0 + k;
      As[k][r] = (gr < d && gk < kend) ? A[gr + static_cast<size_t>(gk) * d] : S(0);
      const int kb = idx & (kBK - 1), c = idx / kBK;  // consecutive threads: consecutive k of B
      const int gkb = k0 + kb, gc = col0 + c;
      Bs[kb][c] = (gkb < kend && gc < n) ? B[gkb + static_cast<size_t>(gc) * d] : S(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kBK; ++k) {
      S a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[k][tr + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[k][tc + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = dev_fma(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int gc = col0 + tc + 16 * j;
    if (gc >= n) continue;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int gr = row0 + tr + 16 * i;
      if (gr < d) C[gr + static_cast<size_t>(gc) * d] = acc[i][j];
    }
  }
}

// Skinny product (n <= 16 columns: a few step sizes), split over k so that small d still fills
// the GPU: block (x, y) computes rows x*128 .. x*128+127 over k in [y*kKC, (y+1)*kKC), one row
// per thread, reading A down its columns (coalesced) and the slice of B from shared memory
// (broadcast). Partial sums P[y][c][row] are added in slice order by sum_slices_kernel.
constexpr int kSkinnyRows = 128, kKC = 64, kSkinnyMax = 16;
template <class S, int NC>
__global__ void __launch_bounds__(kSkinnyRows) gemm_skinny_kernel(const S* __restrict__ A, const S* __restrict__ B,
                                                                  S* __restrict__ P, int d, int n) {
  __shared__ S Bs[NC][kKC];
  const int row = blockIdx.x * kSkinnyRows + threadIdx.x;
  const int k0 = blockIdx.y * kKC;
  for (int idx = threadIdx.x; idx < NC * kKC; idx += kSkinnyRows) {
    const int c = idx / kKC, k = idx - c * kKC;
    Bs[c][k] = (c < n && k0 + k < d) ? B[(k0 + k) + static_cast<size_t>(c) * d] : S(0);
  }
  __syncthreads();
  if (row >= d) return;
  S acc[NC];
#pragma unroll
  for (int c = 0; c < NC; ++c) acc[c] = S(0);
  const int kn = (d - k0 < kKC) ? d - k0 : kKC;
  const S* a = A + row + static_cast<size_t>(k0) * d;
  for (int k = 0; k < kn; ++k) {
    const S x = a[static_cast<size_t>(k) * d];
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[c] = dev_fma(x, Bs[c][k], acc[c]);
  }
  S* p = P + static_cast<size_t>(blockIdx.y) * n * d + row;
#pragma unroll
  for (int c = 0; c < NC; ++c)
    if (c < n) p[static_cast<size_t>(c) * d] = acc[c];
}

// C = the sum over k-slices of the partial products P (both split kernels), slices in order.
template <class S>
__global__ void sum_slices_kernel(const S* __restrict__ P, S* __restrict__ C, int d, int n, int slices) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t len = static_cast<size_t>(n) * d;
  if (i >= len) return;
  S s = P[i];
  for (int y = 1; y < slices; ++y) s += P[static_cast<size_t>(y) * len + i];
  C[i] = s;
}

// max that lets a NaN through from either side (a non-finite iterate must never be reduced away)
template <class S>
__device__ inline S nan_max(S a, S b) {
  return (a != a) ? a : ((b <= a) ? a : b);
}

constexpr int kWarps = kThreads / 32;

// Block-wide reductions of several values at once (one pair of barriers for all); K... gives each
// value's kind (0 sum, 1 NaN-propagating max). Results valid in thread 0. The order is fixed
// (lanes by halving, then warps in order): deterministic.
template <int... K, class S>
__device__ void block_reduce(S* shared /* sizeof...(K) * kWarps */, S (&v)[sizeof...(K)]) {
  constexpr int N = sizeof...(K);
  constexpr int kind[N] = {K...};
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const S y = __shfl_down_sync(0xffffffffu, v[i], o);
      v[i] = kind[i] == 0 ? v[i] + y : nan_max(v[i], y);
    }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0)
#pragma unroll
    for (int i = 0; i < N; ++i) shared[i * kWarps + warp] = v[i];
  __syncthreads();
  if (threadIdx.x == 0)
#pragma unroll
    for (int i = 0; i < N; ++i) {
      v[i] = shared[i * kWarps];
      for (int w = 1; w < kWarps; ++w)
        v[i] = kind[i] == 0 ? v[i] + shared[i * kWarps + w] : nan_max(v[i], shared[i * kWarps + w]);
    }
  __syncthreads();
}

struct ColumnState {
  std::int64_t Ew, Ev;
  int fail_quantity;
  std::int64_t fail_step;
  std::int64_t step;  // inner steps taken (kept on the device, so that a captured graph of
                      // steps can be replayed unchanged)
};

template <class S>
__device__ void fail(ColumnState& st, int q, std::int64_t step) {
  if (st.fail_quantity == 0) {
    st.fail_quantity = q;
    st.fail_step = step;
  }
}

// One inner step for column j = blockIdx.x: W, R = IN[:, j], V = IN[:, m + j], G = OUT[:, j],
// HV = OUT[:, m + j]. One fused pass reads r, g, hv, w, v once: the loss r.g at this step (its
// finiteness is checked), the updates w - eta g and v - (g + eta Hv) (the relative scale of v and
// w folded into g in the scaled mode), and the largest |w|, |v| after the update. The plain mode
// writes the next residual in the same pass; the scaled mode takes a second pass to renormalise
// w and v by powers of two (exact) and form the residual.
template <class S>
__global__ void step_kernel(S* W, S* IN, const S* OUT, const S* wstar, const double* etas, S* off, ColumnState* cs,
                            int d, int m, bool scaled) {
  __shared__ S red[3 * kWarps];
  __shared__ S bc[3];
  const int j = blockIdx.x;
  S* w = W + static_cast<size_t>(j) * d;
  S* r = IN + static_cast<size_t>(j) * d;
  S* v = IN + static_cast<size_t>(m + j) * d;
  const S* g = OUT + static_cast<size_t>(j) * d;
  const S* hv = OUT + static_cast<size_t>(m + j) * d;
  const S e = static_cast<S>(etas[j]);
  ColumnState& st = cs[j];
  // read by every thread before thread 0 updates them (after the barriers of the reduction)
  const std::int64_t tau = st.step;
  S rel = S(1);
  if (scaled) {
    const std::int64_t diff = st.Ew - st.Ev, lim = 1 << 20;
    rel = dev_ldexp(S(1), static_cast<int>(diff > lim ? lim : (diff < -lim ? -lim : diff)));
  }
  const S o = off[j];
  S f = 0, wm = 0, vm = 0;
  for (int i = threadIdx.x; i < d; i += kThreads) {
    const S gi = g[i];
    f = dev_fma(r[i], gi, f);
    const S wn = w[i] - e * gi;
    const S vn = v[i] - (rel * gi + e * hv[i]);
    w[i] = wn;
    v[i] = vn;
    if (!scaled) r[i] = wn - o * wstar[i];
    wm = nan_max(wm, S(fabs(wn)));
    vm = nan_max(vm, S(fabs(vn)));
  }
  S acc[3] = {f, wm, vm};
  block_reduce<0, 1, 1>(red, acc);
  f = acc[0];
  wm = acc[1];
  vm = acc[2];
  if (threadIdx.x == 0) {
    if (!isfinite(f)) fail<S>(st, 1, tau);
    int kw = 0, kv = 0;
    if (scaled) {
      S mw = wm;
      const S oa = fabs(o);
      if (oa > mw) mw = oa;
      if (mw > S(0) && isfinite(mw)) dev_frexp(mw, &kw);
      if (vm > S(0) && isfinite(vm)) dev_frexp(vm, &kv);
      off[j] = dev_ldexp(o, -kw);
      st.Ew += kw;
      st.Ev += kv;
      if (vm == S(0)) st.Ev = st.Ew;  // v = 0: give it w's scale (relative factor 1 next step)
    }
    if (!isfinite(wm)) fail<S>(st, 2, tau + 1);
    if (!isfinite(vm)) fail<S>(st, 3, tau + 1);
    st.step = tau + 1;
    bc[0] = dev_ldexp(S(1), -kw);
    bc[1] = dev_ldexp(S(1), -kv);
    bc[2] = off[j];
  }
  if (!scaled) return;
  __syncthreads();
  const S sw = bc[0], sv = bc[1], on = bc[2];
  for (int i = threadIdx.x; i < d; i += kThreads) {
    const S wn = w[i] * sw;  // powers of two: exact
    w[i] = wn;
    v[i] *= sv;
    r[i] = wn - on * wstar[i];
  }
}

// H arrives as the caller's float64 array in C order; the products read it column-major in S.
// One tiled pass on the GPU converts and transposes (coalesced reads and writes through shared
// memory), so the host never copies the matrix.
template <class S>
__global__ void transpose_convert_kernel(const double* __restrict__ in, S* __restrict__ out, int d) {
  __shared__ double tile[32][33];
  int x = blockIdx.x * 32 + threadIdx.x, y = blockIdx.y * 32 + threadIdx.y;
  for (int k = 0; k < 32; k += 8)
    if (x < d && y + k < d) tile[threadIdx.y + k][threadIdx.x] = in[static_cast<size_t>(y + k) * d + x];
  __syncthreads();
  x = blockIdx.y * 32 + threadIdx.x;
  y = blockIdx.x * 32 + threadIdx.y;
  for (int k = 0; k < 32; k += 8)
    if (x < d && y + k < d) out[static_cast<size_t>(y + k) * d + x] = static_cast<S>(tile[threadIdx.x][threadIdx.y + k]);
}

// Final meta-loss and derivative of column j from G = H R (OUT[:, j]).
template <class S>
__global__ void final_kernel(const S* IN, const S* OUT, ColumnState* cs, ColumnResult* res, int d, int m,
                             std::int64_t t) {
  __shared__ S red[2 * kWarps];
  const int j = blockIdx.x;
  const S* r = IN + static_cast<size_t>(j) * d;
  const S* v = IN + static_cast<size_t>(m + j) * d;
  const S* g = OUT + static_cast<size_t>(j) * d;
  S Mh = 0, q = 0;
  for (int i = threadIdx.x; i < d; i += kThreads) {
    Mh = dev_fma(r[i], g[i], Mh);
    q = dev_fma(g[i], v[i], q);
  }
  S acc[2] = {Mh, q};
  block_reduce<0, 0>(red, acc);
  Mh = acc[0];
  q = acc[1];
  if (threadIdx.x == 0) {
    ColumnState& st = cs[j];
    Mh *= S(0.5);
    if (!isfinite(Mh)) fail<S>(st, 4, t);
    if (!isfinite(q)) fail<S>(st, 5, t);
    const double ln2 = 0.6931471805599453;
    ColumnResult out;
    out.sign_M = Mh > S(0) ? 1 : 0;
    out.log_M = Mh > S(0) ? static_cast<double>(2 * st.Ew) * ln2 + log(static_cast<double>(Mh)) : -INFINITY;
    out.sign_dM = q > S(0) ? 1 : (q < S(0) ? -1 : 0);
    out.log_dM = q != S(0) ? static_cast<double>(st.Ew + st.Ev) * ln2 + log(fabs(static_cast<double>(q))) : -INFINITY;
    if (!isfinite(Mh) || !isfinite(q)) {
      out.log_M = out.log_dM = NAN;
      out.sign_M = out.sign_dM = 0;
    }
    out.fail_quantity = st.fail_quantity;
    out.fail_step = st.fail_step;
    res[j] = out;
  }
}

// Largest |x| of a host vector (the initial renormalisation, on the host).
template <class S>
S host_maxabs(const S* x, int n) {
  S m = 0;
  for (int i = 0; i < n; ++i) m = std::fabs(x[i]) > m ? std::fabs(x[i]) : m;
  return m;
}

struct Stream {
  cudaStream_t s = nullptr;
  ~Stream() {
    if (s) cudaStreamDestroy(s);
  }
};

struct Graph {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ~Graph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
  }
};

struct Buffers {
  std::vector<void*> ptrs;
  ~Buffers() {
    for (void* p : ptrs) cudaFree(p);
  }
  template <class T>
  T* alloc(size_t n, cudaError_t* err) {
    void* p = nullptr;
    *err = cudaMalloc(&p, n * sizeof(T) + 1);
    if (*err == cudaSuccess) ptrs.push_back(p);
    return static_cast<T*>(p);
  }
};

// cuBLAS, loaded at run time where present (PyTorch and JAX ship it): the extension neither links
// nor needs it, and falls back to its own kernels without it. Only the few entry points used are
// declared here; their C ABI has been stable since cuBLAS 10 (the _v2 names).
struct Cublas {
  using Handle = void*;
  using Create = int (*)(Handle*);
  using Destroy = int (*)(Handle);
  using SetStream = int (*)(Handle, cudaStream_t);
  using SetWorkspace = int (*)(Handle, void*, size_t);
  using Dgemm = int (*)(Handle, int, int, int, int, int, const double*, const double*, int, const double*, int,
                        const double*, double*, int);
  using Sgemm = int (*)(Handle, int, int, int, int, int, const float*, const float*, int, const float*, int,
                        const float*, float*, int);
  void* lib = nullptr;
  Create create = nullptr;
  Destroy destroy = nullptr;
  SetStream set_stream = nullptr;
  SetWorkspace set_workspace = nullptr;
  Dgemm dgemm = nullptr;
  Sgemm sgemm = nullptr;
  Handle handle = nullptr;

  // path: a file to load, or empty for the usual names on the loader's search path
  bool load(const std::string& path, std::string* why) {
    const char* names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"};
    // RTLD_NODELETE: the library stays mapped after dlclose, so a later call loads it for free
    const int flags = RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE;
    if (!path.empty()) {
      lib = dlopen(path.c_str(), flags);
    } else {
      for (const char* n : names)
        if ((lib = dlopen(n, flags)) != nullptr) break;
    }
    if (!lib) {
      const char* e = dlerror();
      *why = std::string("cuBLAS not loaded: ") + (e ? e : "not found");
      return false;
    }
    create = reinterpret_cast<Create>(dlsym(lib, "cublasCreate_v2"));
    destroy = reinterpret_cast<Destroy>(dlsym(lib, "cublasDestroy_v2"));
    set_stream = reinterpret_cast<SetStream>(dlsym(lib, "cublasSetStream_v2"));
    set_workspace = reinterpret_cast<SetWorkspace>(dlsym(lib, "cublasSetWorkspace_v2"));
    dgemm = reinterpret_cast<Dgemm>(dlsym(lib, "cublasDgemm_v2"));
    sgemm = reinterpret_cast<Sgemm>(dlsym(lib, "cublasSgemm_v2"));
    if (!create || !destroy || !set_stream || !dgemm || !sgemm) {
      *why = "cuBLAS library lacks the expected entry points";
      return false;
    }
    if (create(&handle) != 0) {
      handle = nullptr;
      *why = "cublasCreate failed";
      return false;
    }
    return true;
  }
  int gemm(int d, int n, const double* A, const double* B, double* C) const {
    const double one = 1, zero = 0;
    return dgemm(handle, 0, 0, d, n, d, &one, A, d, B, d, &zero, C, d);
  }
  int gemm(int d, int n, const float* A, const float* B, float* C) const {
    const float one = 1, zero = 0;
    return sgemm(handle, 0, 0, d, n, d, &one, A, d, B, d, &zero, C, d);
  }
  ~Cublas() {
    if (handle) destroy(handle);
    if (lib) dlclose(lib);
  }
};

// How one product of width n is formed: kernel 1 simple tiles, 2 register-blocked tiles split
// over `slices` ranges of k, 3 skinny split-k, 4 cuBLAS.
struct Plan {
  int kernel = 2;
  int slices = 1;
};

Plan plan_product(int requested, int d, int n, bool have_cublas) {
  Plan p;
  p.kernel = requested;
  // measured on an H100: for a few step sizes on a large matrix our split-k kernel is as fast as
  // cuBLAS in float64 and faster in float32; elsewhere cuBLAS wins
  if (p.kernel == 0) p.kernel = (n <= kSkinnyMax && (!have_cublas || d >= 512)) ? 3 : (have_cublas ? 4 : 2);
  if (p.kernel == 3 && n > kSkinnyMax) p.kernel = 2;
  if (p.kernel == 3) p.slices = (d + kKC - 1) / kKC;
  if (p.kernel == 2) {
    // enough blocks for two waves on a large GPU, each slice at least 256 deep
    const int blocks = ((d + kBM - 1) / kBM) * ((n + kBN - 1) / kBN);
    int s = (264 + blocks - 1) / blocks;
    const int most = d / 256 > 1 ? d / 256 : 1;
    p.slices = s < 1 ? 1 : (s > most ? most : s);
  }
  return p;
}

}  // namespace

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (why) *why = cudaGetErrorString(err);
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device";
  return n;
}

template <class S>
bool forward_batch(const double* H, const S* w0, const S* wstar, int d, const double* etas, int m, std::int64_t t,
                   bool scaled, ColumnResult* out, std::string* error, const Options& options, RunInfo* info) {
  cudaError_t err = cudaSuccess;
  auto check = [&](cudaError_t e, const char* what) {
    if (e != cudaSuccess && err == cudaSuccess) {
      err = e;
      *error = std::string(what) + ": " + cudaGetErrorString(e);
    }
    return e == cudaSuccess;
  };
  if (d < 1 || m < 1 || t < 1) {
    *error = "d, m and t must be positive";
    return false;
  }
  Stream stream;
  if (!check(cudaStreamCreateWithFlags(&stream.s, cudaStreamNonBlocking), "stream")) return false;
  Cublas blas;
  std::string blas_why;
  const bool want_blas = options.gemm == 4 || (options.gemm == 0 && options.cublas_path != "none");
  const bool have_blas = want_blas && blas.load(options.cublas_path == "none" ? "" : options.cublas_path, &blas_why) &&
                         blas.set_stream(blas.handle, stream.s) == 0;
  if (options.gemm == 4 && !have_blas) {
    *error = blas_why.empty() ? "cuBLAS could not be set up" : blas_why;
    return false;
  }
  const Plan wide = plan_product(options.gemm, d, 2 * m, have_blas), narrow = plan_product(options.gemm, d, m, have_blas);
  if (info) {
    info->gemm = wide.kernel;
    info->slices = wide.slices;
    info->cublas_note = have_blas ? "" : blas_why;
  }
  Buffers buf;
  const size_t dd = static_cast<size_t>(d), mm = static_cast<size_t>(m);
  S* dH = buf.alloc<S>(dd * dd, &err);
  double* dH64 = err == cudaSuccess ? buf.alloc<double>(dd * dd, &err) : nullptr;
  S* dW = err == cudaSuccess ? buf.alloc<S>(dd * mm, &err) : nullptr;
  S* dIN = err == cudaSuccess ? buf.alloc<S>(dd * 2 * mm, &err) : nullptr;
  S* dOUT = err == cudaSuccess ? buf.alloc<S>(dd * 2 * mm, &err) : nullptr;
  S* dws = err == cudaSuccess ? buf.alloc<S>(dd, &err) : nullptr;
  S* doff = err == cudaSuccess ? buf.alloc<S>(mm, &err) : nullptr;
  double* detas = err == cudaSuccess ? buf.alloc<double>(mm, &err) : nullptr;
  ColumnState* dcs = err == cudaSuccess ? buf.alloc<ColumnState>(mm, &err) : nullptr;
  ColumnResult* dres = err == cudaSuccess ? buf.alloc<ColumnResult>(mm, &err) : nullptr;
  // partial sums of the split products (the wide product needs the most)
  auto partial_len = [&](const Plan& p, int n) {
    return (p.kernel == 2 || p.kernel == 3) && p.slices > 1 ? static_cast<size_t>(p.slices) * n * dd : size_t(0);
  };
  const size_t plen = std::max(partial_len(wide, 2 * m), partial_len(narrow, m));
  S* dP = (err == cudaSuccess && plen > 0) ? buf.alloc<S>(plen, &err) : nullptr;
  // cuBLAS gets a workspace of ours, so that it allocates nothing while a graph is captured
  const size_t ws_bytes = size_t(32) << 20;
  void* dwork = (err == cudaSuccess && have_blas && blas.set_workspace) ? buf.alloc<char>(ws_bytes, &err) : nullptr;
  if (err != cudaSuccess) {
    *error = std::string("cudaMalloc: ") + cudaGetErrorString(err);
    return false;
  }
  if (dwork && blas.set_workspace(blas.handle, dwork, ws_bytes) != 0) {
    *error = "cublasSetWorkspace failed";
    return false;
  }
  // initial state (host): w = 2^Ew w^, r = w^ - off w*, v = 0. The scaled mode, like the CPU
  // engine, iterates on the residual e = w - w* itself (off = 0: nothing cancels near w*); the
  // plain mode forms w - w* every step, as autodiff through the loop would.
  const bool has_offset = host_maxabs(wstar, d) > S(0);
  const S off0 = (has_offset && !scaled) ? S(1) : S(0);
  std::vector<S> w(dd), in(dd * 2 * mm, S(0));
  for (size_t i = 0; i < dd; ++i) w[i] = scaled ? w0[i] - wstar[i] : w0[i];
  int k0 = 0;
  if (scaled) {
    const S mw = host_maxabs(w.data(), d);
    if (mw > S(0) && std::isfinite(mw)) std::frexp(mw, &k0);
  }
  const S off = std::ldexp(off0, -k0);
  for (size_t i = 0; i < dd; ++i) w[i] = std::ldexp(w[i], -k0);
  std::vector<S> W(dd * mm);
  for (size_t j = 0; j < mm; ++j)
    for (size_t i = 0; i < dd; ++i) {
      W[j * dd + i] = w[i];
      in[j * dd + i] = w[i] - off * wstar[i];
    }
  std::vector<S> offs(mm, off);
  std::vector<ColumnState> cs(mm, ColumnState{k0, k0, 0, -1, 0});
  // every copy and kernel goes in order on one stream of our own (no implicit synchronisation
  // with other streams: the copies are ordered before the first product by the stream itself)
  check(cudaMemcpyAsync(dH64, H, dd * dd * sizeof(double), cudaMemcpyHostToDevice, stream.s), "copy H");
  {
    const dim3 grid((d + 31) / 32, (d + 31) / 32), block(32, 8);
    transpose_convert_kernel<S><<<grid, block, 0, stream.s>>>(dH64, dH, d);
  }
  check(cudaMemcpyAsync(dW, W.data(), dd * mm * sizeof(S), cudaMemcpyHostToDevice, stream.s), "copy W");
  check(cudaMemcpyAsync(dIN, in.data(), dd * 2 * mm * sizeof(S), cudaMemcpyHostToDevice, stream.s), "copy IN");
  check(cudaMemcpyAsync(dws, wstar, dd * sizeof(S), cudaMemcpyHostToDevice, stream.s), "copy w*");
  check(cudaMemcpyAsync(doff, offs.data(), mm * sizeof(S), cudaMemcpyHostToDevice, stream.s), "copy off");
  check(cudaMemcpyAsync(detas, etas, mm * sizeof(double), cudaMemcpyHostToDevice, stream.s), "copy etas");
  check(cudaMemcpyAsync(dcs, cs.data(), mm * sizeof(ColumnState), cudaMemcpyHostToDevice, stream.s), "copy state");
  if (err != cudaSuccess) return false;
  bool blas_failed = false;
  // The product OUT = H IN[:, :n] (n = 2m columns per step, m for the final one).
  auto product = [&](cudaStream_t s, const Plan& p, int n) {
    if (p.kernel == 4) {
      if (blas.gemm(d, n, dH, dIN, dOUT) != 0) blas_failed = true;
    } else if (p.kernel == 1) {
      const dim3 tb(kTile, kTile), grid((d + kTile - 1) / kTile, (n + kTile - 1) / kTile);
      gemm_kernel<S><<<grid, tb, 0, s>>>(dH, dIN, dOUT, d, n);
    } else if (p.kernel == 2) {
      const int span = p.slices > 1 ? ((d + p.slices - 1) / p.slices + kBK - 1) / kBK * kBK : d;
      const int slices = (d + span - 1) / span;
      const dim3 grid((d + kBM - 1) / kBM, (n + kBN - 1) / kBN, slices);
      gemm_tiled_kernel<S><<<grid, 256, 0, s>>>(dH, dIN, slices > 1 ? dP : dOUT, d, n, span);
      if (slices > 1) {
        const size_t len = static_cast<size_t>(n) * dd;
        sum_slices_kernel<S><<<static_cast<unsigned>((len + 255) / 256), 256, 0, s>>>(dP, dOUT, d, n, slices);
      }
    } else {
      const dim3 grid((d + kSkinnyRows - 1) / kSkinnyRows, p.slices);
      if (n <= 2)
        gemm_skinny_kernel<S, 2><<<grid, kSkinnyRows, 0, s>>>(dH, dIN, p.slices > 1 ? dP : dOUT, d, n);
      else if (n <= 4)
        gemm_skinny_kernel<S, 4><<<grid, kSkinnyRows, 0, s>>>(dH, dIN, p.slices > 1 ? dP : dOUT, d, n);
      else if (n <= 8)
        gemm_skinny_kernel<S, 8><<<grid, kSkinnyRows, 0, s>>>(dH, dIN, p.slices > 1 ? dP : dOUT, d, n);
      else
        gemm_skinny_kernel<S, 16><<<grid, kSkinnyRows, 0, s>>>(dH, dIN, p.slices > 1 ? dP : dOUT, d, n);
      if (p.slices > 1) {
        const size_t len = static_cast<size_t>(n) * dd;
        sum_slices_kernel<S><<<static_cast<unsigned>((len + 255) / 256), 256, 0, s>>>(dP, dOUT, d, n, p.slices);
      }
    }
  };
  auto one_step = [&](cudaStream_t s) {
    product(s, wide, 2 * m);
    step_kernel<S><<<m, kThreads, 0, s>>>(dW, dIN, dOUT, dws, detas, doff, dcs, d, m, scaled);
  };
  // Launch overhead dominates small problems: the steps go in chunks of kChunk captured once as
  // a CUDA graph and replayed (each step reads its index from the device state, so every chunk
  // is the same graph). Where capture is refused the steps are launched one by one.
  constexpr std::int64_t kChunk = 32;
  std::int64_t done = 0;
  if (options.graph && t >= 2 * kChunk) {
    Graph g;
    bool captured = cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
    if (captured) {
      for (std::int64_t i = 0; i < kChunk; ++i) one_step(stream.s);
      captured = cudaStreamEndCapture(stream.s, &g.graph) == cudaSuccess && g.graph != nullptr && !blas_failed;
    }
    if (captured) captured = cudaGraphInstantiate(&g.exec, g.graph, 0) == cudaSuccess;
    if (captured) {
      for (; done + kChunk <= t; done += kChunk)
        if (!check(cudaGraphLaunch(g.exec, stream.s), "graph launch")) return false;
    } else {
      (void)cudaGetLastError();  // capture refused: clear it and launch directly
      blas_failed = false;
    }
    if (info) info->graph = captured;
  }
  for (std::int64_t tau = done; tau < t; ++tau) {
    one_step(stream.s);
    if (((tau - done) & 255) == 0 && !check(cudaGetLastError(), "kernel launch")) return false;
  }
  product(stream.s, narrow, m);
  final_kernel<S><<<m, kThreads, 0, stream.s>>>(dIN, dOUT, dcs, dres, d, m, t);
  check(cudaGetLastError(), "kernel launch");
  check(cudaStreamSynchronize(stream.s), "synchronize");
  if (blas_failed && err == cudaSuccess) {
    *error = "a cuBLAS product failed";
    return false;
  }
  if (err != cudaSuccess) return false;
  check(cudaMemcpyAsync(out, dres, mm * sizeof(ColumnResult), cudaMemcpyDeviceToHost, stream.s), "copy results");
  check(cudaStreamSynchronize(stream.s), "synchronize");
  return err == cudaSuccess;
}

template bool forward_batch<float>(const double*, const float*, const float*, int, const double*, int, std::int64_t,
                                   bool, ColumnResult*, std::string*, const Options&, RunInfo*);
template bool forward_batch<double>(const double*, const double*, const double*, int, const double*, int,
                                    std::int64_t, bool, ColumnResult*, std::string*, const Options&, RunInfo*);

}  // namespace metastep::cuda
