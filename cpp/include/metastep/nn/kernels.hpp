// Hand-written per-coordinate kernels of the optimizer MLP's first layer (31 → 32), the bulk of
// the learned optimizer's cost: one pass over the coordinates with the 22×32 weight block in
// L1, no packing. The loops have a fixed order of operations (no reassociation, no FMA
// contraction), so the AVX2 build of a kernel and the portable one give bitwise identical
// results; the AVX2 one is chosen at run time when the CPU has it. Raw pointers, no Eigen: the
// target-specific code never shares an inline function with the rest of the library.
#pragma once
#include <cstddef>

namespace metastep::nn::kernel {

constexpr int kIn = 22, kOut = 32;

// H(i, :) = bias + Σ_c F(c·ldf + i)·W(c, :), H row-major P × 32, W row-major 22 × 32.
template <class S>
inline __attribute__((always_inline)) void hidden_forward_impl(const S* F, std::ptrdiff_t ldf, std::ptrdiff_t P,
                                                               const S* W, const S* bias, S* H) {
  for (std::ptrdiff_t i = 0; i < P; ++i) {
    S h[kOut];
    for (int j = 0; j < kOut; ++j) h[j] = bias[j];
    for (int c = 0; c < kIn; ++c) {
      const S f = F[c * ldf + i];
      const S* w = W + c * kOut;
      for (int j = 0; j < kOut; ++j) h[j] += f * w[j];
    }
    S* out = H + i * kOut;
    for (int j = 0; j < kOut; ++j) out[j] = h[j];
  }
}

// Fb(c·ldf + i) = Σ_j Hb(i, j)·W(c, j), summed over j in order; Wt is W transposed (32 × 24,
// columns 22, 23 zero), Hb row-major P × 32.
template <class S>
inline __attribute__((always_inline)) void hidden_backward_impl(const S* Hb, std::ptrdiff_t P, const S* Wt, S* Fb,
                                                                std::ptrdiff_t ldf) {
  constexpr int kPad = 24;
  for (std::ptrdiff_t i = 0; i < P; ++i) {
    S acc[kPad];
    for (int c = 0; c < kPad; ++c) acc[c] = S(0);
    const S* hb = Hb + i * kOut;
    for (int j = 0; j < kOut; ++j) {
      const S v = hb[j];
      const S* w = Wt + j * kPad;
      for (int c = 0; c < kPad; ++c) acc[c] += v * w[c];
    }
    for (int c = 0; c < kIn; ++c) Fb[c * ldf + i] = acc[c];
  }
}

// G(c, :) += Σ_i F(c·ldf + i)·Hb(i, :), summed over i in order (G row-major 22 × 32).
template <class S>
inline __attribute__((always_inline)) void weight_grad_impl(const S* F, std::ptrdiff_t ldf, std::ptrdiff_t P,
                                                            const S* Hb, S* G) {
  S acc[kIn * kOut];
  for (int k = 0; k < kIn * kOut; ++k) acc[k] = S(0);
  for (std::ptrdiff_t i = 0; i < P; ++i) {
    const S* hb = Hb + i * kOut;
    for (int c = 0; c < kIn; ++c) {
      const S f = F[c * ldf + i];
      S* a = acc + c * kOut;
      for (int j = 0; j < kOut; ++j) a[j] += f * hb[j];
    }
  }
  for (int k = 0; k < kIn * kOut; ++k) G[k] += acc[k];
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
#endif

template <class S>
void hidden_forward(const S* F, std::ptrdiff_t ldf, std::ptrdiff_t P, const S* W, const S* bias, S* H) {
#ifdef METASTEP_NN_DISPATCH
  if (have_avx2()) return hidden_forward_avx2(F, ldf, P, W, bias, H);
#endif
  hidden_forward_impl(F, ldf, P, W, bias, H);
}

template <class S>
void hidden_backward(const S* Hb, std::ptrdiff_t P, const S* Wt, S* Fb, std::ptrdiff_t ldf) {
#ifdef METASTEP_NN_DISPATCH
  if (have_avx2()) return hidden_backward_avx2(Hb, P, Wt, Fb, ldf);
#endif
  hidden_backward_impl(Hb, P, Wt, Fb, ldf);
}

template <class S>
void weight_grad(const S* F, std::ptrdiff_t ldf, std::ptrdiff_t P, const S* Hb, S* G) {
#ifdef METASTEP_NN_DISPATCH
  if (have_avx2()) return weight_grad_avx2(F, ldf, P, Hb, G);
#endif
  weight_grad_impl(F, ldf, P, Hb, G);
}

template <class S>
void output_backward(const S* Hpre, const S* oa, const S* ob, std::ptrdiff_t P, const S* W2, S* Hb, S* W2b,
                     S* hsum) {
#ifdef METASTEP_NN_DISPATCH
  if (have_avx2()) return output_backward_avx2(Hpre, oa, ob, P, W2, Hb, W2b, hsum);
#endif
  output_backward_impl(Hpre, oa, ob, P, W2, Hb, W2b, hsum);
}

}  // namespace metastep::nn::kernel
