// Hand-written per-coordinate kernels of the optimizer MLP's first layer (31 → 32), the bulk of
// the learned optimizer's cost: one pass over the coordinates with the 22×32 weight block in
// L1, no packing. The loops have a fixed order of operations (no reassociation, no FMA
// contraction), so the AVX2 build of a kernel and the portable one give bitwise identical
// results; the AVX2 one is chosen at run time when the CPU has it. Raw pointers, no Eigen: the
// target-specific code never shares an inline function with the rest of the library.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace metastep::nn::kernel {

constexpr int kIn = 22, kOut = 32;

// The kernels below keep their accumulators in GCC vector-extension registers (32 bytes: 8
// floats or 4 doubles; element-wise IEEE operations, lowered to AVX/AVX-512 or to pairs of SSE2
// operations as the target allows) and process several coordinates at once. Every output
// element still sums its terms one at a time in a fixed order, so the blocking and the vector
// width change no result bit; they let independent accumulator chains hide the latency of the
// additions (the one-row scalar loops were bound by it and kept their accumulators in memory).
template <class S>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float V __attribute__((vector_size(32)));
  static constexpr int n = 8, rows = 4;
};
template <>
struct Lanes<double> {
  typedef double V __attribute__((vector_size(32)));
  static constexpr int n = 4, rows = 2;
};

template <class V, class S>
inline __attribute__((always_inline)) V vload(const S* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <class V, class S>
inline __attribute__((always_inline)) void vstore(S* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}
// every lane x (x − (+0) is x exactly, −0 and NaN included; compiles to one broadcast)
template <class V, class S>
inline __attribute__((always_inline)) V vsplat(S x) {
  return x - V{};
}

// H(i, :) = bias + Σ_c F(c·ldf + i)·W(c, :) (c in order), H row-major P × 32, W row-major 22 × 32.
template <class S, int R>
inline __attribute__((always_inline)) void hidden_forward_rows(const S* F, std::ptrdiff_t ldf, std::ptrdiff_t i0,
                                                               const S* W, const S* bias, S* H) {
  using V = typename Lanes<S>::V;
  constexpr int L = Lanes<S>::n, NV = kOut / L;
  V h[R][NV];
  for (int q = 0; q < NV; ++q) {
    const V b = vload<V>(bias + q * L);
    for (int r = 0; r < R; ++r) h[r][q] = b;
  }
  for (int c = 0; c < kIn; ++c) {
    const S* w = W + c * kOut;
    V wv[NV];
    for (int q = 0; q < NV; ++q) wv[q] = vload<V>(w + q * L);
    for (int r = 0; r < R; ++r) {
      const V f = vsplat<V>(F[c * ldf + i0 + r]);
      for (int q = 0; q < NV; ++q) h[r][q] += f * wv[q];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < NV; ++q) vstore(H + (i0 + r) * kOut + q * L, h[r][q]);
}

template <class S>
inline __attribute__((always_inline)) void hidden_forward_impl(const S* F, std::ptrdiff_t ldf, std::ptrdiff_t P,
                                                               const S* W, const S* bias, S* H) {
  constexpr int R = Lanes<S>::rows;
  std::ptrdiff_t i = 0;
  for (; i + R <= P; i += R) hidden_forward_rows<S, R>(F, ldf, i, W, bias, H);
  for (; i < P; ++i) hidden_forward_rows<S, 1>(F, ldf, i, W, bias, H);
}

// Fb(c·ldf + i) = Σ_j Hb(i, j)·W(c, j), summed over j in order; Wt is W transposed (32 × 24,
// columns 22, 23 zero), Hb row-major P × 32.
constexpr int kPad = 24;
template <class S, int R>
inline __attribute__((always_inline)) void hidden_backward_rows(const S* Hb, std::ptrdiff_t i0, const S* Wt, S* Fb,
                                                                std::ptrdiff_t ldf) {
  using V = typename Lanes<S>::V;
  constexpr int L = Lanes<S>::n, NV = kPad / L;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < NV; ++q) acc[r][q] = vsplat<V>(S(0));
  for (int j = 0; j < kOut; ++j) {
    const S* w = Wt + j * kPad;
    V wv[NV];
    for (int q = 0; q < NV; ++q) wv[q] = vload<V>(w + q * L);
    for (int r = 0; r < R; ++r) {
      const V v = vsplat<V>(Hb[(i0 + r) * kOut + j]);
      for (int q = 0; q < NV; ++q) acc[r][q] += v * wv[q];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < NV; ++q)
      for (int k = 0; k < L; ++k) {
        const int c = q * L + k;
        if (c < kIn) Fb[c * ldf + i0 + r] = acc[r][q][k];
      }
}

template <class S>
inline __attribute__((always_inline)) void hidden_backward_impl(const S* Hb, std::ptrdiff_t P, const S* Wt, S* Fb,
                                                                std::ptrdiff_t ldf) {
  constexpr int R = Lanes<S>::rows;
  std::ptrdiff_t i = 0;
  for (; i + R <= P; i += R) hidden_backward_rows<S, R>(Hb, i, Wt, Fb, ldf);
  for (; i < P; ++i) hidden_backward_rows<S, 1>(Hb, i, Wt, Fb, ldf);
}

// G(c, :) += Σ_i F(c·ldf + i)·Hb(i, :), summed over i in order (G row-major 22 × 32). Blocked
// over c (kCB rows of G in registers) and over i (chunks of Hb that stay in L1); each G(c, j)
// still adds its P terms in order of i, starting from 0, and is added to G at the end.
template <class S>
inline __attribute__((always_inline)) void weight_grad_impl(const S* F, std::ptrdiff_t ldf, std::ptrdiff_t P,
                                                            const S* Hb, S* G) {
  using V = typename Lanes<S>::V;
  constexpr int L = Lanes<S>::n, NV = kOut / L;
  constexpr int kCB = sizeof(S) == 4 ? 2 : 1;  // rows of G per register block (kIn % kCB == 0)
  constexpr std::ptrdiff_t kChunk = 128;
  V acc[kIn][NV];
  for (int c = 0; c < kIn; ++c)
    for (int q = 0; q < NV; ++q) acc[c][q] = vsplat<V>(S(0));
  for (std::ptrdiff_t i0 = 0; i0 < P; i0 += kChunk) {
    const std::ptrdiff_t i1 = i0 + kChunk < P ? i0 + kChunk : P;
    for (int c0 = 0; c0 < kIn; c0 += kCB) {
      V a[kCB][NV];
      for (int cb = 0; cb < kCB; ++cb)
        for (int q = 0; q < NV; ++q) a[cb][q] = acc[c0 + cb][q];
      for (std::ptrdiff_t i = i0; i < i1; ++i) {
        const S* hb = Hb + i * kOut;
        V hv[NV];
        for (int q = 0; q < NV; ++q) hv[q] = vload<V>(hb + q * L);
        for (int cb = 0; cb < kCB; ++cb) {
          const V f = vsplat<V>(F[(c0 + cb) * ldf + i]);
          for (int q = 0; q < NV; ++q) a[cb][q] += f * hv[q];
        }
      }
      for (int cb = 0; cb < kCB; ++cb)
        for (int q = 0; q < NV; ++q) acc[c0 + cb][q] = a[cb][q];
    }
  }
  for (int c = 0; c < kIn; ++c)
    for (int q = 0; q < NV; ++q) {
      V g = vload<V>(G + c * kOut + q * L);
      g += acc[c][q];
      vstore(G + c * kOut + q * L, g);
    }
}

// Adjoint of the second layer out(i, k) = b2_k + Σ_j relu(Hpre(i, j))·W2(j, k), k = 0, 1, given
// oa(i) = d/dout(i, 0), ob(i) = d/dout(i, 1): Hb(i, j) = [Hpre(i, j) > 0]·(oa·W2(j, 0) + ob·W2(j, 1)),
// W2b(j, k) += Σ_i relu(Hpre(i, j))·o_k(i), hsum(j) += Σ_i Hb(i, j) (sums over i in order).
template <class S>
inline __attribute__((always_inline)) void output_backward_impl(const S* Hpre, const S* oa, const S* ob,
                                                                std::ptrdiff_t P, const S* W2, S* Hb, S* W2b,
                                                                S* hsum) {
  S w0[kOut], w1[kOut], g0[kOut], g1[kOut], hs[kOut];
  for (int j = 0; j < kOut; ++j) {
    w0[j] = W2[2 * j];
    w1[j] = W2[2 * j + 1];
    g0[j] = g1[j] = hs[j] = S(0);
  }
  for (std::ptrdiff_t i = 0; i < P; ++i) {
    const S a = oa[i], b = ob[i];
    const S* h = Hpre + i * kOut;
    S* hb = Hb + i * kOut;
    for (int j = 0; j < kOut; ++j) {
      const bool on = h[j] > S(0);
      const S r = on ? h[j] : S(0);
      const S v = on ? a * w0[j] + b * w1[j] : S(0);
      hb[j] = v;
      g0[j] += r * a;
      g1[j] += r * b;
      hs[j] += v;
    }
  }
  for (int j = 0; j < kOut; ++j) {
    W2b[2 * j] += g0[j];
    W2b[2 * j + 1] += g1[j];
    hsum[j] += hs[j];
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define METASTEP_NN_DISPATCH 1
template <class S>
__attribute__((target("avx2"))) inline void hidden_forward_avx2(const S* F, std::ptrdiff_t ldf, std::ptrdiff_t P,
                                                                 const S* W, const S* bias, S* H) {
  hidden_forward_impl(F, ldf, P, W, bias, H);
}
template <class S>
__attribute__((target("avx2"))) inline void hidden_backward_avx2(const S* Hb, std::ptrdiff_t P, const S* Wt, S* Fb,
                                                                  std::ptrdiff_t ldf) {
  hidden_backward_impl(Hb, P, Wt, Fb, ldf);
}
template <class S>
__attribute__((target("avx2"))) inline void weight_grad_avx2(const S* F, std::ptrdiff_t ldf, std::ptrdiff_t P,
                                                              const S* Hb, S* G) {
  weight_grad_impl(F, ldf, P, Hb, G);
}
template <class S>
__attribute__((target("avx2"))) inline void output_backward_avx2(const S* Hpre, const S* oa, const S* ob,
                                                                  std::ptrdiff_t P, const S* W2, S* Hb, S* W2b,
                                                                  S* hsum) {
  output_backward_impl(Hpre, oa, ob, P, W2, Hb, W2b, hsum);
}
inline bool have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#else
inline bool have_avx2() { return false; }
#endif

// Which build of the kernels runs: 1 the AVX2 one where the CPU has it (default), 0 the
// portable one. The environment variable METASTEP_NN_KERNELS=portable sets 0 at start-up;
// set_portable() switches at run time (tests compare the two paths bit for bit).
inline std::atomic<int>& avx2_wanted() {
  static std::atomic<int> w{[] {
    const char* e = std::getenv("METASTEP_NN_KERNELS");
    return (e && std::strcmp(e, "portable") == 0) ? 0 : 1;
  }()};
  return w;
}
inline void set_portable(bool portable) { avx2_wanted().store(portable ? 0 : 1, std::memory_order_relaxed); }
// true when the AVX2 build of the kernels is the one that runs
inline bool use_avx2() { return have_avx2() && avx2_wanted().load(std::memory_order_relaxed) == 1; }

template <class S>
void hidden_forward(const S* F, std::ptrdiff_t ldf, std::ptrdiff_t P, const S* W, const S* bias, S* H) {
#ifdef METASTEP_NN_DISPATCH
  if (use_avx2()) return hidden_forward_avx2(F, ldf, P, W, bias, H);
#endif
  hidden_forward_impl(F, ldf, P, W, bias, H);
}

template <class S>
void hidden_backward(const S* Hb, std::ptrdiff_t P, const S* Wt, S* Fb, std::ptrdiff_t ldf) {
#ifdef METASTEP_NN_DISPATCH
  if (use_avx2()) return hidden_backward_avx2(Hb, P, Wt, Fb, ldf);
#endif
  hidden_backward_impl(Hb, P, Wt, Fb, ldf);
}

template <class S>
void weight_grad(const S* F, std::ptrdiff_t ldf, std::ptrdiff_t P, const S* Hb, S* G) {
#ifdef METASTEP_NN_DISPATCH
  if (use_avx2()) return weight_grad_avx2(F, ldf, P, Hb, G);
#endif
  weight_grad_impl(F, ldf, P, Hb, G);
}

template <class S>
void output_backward(const S* Hpre, const S* oa, const S* ob, std::ptrdiff_t P, const S* W2, S* Hb, S* W2b,
                     S* hsum) {
#ifdef METASTEP_NN_DISPATCH
  if (use_avx2()) return output_backward_avx2(Hpre, oa, ob, P, W2, Hb, W2b, hsum);
#endif
  output_backward_impl(Hpre, oa, ob, P, W2, Hb, W2b, hsum);
}

}  // namespace metastep::nn::kernel
