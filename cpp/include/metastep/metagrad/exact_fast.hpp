// Exact mode without refinement (issue 8): for sweeps over thousands of step sizes.
//
// The training loss of a quadratic needs only the eigenvalues lambda_i of H and the
// projections c_i = <u_i, w0 - w*>, not the eigenvectors. Householder tridiagonalisation
// H = Q T Q^T carries b = Q^T (w0 - w*) along; implicit QL iterations with Wilkinson shifts then
// diagonalise T, and their plane rotations are applied to b alone: O(d^3) flops once (no
// eigenvector matrix, no refinement in a wider type), O(d^2) after.
//
// Each (eta, t) is evaluated in double in the log domain (O(d), logarithms of the eigenvalues
// precomputed, terms more than 2^-64 below the largest skipped without an exponential). The
// price of the speed is accuracy: eigenvalues carry the decomposition's error, about
// eps ||H||, which the result multiplies by 2 t eta / |1 - eta lambda|, and t log|1 - eta lambda|
// is formed in double; mode "exact" with refinement remains the reference.
#pragma once
#include <Eigen/Eigenvalues>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "exact.hpp"
#include "scaled.hpp"

namespace metastep {

struct FastSpectrum {
  std::vector<double> lam, loglam, logW;  // components with a non-zero weight
  double L = 0, alpha = 0;
  std::string problem;  // non-empty: the decomposition could not be trusted (why)
};

namespace detail {

// Eigenvalues of the symmetric tridiagonal (diag, sub) and the rotated vector y (on entry the
// vector in T's basis, on exit its components along T's eigenvectors).
template <class S>
void tridiagonal_ql(std::vector<S>& dg, std::vector<S>& e, std::vector<S>& y) {
  const Index n = static_cast<Index>(dg.size());
  e.resize(static_cast<size_t>(n), S(0));
  e[static_cast<size_t>(n - 1)] = S(0);
  const S eps = std::numeric_limits<S>::epsilon();
  auto at = [](std::vector<S>& v, Index i) -> S& { return v[static_cast<size_t>(i)]; };
  for (Index l = 0; l < n; ++l) {
    int iter = 0;
    while (true) {
      Index m = l;
      for (; m < n - 1; ++m) {
        const S dd = std::abs(at(dg, m)) + std::abs(at(dg, m + 1));
        if (std::abs(at(e, m)) <= eps * dd) break;
      }
      if (m == l) break;
      if (++iter > 100) throw std::runtime_error("tridiagonal QL iteration did not converge");
      S g = (at(dg, l + 1) - at(dg, l)) / (S(2) * at(e, l));
      S r = std::hypot(g, S(1));
      g = at(dg, m) - at(dg, l) + at(e, l) / (g + std::copysign(r, g));
      S s = 1, c = 1, p = 0;
      bool deflated = false;
      for (Index i = m - 1; i >= l; --i) {
        const S f = s * at(e, i), b = c * at(e, i);
        r = std::hypot(f, g);
        at(e, i + 1) = r;
        if (r == S(0)) {  // the rotation underflowed: split the problem here
          at(dg, i + 1) -= p;
          at(e, m) = S(0);
          deflated = true;
          break;
        }
        s = f / r;
        c = g / r;
        g = at(dg, i + 1) - p;
        r = (at(dg, i) - g) * s + S(2) * c * b;
        p = s * r;
        at(dg, i + 1) = g + p;
        g = c * r - b;
        const S yi1 = at(y, i + 1), yi = at(y, i);
        at(y, i + 1) = s * yi + c * yi1;
        at(y, i) = c * yi - s * yi1;
      }
      if (deflated) continue;
      at(dg, l) -= p;
      at(e, l) = g;
      at(e, m) = S(0);
    }
  }
}

}  // namespace detail

template <class S>
FastSpectrum make_fast_spectrum(const Quadratic<S>& p) {
  using namespace detail;
  FastSpectrum sp;
  const Index d = p.dim();
  const int k = scale_exponent<S>(p.H());
  const ColMat<S> Hs = scaled_copy<S>(p.H(), k);  // H = 2^k Hs exactly
  const Vec<S> b = p.w0() - p.w_star();
  std::vector<S> dg(static_cast<size_t>(d)), e(static_cast<size_t>(d), S(0)), y(static_cast<size_t>(d));
  if (d == 1) {
    dg[0] = Hs(0, 0);
    y[0] = b[0];
  } else {
    Eigen::Tridiagonalization<ColMat<S>> tri(Hs);
    const Vec<S> z = tri.matrixQ().adjoint() * b;
    for (Index i = 0; i < d; ++i) {
      dg[static_cast<size_t>(i)] = tri.diagonal()[i];
      y[static_cast<size_t>(i)] = z[i];
      if (i + 1 < d) e[static_cast<size_t>(i)] = tri.subDiagonal()[i];
    }
    tridiagonal_ql(dg, e, y);
  }
  bool first = true;
  for (Index i = 0; i < d; ++i) {
    double l = std::ldexp(static_cast<double>(dg[static_cast<size_t>(i)]), k);
    if (l < 0) l = 0;  // a PSD matrix: negative only by rounding
    if (first || l > sp.L) sp.L = l;
    if (first || l < sp.alpha) sp.alpha = l;
    first = false;
    const double c = std::abs(static_cast<double>(y[static_cast<size_t>(i)]));
    if (!(l > 0) || !(c > 0)) continue;
    sp.lam.push_back(l);
    sp.loglam.push_back(std::log(l));
    sp.logW.push_back(std::log(0.5) + std::log(l) + 2.0 * std::log(c));
  }
  for (size_t i = 0; i < sp.lam.size(); ++i)
    if (!std::isfinite(sp.lam[i]) || !std::isfinite(sp.logW[i]))
      sp.problem = "non-finite eigenvalue or weight (input outside the precision's range?)";
  return sp;
}

// log M, log|dM/deta| and sign for the training loss at (eta, t), in double. `buf` is scratch.
inline ExactPoint<double> exact_train_fast(const FastSpectrum& sp, double eta, Steps t, std::vector<double>& buf) {
  const size_t n = sp.lam.size();
  const double tt = static_cast<double>(t);
  const double log2t = std::log(2.0 * tt);
  constexpr double NEG_INF = -std::numeric_limits<double>::infinity();
  constexpr double SKIP = -45.0;  // e^-45 < 2^-64: below double's resolution of the sum
  buf.resize(3 * n);
  double* lv = buf.data();   // log of each value term
  double* ld = lv + n;       // log of each derivative term
  double* sd = ld + n;       // sign of each derivative term
  double mv = NEG_INF, md = NEG_INF;
  for (size_t i = 0; i < n; ++i) {
    const double el = eta * sp.lam[i], q = 1.0 - el;
    if (q == 0.0) {  // the term vanishes (t >= 1)
      lv[i] = ld[i] = NEG_INF;
      sd[i] = 0;
      continue;
    }
    const double lq = (el < 0.5 && el > -0.5) ? std::log1p(-el) : std::log(std::abs(q));
    lv[i] = sp.logW[i] + 2.0 * tt * lq;
    // d/deta W q^(2t) = -2t lambda W q^(2t-1); 2t - 1 is odd: the sign is -sign(q)
    ld[i] = sp.logW[i] + log2t + sp.loglam[i] + (2.0 * tt - 1.0) * lq;
    sd[i] = q > 0 ? -1.0 : 1.0;
    mv = std::max(mv, lv[i]);
    md = std::max(md, ld[i]);
  }
  ExactPoint<double> e;
  if (mv == NEG_INF) return e;
  double sv = 0, pos = 0, neg = 0;
  for (size_t i = 0; i < n; ++i) {
    const double a = lv[i] - mv;
    if (a > SKIP) sv += std::exp(a);
    const double b = ld[i] - md;
    if (sd[i] != 0 && b > SKIP) (sd[i] > 0 ? pos : neg) += std::exp(b);
  }
  e.log_M = mv + std::log(sv);
  e.sign_M = 1;
  const double diff = pos - neg;
  if (diff != 0) {
    e.log_dM = md + std::log(std::abs(diff));
    e.sign_dM = diff > 0 ? 1 : -1;
  }
  return e;
}

inline Outcome exact_fast_outcome(const FastSpectrum& sp, double eta, const MetaOptions& opt, std::vector<double>& buf) {
  if (!sp.problem.empty()) {
    Outcome out;
    out.diag.fail(Quantity::loss, "non-finite", 0);
    out.diag.kind = "non-finite (" + sp.problem + ")";
    out.value = Num::of(sm::quiet_nan<double>());
    out.grad = Num::of(sm::quiet_nan<double>());
    return out;
  }
  const ExactPoint<double> e = exact_train_fast(sp, eta, opt.steps, buf);
  // the objective from log M and log|dM| (the same assembly as the scaled mode's)
  return detail::scaled_outcome<double>(e.log_M, e.sign_M > 0, e.log_dM, e.sign_dM, opt, Diagnostics{});
}

}  // namespace metastep
