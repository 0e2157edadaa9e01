// CUDA path (issue 8): batched forward / scaled-forward meta-gradients on one GPU.
//
// Per inner step: one product OUT = H [R | V] for every step size of the batch at once (a
// tiled shared-memory kernel, fused multiply-adds), then one block per step size updates its
// iterate and tangent, forms the next residual and, in the scaled mode, renormalises both by
// powers of two (exact) with the exponents kept in 64-bit integers, as the CPU scaled mode
// does. The sums run in a different order than on the CPU: results agree to rounding, not
// bit for bit.
#include <cuda_runtime.h>

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

template <class S>
__device__ S block_sum(S x, S* shared) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  S r = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) r += shared[w];
  __syncthreads();
  return r;  // valid in thread 0
}

template <class S>
__device__ S block_max(S x, S* shared) {  // of non-negative values; NaN wins
  for (int o = 16; o > 0; o >>= 1) {
    const S y = __shfl_down_sync(0xffffffffu, x, o);
    x = (y <= x) ? x : y;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  S r = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) r = (shared[w] <= r) ? r : shared[w];
  __syncthreads();
  return r;
}

struct ColumnState {
  std::int64_t Ew, Ev;
  int fail_quantity;
  std::int64_t fail_step;
};

template <class S>
__device__ void fail(ColumnState& st, int q, std::int64_t step) {
  if (st.fail_quantity == 0) {
    st.fail_quantity = q;
    st.fail_step = step;
  }
}

// One inner step for column j = blockIdx.x: W, R = IN[:, j], V = IN[:, m + j], G = OUT[:, j],
// HV = OUT[:, m + j].
template <class S>
__global__ void step_kernel(S* W, S* IN, const S* OUT, const S* wstar, const double* etas, S* off, ColumnState* cs,
                            int d, int m, std::int64_t tau, bool scaled) {
  __shared__ S red[kThreads / 32];
  __shared__ S bc[4];
  const int j = blockIdx.x;
  S* w = W + static_cast<size_t>(j) * d;
  S* r = IN + static_cast<size_t>(j) * d;
  S* v = IN + static_cast<size_t>(m + j) * d;
  const S* g = OUT + static_cast<size_t>(j) * d;
  const S* hv = OUT + static_cast<size_t>(m + j) * d;
  const S e = static_cast<S>(etas[j]);
  ColumnState& st = cs[j];
  S f = 0, vm = 0;
  for (int i = threadIdx.x; i < d; i += kThreads) {
    f = dev_fma(r[i], g[i], f);
    const S a = fabs(v[i]);
    vm = (a <= vm) ? vm : a;
  }
  f = block_sum(f, red);
  vm = block_max(vm, red);
  if (threadIdx.x == 0) {
    if (!isfinite(f)) fail<S>(st, 1, tau);
    if (scaled && vm == S(0)) st.Ev = st.Ew;  // v = 0: give it w's scale
    const std::int64_t diff = scaled ? st.Ew - st.Ev : 0;
    const int lim = 1 << 20;
    bc[0] = dev_ldexp(S(1), static_cast<int>(diff > lim ? lim : (diff < -lim ? -lim : diff)));
  }
  __syncthreads();
  const S rel = bc[0];
  S wm = 0;
  vm = 0;
  for (int i = threadIdx.x; i < d; i += kThreads) {
    const S wn = w[i] - e * g[i];
    const S vn = v[i] - (rel * g[i] + e * hv[i]);
    w[i] = wn;
    v[i] = vn;
    wm = (fabs(wn) <= wm) ? wm : fabs(wn);
    vm = (fabs(vn) <= vm) ? vm : fabs(vn);
  }
  wm = block_max(wm, red);
  vm = block_max(vm, red);
  if (threadIdx.x == 0) {
    int kw = 0, kv = 0;
    if (scaled) {
      S mw = wm;
      const S o = fabs(off[j]);
      if (o > mw) mw = o;
      if (mw > S(0) && isfinite(mw)) dev_frexp(mw, &kw);
      if (vm > S(0) && isfinite(vm)) dev_frexp(vm, &kv);
      off[j] = dev_ldexp(off[j], -kw);
      st.Ew += kw;
      st.Ev += kv;
    }
    if (!isfinite(wm)) fail<S>(st, 2, tau + 1);
    if (!isfinite(vm)) fail<S>(st, 3, tau + 1);
    bc[1] = dev_ldexp(S(1), -kw);
    bc[2] = dev_ldexp(S(1), -kv);
    bc[3] = off[j];
  }
  __syncthreads();
  const S sw = bc[1], sv = bc[2], o = bc[3];
  for (int i = threadIdx.x; i < d; i += kThreads) {
    const S wn = w[i] * sw;  // powers of two: exact
    w[i] = wn;
    v[i] *= sv;
    r[i] = wn - o * wstar[i];
  }
}

// Final meta-loss and derivative of column j from G = H R (OUT[:, j]).
template <class S>
__global__ void final_kernel(const S* IN, const S* OUT, ColumnState* cs, ColumnResult* res, int d, int m,
                             std::int64_t t) {
  __shared__ S red[kThreads / 32];
  const int j = blockIdx.x;
  const S* r = IN + static_cast<size_t>(j) * d;
  const S* v = IN + static_cast<size_t>(m + j) * d;
  const S* g = OUT + static_cast<size_t>(j) * d;
  S Mh = 0, q = 0;
  for (int i = threadIdx.x; i < d; i += kThreads) {
    Mh = dev_fma(r[i], g[i], Mh);
    q = dev_fma(g[i], v[i], q);
  }
  Mh = block_sum(Mh, red);
  q = block_sum(q, red);
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
bool forward_batch(const S* H, const S* w0, const S* wstar, int d, const double* etas, int m, std::int64_t t,
                   bool scaled, ColumnResult* out, std::string* error) {
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
  Buffers buf;
  const size_t dd = static_cast<size_t>(d), mm = static_cast<size_t>(m);
  S* dH = buf.alloc<S>(dd * dd, &err);
  S* dW = err == cudaSuccess ? buf.alloc<S>(dd * mm, &err) : nullptr;
  S* dIN = err == cudaSuccess ? buf.alloc<S>(dd * 2 * mm, &err) : nullptr;
  S* dOUT = err == cudaSuccess ? buf.alloc<S>(dd * 2 * mm, &err) : nullptr;
  S* dws = err == cudaSuccess ? buf.alloc<S>(dd, &err) : nullptr;
  S* doff = err == cudaSuccess ? buf.alloc<S>(mm, &err) : nullptr;
  double* detas = err == cudaSuccess ? buf.alloc<double>(mm, &err) : nullptr;
  ColumnState* dcs = err == cudaSuccess ? buf.alloc<ColumnState>(mm, &err) : nullptr;
  ColumnResult* dres = err == cudaSuccess ? buf.alloc<ColumnResult>(mm, &err) : nullptr;
  if (err != cudaSuccess) {
    *error = std::string("cudaMalloc: ") + cudaGetErrorString(err);
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
  std::vector<ColumnState> cs(mm, ColumnState{k0, k0, 0, -1});
  check(cudaMemcpy(dH, H, dd * dd * sizeof(S), cudaMemcpyHostToDevice), "copy H");
  check(cudaMemcpy(dW, W.data(), dd * mm * sizeof(S), cudaMemcpyHostToDevice), "copy W");
  check(cudaMemcpy(dIN, in.data(), dd * 2 * mm * sizeof(S), cudaMemcpyHostToDevice), "copy IN");
  check(cudaMemcpy(dws, wstar, dd * sizeof(S), cudaMemcpyHostToDevice), "copy w*");
  check(cudaMemcpy(doff, offs.data(), mm * sizeof(S), cudaMemcpyHostToDevice), "copy off");
  check(cudaMemcpy(detas, etas, mm * sizeof(double), cudaMemcpyHostToDevice), "copy etas");
  check(cudaMemcpy(dcs, cs.data(), mm * sizeof(ColumnState), cudaMemcpyHostToDevice), "copy state");
  if (err != cudaSuccess) return false;
  const dim3 tb(kTile, kTile);
  const dim3 grid2((d + kTile - 1) / kTile, (2 * m + kTile - 1) / kTile);
  const dim3 grid1((d + kTile - 1) / kTile, (m + kTile - 1) / kTile);
  for (std::int64_t tau = 0; tau < t; ++tau) {
    gemm_kernel<S><<<grid2, tb>>>(dH, dIN, dOUT, d, 2 * m);
    step_kernel<S><<<m, kThreads>>>(dW, dIN, dOUT, dws, detas, doff, dcs, d, m, tau, scaled);
    if ((tau & 255) == 0 && !check(cudaGetLastError(), "kernel launch")) return false;
  }
  gemm_kernel<S><<<grid1, tb>>>(dH, dIN, dOUT, d, m);
  final_kernel<S><<<m, kThreads>>>(dIN, dOUT, dcs, dres, d, m, t);
  check(cudaGetLastError(), "kernel launch");
  check(cudaDeviceSynchronize(), "synchronize");
  check(cudaMemcpy(out, dres, mm * sizeof(ColumnResult), cudaMemcpyDeviceToHost), "copy results");
  return err == cudaSuccess;
}

template bool forward_batch<float>(const float*, const float*, const float*, int, const double*, int, std::int64_t,
                                   bool, ColumnResult*, std::string*);
template bool forward_batch<double>(const double*, const double*, const double*, int, const double*, int,
                                    std::int64_t, bool, ColumnResult*, std::string*);

}  // namespace metastep::cuda
