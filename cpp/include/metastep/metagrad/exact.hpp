// Exact mode (SPEC §4.4): closed form through one eigen-decomposition, evaluated in the log
// domain so that no intermediate overflows or underflows at any t.
//
// Every supported problem is reduced to a spectral form (after one O(d^3) decomposition):
//   train loss   f(w_t) = floor + sum_i W_i (1 - eta lambda_i)^(2t)
//   iterate      w_t = wbar + sum_i c_i (1 - eta lambda_i)^t v_i
//   valid loss   f'(w_t) = 1/(2n') || r_inf + B z ||^2,  z_i = c_i (1 - eta lambda_i)^t,
//                r_inf = X' wbar - y',  B = X' V
// Each (eta, t) then costs O(k) for the training loss and O(n' k) for the validation loss.
// Eigenvalues are refined as Rayleigh quotients accumulated in a wider type: the error of
// lambda_i is multiplied by about 2 t eta / |1 - eta lambda_i| in the result.
#pragma once
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common.hpp"

namespace metastep {

template <class S>
struct Spectrum {
  using Wide = typename ScalarTraits<S>::Wide;
  std::vector<Wide> lam;  // eigenvalues (refined), of the components in the training loss
  Vec<S> W;               // training-loss weights
  S floor = 0;            // constant part of the training loss
  S L = 0, alpha = 0;     // largest and smallest eigenvalue of the Hessian
  // Validation part: components that move (lambda > 0).
  bool has_valid = false;
  std::vector<Wide> lam_v;
  Vec<S> c;
  Mat<S> B;
  Vec<S> r_inf;
  Index n_valid = 0;
};

namespace detail {

template <class S>
using ColMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

// Eigen-decomposition of a symmetric matrix, ascending eigenvalues.
template <class S>
Eigen::SelfAdjointEigenSolver<ColMat<S>> eig(const ColMat<S>& A) {
  Eigen::SelfAdjointEigenSolver<ColMat<S>> es(A, Eigen::ComputeEigenvectors);
  if (es.info() != Eigen::Success) throw std::runtime_error("eigen-decomposition did not converge");
  return es;
}

// Rayleigh quotients u_i^T A u_i / u_i^T u_i accumulated in the wide type, where A = M^T M / n
// (gram = true, M given) or A = M (gram = false).
template <class S, class Wide = typename ScalarTraits<S>::Wide>
std::vector<Wide> rayleigh(const Mat<S>& M, bool gram, Index n, const ColMat<S>& U) {
  using WM = Eigen::Matrix<Wide, Eigen::Dynamic, Eigen::Dynamic>;
  const WM Mw = M.template cast<Wide>();
  const WM Uw = U.template cast<Wide>();
  const WM P = Mw * Uw;
  std::vector<Wide> lam(U.cols());
  for (Index i = 0; i < U.cols(); ++i) {
    const Wide un = Uw.col(i).squaredNorm();
    lam[i] = gram ? P.col(i).squaredNorm() / (Wide(n) * un) : Uw.col(i).dot(P.col(i)) / un;
    if (lam[i] < Wide(0)) lam[i] = Wide(0);  // a PSD matrix: negative only by rounding
  }
  return lam;
}

template <class S>
void add_validation(Spectrum<S>& sp, const LeastSquares<S>& p, const ColMat<S>& V, const Vec<S>& c_all,
                    const std::vector<typename Spectrum<S>::Wide>& lam, S tol) {
  std::vector<Index> keep;
  for (Index i = 0; i < V.cols(); ++i)
    if (S(lam[i]) > tol) keep.push_back(i);
  const Index k = static_cast<Index>(keep.size());
  ColMat<S> Vk(p.dim(), k);
  sp.c.resize(k);
  sp.lam_v.resize(k);
  for (Index j = 0; j < k; ++j) {
    Vk.col(j) = V.col(keep[j]);
    sp.c[j] = c_all[keep[j]];
    sp.lam_v[j] = lam[keep[j]];
  }
  const Vec<S> wbar = p.w0() - Vk * sp.c;
  if (p.has_valid()) {
    sp.has_valid = true;
    sp.n_valid = p.n_valid();
    sp.B = p.X_valid() * Vk;
    sp.r_inf = p.X_valid() * wbar - p.y_valid();
  }
}

}  // namespace detail

template <class S>
Spectrum<S> make_spectrum(const Quadratic<S>& p) {
  using namespace detail;
  Spectrum<S> sp;
  const ColMat<S> H = p.H();
  auto es = eig<S>(H);
  const ColMat<S>& U = es.eigenvectors();
  sp.lam = rayleigh<S>(p.H(), false, 1, U);
  const Vec<S> c = U.transpose() * (p.w0() - p.w_star());
  sp.W.resize(c.size());
  for (Index i = 0; i < c.size(); ++i) sp.W[i] = S(0.5) * S(sp.lam[i]) * c[i] * c[i];
  sp.L = S(*std::max_element(sp.lam.begin(), sp.lam.end()));
  sp.alpha = S(*std::min_element(sp.lam.begin(), sp.lam.end()));
  return sp;
}

template <class S>
Spectrum<S> make_spectrum(const LeastSquares<S>& p) {
  using namespace detail;
  using Wide = typename Spectrum<S>::Wide;
  Spectrum<S> sp;
  const Index n = p.n(), d = p.dim();
  const Vec<S> r0 = p.X() * p.w0() - p.y();
  const S eps = sm::epsilon<S>();
  if (n <= d) {
    // Residual form: r_t = (I - eta K)^t r_0 with K = X X^T / n (n x n).
    const ColMat<S> K = (p.X() * p.X().transpose()) / S(n);
    auto es = eig<S>(K);
    const ColMat<S>& P = es.eigenvectors();
    // Refined mu_j = ||X^T p_j||^2 / n.
    const Mat<S> Xt = p.X().transpose();
    const std::vector<Wide> mu = rayleigh<S>(Xt, true, n, P);
    const Vec<S> proj = P.transpose() * r0;
    sp.lam = mu;
    sp.W.resize(n);
    for (Index j = 0; j < n; ++j) sp.W[j] = proj[j] * proj[j] / (S(2) * S(n));
    sp.L = S(*std::max_element(mu.begin(), mu.end()));
    sp.alpha = n < d ? S(0) : S(*std::min_element(mu.begin(), mu.end()));
    // Directions in w-space: v_j = X^T p_j / sqrt(n mu_j), c_j = <r0, p_j> / sqrt(n mu_j).
    const S tol = eps * S(std::max(n, d)) * sp.L;
    ColMat<S> V(d, n);
    Vec<S> c(n);
    for (Index j = 0; j < n; ++j) {
      const S m = S(mu[j]);
      if (m > tol) {
        const S s = sm::sqrt(S(n) * m);
        V.col(j) = Xt * P.col(j) / s;
        c[j] = proj[j] / s;
      } else {
        V.col(j).setZero();
        c[j] = 0;
      }
    }
    add_validation(sp, p, V, c, mu, tol);
  } else {
    const ColMat<S> H = (p.X().transpose() * p.X()) / S(n);
    auto es = eig<S>(H);
    const ColMat<S>& V = es.eigenvectors();
    const std::vector<Wide> lam = rayleigh<S>(p.X(), true, n, V);
    const Vec<S> g0 = p.X().transpose() * r0 / S(n);
    const Vec<S> proj = V.transpose() * g0;
    const S Lmax = S(*std::max_element(lam.begin(), lam.end()));
    const S tol = eps * S(std::max(n, d)) * Lmax;
    Vec<S> c(d);
    sp.lam.clear();
    std::vector<S> Wl;
    for (Index i = 0; i < d; ++i) {
      const S l = S(lam[i]);
      if (l > tol) {
        c[i] = proj[i] / l;
        sp.lam.push_back(lam[i]);
        Wl.push_back(S(0.5) * l * c[i] * c[i]);
      } else {
        c[i] = 0;
      }
    }
    sp.W = Eigen::Map<Vec<S>>(Wl.data(), static_cast<Index>(Wl.size()));
    sp.L = Lmax;
    sp.alpha = S(*std::min_element(lam.begin(), lam.end()));
    // Constant part: the training loss at the minimiser wbar nearest to w0.
    const Vec<S> wbar = p.w0() - V * c;
    sp.floor = (p.X() * wbar - p.y()).squaredNorm() / (S(2) * S(n));
    add_validation(sp, p, V, c, lam, tol);
  }
  return sp;
}

namespace detail {

// Signed log-sum-exp: sum_i sign_i exp(l_i), returned as (log|sum|, sign).
template <class W>
struct LogSum {
  std::vector<W> l;
  std::vector<int> s;
  void add(W log_abs, int sign) {
    if (sign == 0 || log_abs == -std::numeric_limits<W>::infinity()) return;
    l.push_back(log_abs);
    s.push_back(sign);
  }
  std::pair<W, int> result() const {
    if (l.empty()) return {-std::numeric_limits<W>::infinity(), 0};
    const W m = *std::max_element(l.begin(), l.end());
    W pos = 0, neg = 0;
    for (size_t i = 0; i < l.size(); ++i) (s[i] > 0 ? pos : neg) += std::exp(l[i] - m);
    const W diff = pos - neg;
    if (diff == W(0)) return {-std::numeric_limits<W>::infinity(), 0};
    return {m + std::log(std::fabs(diff)), diff > 0 ? 1 : -1};
  }
};

template <class W>
inline int parity_sign(int s, long double power) {  // s^power for an integer power >= 0
  if (s >= 0) return s == 0 ? (power == 0 ? 1 : 0) : 1;
  return std::fmod(power, 2.0L) == 0 ? 1 : -1;
}

}  // namespace detail

// log|M|, log|dM/deta| and the sign of dM/deta for one (eta, t), exactly.
struct ExactPoint {
  long double log_M = 0;
  int sign_M = 0;
  long double log_dM = 0;
  int sign_dM = 0;
};

// Wide evaluation of log|1 - eta lambda| and its sign.
template <class Wide>
inline std::pair<Wide, int> log_one_minus(Wide eta, Wide lam) {
  const Wide q = Wide(1) - eta * lam;
  if (q == Wide(0)) return {-std::numeric_limits<Wide>::infinity(), 0};
  const Wide el = eta * lam;
  const Wide lq = (el < Wide(0.5) && el > Wide(-0.5)) ? std::log1p(-el) : std::log(std::fabs(q));
  return {lq, q > 0 ? 1 : -1};
}

template <class S>
ExactPoint exact_train(const Spectrum<S>& sp, S eta_s, Steps t) {
  using Wide = typename Spectrum<S>::Wide;
  using detail::parity_sign;
  const Wide eta = Wide(eta_s), tt = Wide(static_cast<long double>(t));
  const long double two_t = 2.0L * static_cast<long double>(t);
  detail::LogSum<Wide> val, der;
  if (sp.floor > S(0)) val.add(std::log(Wide(sp.floor)), 1);
  for (size_t i = 0; i < sp.lam.size(); ++i) {
    const Wide Wi = Wide(sp.W[static_cast<Index>(i)]);
    if (!(Wi > 0)) continue;
    const Wide lam = sp.lam[i];
    const auto [lq, sq] = log_one_minus(eta, lam);
    if (sq == 0) continue;  // (1 - eta lambda) = 0: the term vanishes (t >= 1)
    const Wide lW = std::log(Wi);
    val.add(lW + Wide(2) * tt * lq, 1);
    if (lam > 0) der.add(lW + std::log(Wide(2) * tt) + std::log(lam) + (Wide(2) * tt - Wide(1)) * lq,
                         -parity_sign<Wide>(sq, two_t - 1));
  }
  ExactPoint e;
  auto v = val.result();
  auto g = der.result();
  e.log_M = static_cast<long double>(v.first);
  e.sign_M = v.second;
  e.log_dM = static_cast<long double>(g.first);
  e.sign_dM = g.second;
  return e;
}

template <class S>
ExactPoint exact_valid(const Spectrum<S>& sp, S eta_s, Steps t) {
  using Wide = typename Spectrum<S>::Wide;
  using detail::parity_sign;
  if (!sp.has_valid) throw std::invalid_argument("this task has no validation set");
  const Wide eta = Wide(eta_s), tt = Wide(static_cast<long double>(t));
  const long double tl = static_cast<long double>(t);
  const Index k = sp.c.size();
  const Wide NEG_INF = -std::numeric_limits<Wide>::infinity();
  std::vector<Wide> lz(k, NEG_INF), ld(k, NEG_INF);
  std::vector<int> sz(k, 0), sd(k, 0);
  Wide mz = NEG_INF, md = NEG_INF;
  for (Index i = 0; i < k; ++i) {
    const Wide ci = Wide(sp.c[i]);
    if (ci == 0) continue;
    const Wide lam = sp.lam_v[i];
    const auto [lq, sq] = log_one_minus(eta, lam);
    const int sc = ci > 0 ? 1 : -1;
    const Wide lc = std::log(std::fabs(ci));
    if (sq != 0) {
      lz[i] = lc + tt * lq;
      sz[i] = sc * parity_sign<Wide>(sq, tl);
    }
    // dz_i/deta = -t lambda_i c_i (1 - eta lambda_i)^(t-1)
    if (t == 1) {
      ld[i] = std::log(lam) + lc;
      sd[i] = -sc;
    } else if (sq != 0) {
      ld[i] = std::log(tt) + std::log(lam) + lc + (tt - Wide(1)) * lq;
      sd[i] = -sc * parity_sign<Wide>(sq, tl - 1);
    }
    if (sz[i] != 0) mz = std::max(mz, lz[i]);
    if (sd[i] != 0) md = std::max(md, ld[i]);
  }
  const Wide rnorm = Wide(sp.r_inf.norm());
  const Wide rho = rnorm > 0 ? std::log(rnorm) : NEG_INF;
  const Wide m = std::max(rho, mz);
  ExactPoint e;
  if (m == NEG_INF) {  // residual exactly zero for every t
    e.log_M = -std::numeric_limits<long double>::infinity();
    e.sign_M = 0;
    e.log_dM = -std::numeric_limits<long double>::infinity();
    e.sign_dM = 0;
    return e;
  }
  // r~ = r_inf e^{-m} + B zhat e^{mz - m}: every factor <= 1, nothing overflows.
  Vec<S> zh = Vec<S>::Zero(k), dh = Vec<S>::Zero(k);
  for (Index i = 0; i < k; ++i) {
    if (sz[i] != 0) zh[i] = S(sz[i] * std::exp(lz[i] - m));
    if (sd[i] != 0) dh[i] = S(sd[i] * std::exp(ld[i] - md));
  }
  Vec<S> rt = sp.B * zh;
  if (rnorm > 0) rt += sp.r_inf * S(std::exp(rho - m) / rnorm);  // r_inf e^{-m}, norm <= 1
  const Wide nrm2 = Wide(rt.squaredNorm());
  e.log_M = static_cast<long double>(Wide(2) * m + std::log(nrm2) - std::log(Wide(2) * Wide(sp.n_valid)));
  e.sign_M = nrm2 > 0 ? 1 : 0;
  if (md == NEG_INF) {
    e.log_dM = -std::numeric_limits<long double>::infinity();
    e.sign_dM = 0;
  } else {
    const Wide q = Wide((sp.B.transpose() * rt).dot(dh));
    e.sign_dM = (q > 0) - (q < 0);
    e.log_dM = q != 0 ? static_cast<long double>(m + md + std::log(std::fabs(q)) - std::log(Wide(sp.n_valid)))
                      : -std::numeric_limits<long double>::infinity();
  }
  return e;
}

// Objective from the exact point, all in log form.
template <class S>
Outcome exact_outcome(const Spectrum<S>& sp, S eta, const MetaOptions& opt) {
  const ExactPoint e = opt.valid ? exact_valid(sp, eta, opt.steps) : exact_train(sp, eta, opt.steps);
  Outcome out;
  const long double t = static_cast<long double>(opt.steps);
  if (opt.objective == Objective::final_loss) {
    out.value = Num::of_log(e.log_M, e.sign_M);
    out.grad = Num::of_log(e.log_dM, e.sign_dM);
  } else {
    if (e.sign_M <= 0) {
      out.diag.fail(Quantity::meta_loss, "zero (log undefined)", opt.steps);
      out.value = Num::of(-std::numeric_limits<double>::infinity());
      out.grad = Num::of(std::numeric_limits<double>::quiet_NaN());
    } else {
      const long double G = e.log_M / t;
      out.value = Num::of(G);
      out.grad = Num::of_log(e.log_dM - std::log(t) - e.log_M, e.sign_dM);
    }
  }
  return out;
}

}  // namespace metastep
