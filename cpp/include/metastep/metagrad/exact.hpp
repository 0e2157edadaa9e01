// Exact mode (SPEC §4.4): closed form through one eigen-decomposition, evaluated in the log
// domain so that no intermediate overflows or underflows at any t.
//
// Every supported problem is reduced to a spectral form (after one O(d^3) decomposition):
//   train loss   f(w_t) = floor + sum_i W_i (1 - eta lambda_i)^(2t)
//   iterate      w_t = wbar + sum_i c_i (1 - eta lambda_i)^t v_i
//   valid loss   f'(w_t) = 1/(2n') || r_inf + B z ||^2,  z_i = c_i (1 - eta lambda_i)^t,
//                r_inf = X' wbar - y',  B = X' V
// Each (eta, t) then costs O(k) for the training loss and O(n' k) for the validation loss.
// The matrix is scaled by a power of two before the decomposition (exact; keeps Eigen's
// iteration inside the range whatever the magnitude of H), the weights W_i are kept as
// logarithms, and the eigenvalues are refined as Rayleigh quotients accumulated in a wider
// type: the error of lambda_i is multiplied by about 2 t eta / |1 - eta lambda_i| in the result.
#pragma once
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"

namespace metastep {

template <class S>
struct Spectrum {
  using Wide = typename ScalarTraits<S>::Wide;
  std::vector<Wide> lam;     // eigenvalues (refined) of the components of the training loss
  std::vector<Wide> logW;    // log of the training-loss weights (-inf for a zero weight)
  Wide log_floor = -sm::infinity<Wide>();  // log of the constant part of the training loss
  // the residual behind log_floor, X wbar - y, cancelled to below half of S's digits: the floor
  // is then mostly rounding noise of the decomposition (flagged where it matters for M)
  bool floor_cancelled = false;
  Wide L = 0, alpha = 0;     // largest and smallest eigenvalue of the Hessian
  // estimated absolute error of each lam (and lam_v): the result's sensitivity to it grows like
  // 2 t eta / |1 - eta lam|, which no precision removes when eta lam is within rounding of 1
  std::vector<Wide> dlam, dlam_v;
  std::string problem;       // non-empty: the decomposition could not be trusted (why)
  // Validation part: components that move (lambda > 0).
  bool has_valid = false;
  std::vector<Wide> lam_v;
  Vec<S> c;
  Mat<S> B;
  // the validation residual at the limit, r_inf = X' wbar - y', formed in the wide type (its
  // entries and norm can lie outside S's range): its direction in S and the log of its norm
  Vec<S> r_inf_dir;
  Wide log_r_inf = -sm::infinity<Wide>();
  // |X'| (|w0| + |V||c|) + |y'|: the size of the terms whose sum is r_inf (its rounding error
  // is about eps times this), for the cancellation check of the validation residual
  Eigen::Matrix<Wide, Eigen::Dynamic, 1> r_inf_mag;
  Index n_valid = 0;
};

namespace detail {

template <class S>
using ColMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

// Exponent k with max|A| = f 2^k, 1/2 <= f < 1 (0 for a zero matrix).
template <class S, class M>
int scale_exponent(const M& A) {
  S m = 0;
  for (Index i = 0; i < A.rows(); ++i)
    for (Index j = 0; j < A.cols(); ++j) m = std::max(m, sm::abs(A(i, j)));
  int k = 0;
  if (m > S(0) && sm::isfinite(m)) sm::frexp(m, &k);
  return k;
}

template <class S, class M>
ColMat<S> scaled_copy(const M& A, int k) {
  ColMat<S> out(A.rows(), A.cols());
  for (Index i = 0; i < A.rows(); ++i)
    for (Index j = 0; j < A.cols(); ++j) out(i, j) = sm::ldexp(S(A(i, j)), -k);
  return out;
}

// Eigen-decomposition of a symmetric matrix, ascending eigenvalues.
template <class S>
Eigen::SelfAdjointEigenSolver<ColMat<S>> eig(const ColMat<S>& A) {
  Eigen::SelfAdjointEigenSolver<ColMat<S>> es(A, Eigen::ComputeEigenvectors);
  if (es.info() != Eigen::Success) throw std::runtime_error("eigen-decomposition did not converge");
  return es;
}

// Rayleigh quotients u_i^T A u_i / u_i^T u_i accumulated in the wide type, where
// A = M^T M / n (gram = true) or A = M (gram = false); M already scaled.
template <class S, class Wide = typename ScalarTraits<S>::Wide>
std::vector<Wide> rayleigh(const ColMat<S>& M, bool gram, Index n, const ColMat<S>& U) {
  using WM = Eigen::Matrix<Wide, Eigen::Dynamic, Eigen::Dynamic>;
  const WM Mw = M.template cast<Wide>();
  const WM Uw = U.template cast<Wide>();
  const WM P = Mw * Uw;
  std::vector<Wide> lam(static_cast<size_t>(U.cols()));
  for (Index i = 0; i < U.cols(); ++i) {
    const Wide un = Uw.col(i).squaredNorm();
    Wide l = gram ? Wide(P.col(i).squaredNorm() / (Wide(n) * un)) : Wide(Uw.col(i).dot(P.col(i)) / un);
    if (l < Wide(0)) l = Wide(0);  // a PSD matrix: negative only by rounding
    lam[static_cast<size_t>(i)] = l;
  }
  return lam;
}

// log ||r|| of a wide vector with no overflow or underflow on the way (-inf for r = 0; NaN
// when an entry is NaN, +inf when one is infinite).
template <class W>
W log_norm(const Eigen::Matrix<W, Eigen::Dynamic, 1>& r) {
  W m = 0;
  for (Index i = 0; i < r.size(); ++i) {
    const W a = sm::abs(r[i]);
    if (sm::isnan(a)) return a;
    if (a > m) m = a;
  }
  if (!(m > W(0))) return -sm::infinity<W>();
  if (!sm::isfinite(m)) return m;
  W s = 0;
  for (Index i = 0; i < r.size(); ++i) {
    const W x = r[i] / m;
    s += x * x;
  }
  return sm::log(m) + W(0.5) * sm::log(s);
}

// X w - y formed in the wide type W (for float and double inputs it cannot overflow there).
template <class W, class S>
Eigen::Matrix<W, Eigen::Dynamic, 1> wide_residual(const Mat<S>& X, const Vec<S>& w, const Vec<S>& y) {
  return X.template cast<W>() * w.template cast<W>() - y.template cast<W>();
}

// |X| (|w0| + |V||c|) + |y| in the wide type: the size of the terms whose sum is X wbar - y with
// wbar = w0 - V c, so that residual's rounding error is about eps times it (cancellation checks).
template <class W, class S>
Eigen::Matrix<W, Eigen::Dynamic, 1> residual_scale(const Mat<S>& X, const Vec<S>& y, const Vec<S>& w0,
                                                   const ColMat<S>& V, const Vec<S>& c) {
  const Vec<S> wmag = w0.cwiseAbs() + V.cwiseAbs() * c.cwiseAbs();
  return X.cwiseAbs().template cast<W>() * wmag.template cast<W>() + y.cwiseAbs().template cast<W>();
}

// How an eigenvalue's error dl moves the terms built on it: the relative change of |1 - eta lam|
// (eta dl / |1 - eta lam|, to be multiplied by the power) and of lam itself (dl / lam).
template <class W>
std::pair<W, W> lam_sensitivity(const W& eta, const W& lam, const W& dl) {
  return {eta * dl / sm::abs(W(W(1) - eta * lam)), lam > W(0) ? W(dl / lam) : W(0)};
}

template <class S>
void check_spectrum(Spectrum<S>& sp) {
  for (size_t i = 0; i < sp.lam.size(); ++i)
    if (!sm::isfinite(sp.lam[i]) || sm::isnan(sp.logW[i]) || sp.logW[i] == sm::infinity<typename Spectrum<S>::Wide>())
      sp.problem = "non-finite eigenvalue or weight (input outside the precision's range?)";
  if (sm::isnan(sp.log_floor) || sp.log_floor == sm::infinity<typename Spectrum<S>::Wide>())
    sp.problem = "non-finite constant part of the loss (input outside the precision's range?)";
  if (sp.has_valid && (sm::isnan(sp.log_r_inf) || sp.log_r_inf == sm::infinity<typename Spectrum<S>::Wide>()))
    sp.problem = "non-finite validation residual (input outside the precision's range?)";
}

// Error estimate of eigenvalues refined as Rayleigh quotients in the wide type W from
// eigenvectors computed in S (matrix size m, largest eigenvalue L): the quotient's own
// rounding, about m eps_W L, plus the eigenvector error's second-order effect, r^2 / gap with
// r = eps_S L sqrt(m) the residual norm, capped at r for clustered eigenvalues.
template <class S, class W>
std::vector<W> eigen_errors(const std::vector<W>& lam, const W& L, Index m) {
  const W r = W(sm::epsilon<S>()) * L * sm::sqrt(W(m));
  const W base = W(4) * W(m) * sm::epsilon<W>() * L;
  std::vector<W> err(lam.size());
  for (size_t i = 0; i < lam.size(); ++i) {
    W gap = sm::infinity<W>();
    for (size_t j = 0; j < lam.size(); ++j)
      if (j != i) gap = std::min(gap, W(sm::abs(W(lam[i] - lam[j]))));
    err[i] = base + (gap > r ? W(r * r / gap) : r);
  }
  return err;
}

template <class S>
void add_validation(Spectrum<S>& sp, const LeastSquares<S>& p, const ColMat<S>& V, const Vec<S>& c_all,
                    const std::vector<typename Spectrum<S>::Wide>& lam, const std::vector<bool>& moving) {
  std::vector<Index> keep;
  for (Index i = 0; i < V.cols(); ++i)
    if (moving[static_cast<size_t>(i)]) keep.push_back(i);
  const Index k = static_cast<Index>(keep.size());
  ColMat<S> Vk(p.dim(), k);
  sp.c.resize(k);
  sp.lam_v.resize(static_cast<size_t>(k));
  sp.dlam_v.resize(static_cast<size_t>(k));
  using Wd = typename Spectrum<S>::Wide;
  const Wd Lall = lam.empty() ? Wd(0) : *std::max_element(lam.begin(), lam.end());
  const std::vector<Wd> err = eigen_errors<S>(lam, Lall, static_cast<Index>(lam.size()));
  for (Index j = 0; j < k; ++j) {
    Vk.col(j) = V.col(keep[static_cast<size_t>(j)]);
    sp.c[j] = c_all[keep[static_cast<size_t>(j)]];
    sp.lam_v[static_cast<size_t>(j)] = lam[static_cast<size_t>(keep[static_cast<size_t>(j)])];
    sp.dlam_v[static_cast<size_t>(j)] = err[static_cast<size_t>(keep[static_cast<size_t>(j)])];
  }
  const Vec<S> wbar = p.w0() - Vk * sp.c;
  if (p.has_valid()) {
    sp.has_valid = true;
    sp.n_valid = p.n_valid();
    sp.B = p.X_valid() * Vk;
    using W = typename Spectrum<S>::Wide;
    const Eigen::Matrix<W, Eigen::Dynamic, 1> r = wide_residual<W>(p.X_valid(), wbar, p.y_valid());
    sp.log_r_inf = log_norm(r);
    sp.r_inf_dir = Vec<S>::Zero(r.size());
    if (sp.log_r_inf > -sm::infinity<W>() && sm::isfinite(sp.log_r_inf)) {
      const W scale = sm::exp(W(-sp.log_r_inf));
      for (Index i = 0; i < r.size(); ++i) sp.r_inf_dir[i] = S(W(r[i] * scale));
    }
    sp.r_inf_mag = residual_scale<W>(p.X_valid(), p.y_valid(), p.w0(), Vk, sp.c);
  }
}

template <class W>
void set_extremes(std::vector<W> const& lam, W& L, W& alpha) {
  L = lam.empty() ? W(0) : *std::max_element(lam.begin(), lam.end());
  alpha = lam.empty() ? W(0) : *std::min_element(lam.begin(), lam.end());
}

}  // namespace detail

template <class S>
Spectrum<S> make_spectrum(const Quadratic<S>& p) {
  using namespace detail;
  using W = typename Spectrum<S>::Wide;
  Spectrum<S> sp;
  const int k = scale_exponent<S>(p.H());
  const ColMat<S> Hs = scaled_copy<S>(p.H(), k);  // H = 2^k Hs exactly
  auto es = eig<S>(Hs);
  const ColMat<S>& U = es.eigenvectors();
  sp.lam = rayleigh<S>(Hs, false, 1, U);
  const Vec<S> c = U.transpose() * (p.w0() - p.w_star());
  sp.logW.resize(sp.lam.size());
  for (size_t i = 0; i < sp.lam.size(); ++i) {
    sp.lam[i] = sm::ldexp(sp.lam[i], k);
    const W ci = sm::abs(W(c[static_cast<Index>(i)]));
    sp.logW[i] = (sp.lam[i] > W(0) && ci > W(0)) ? sm::log(W(0.5)) + sm::log(sp.lam[i]) + W(2) * sm::log(ci)
                                                 : -sm::infinity<W>();
  }
  set_extremes(sp.lam, sp.L, sp.alpha);
  sp.dlam = eigen_errors<S>(sp.lam, sp.L, p.dim());
  check_spectrum(sp);
  return sp;
}

template <class S>
Spectrum<S> make_spectrum(const LeastSquares<S>& p) {
  using namespace detail;
  using W = typename Spectrum<S>::Wide;
  Spectrum<S> sp;
  const Index n = p.n(), d = p.dim();
  const Vec<S> r0 = p.X() * p.w0() - p.y();
  const S eps = sm::epsilon<S>();
  const int k = scale_exponent<S>(p.X());
  const ColMat<S> Xs = scaled_copy<S>(p.X(), k);  // X = 2^k Xs: eigenvalues scale by 4^k
  std::vector<bool> moving;
  if (n <= d) {
    // Residual form: r_t = (I - eta K)^t r_0 with K = X X^T / n (n x n).
    const ColMat<S> Ks = (Xs * Xs.transpose()) / S(n);
    auto es = eig<S>(Ks);
    const ColMat<S>& P = es.eigenvectors();
    const ColMat<S> Xst = Xs.transpose();
    std::vector<W> mu = rayleigh<S>(Xst, true, n, P);
    for (auto& m : mu) m = sm::ldexp(m, 2 * k);
    const Vec<S> proj = P.transpose() * r0;
    sp.lam = mu;
    sp.logW.resize(static_cast<size_t>(n));
    for (Index j = 0; j < n; ++j) {
      const W a = sm::abs(W(proj[j]));
      sp.logW[static_cast<size_t>(j)] = a > W(0) ? W(2) * sm::log(a) - sm::log(W(2) * W(n)) : -sm::infinity<W>();
    }
    set_extremes(mu, sp.L, sp.alpha);
    sp.dlam = eigen_errors<S>(mu, sp.L, n);
    if (n < d) sp.alpha = 0;
    // Directions in w-space: v_j = X^T p_j / sqrt(n mu_j), c_j = <r0, p_j> / sqrt(n mu_j).
    const W tol = W(eps) * W(std::max(n, d)) * sp.L;
    ColMat<S> V(d, n);
    Vec<S> c(n);
    for (Index j = 0; j < n; ++j) {
      const W m = mu[static_cast<size_t>(j)];
      moving.push_back(m > tol);
      if (m > tol) {
        const W s = sm::sqrt(W(n) * m);
        V.col(j) = (p.X().transpose() * P.col(j)) / S(s);
        c[j] = S(W(proj[j]) / s);
      } else {
        V.col(j).setZero();
        c[j] = 0;
      }
    }
    add_validation(sp, p, V, c, mu, moving);
  } else {
    const ColMat<S> Hs = (Xs.transpose() * Xs) / S(n);
    auto es = eig<S>(Hs);
    const ColMat<S>& V = es.eigenvectors();
    std::vector<W> lam = rayleigh<S>(Xs, true, n, V);
    for (auto& l : lam) l = sm::ldexp(l, 2 * k);
    const Vec<S> g0 = p.X().transpose() * r0 / S(n);
    const Vec<S> proj = V.transpose() * g0;
    W Lmax, amin;
    set_extremes(lam, Lmax, amin);
    const W tol = W(eps) * W(std::max(n, d)) * Lmax;
    Vec<S> c(d);
    for (Index i = 0; i < d; ++i) {
      const W l = lam[static_cast<size_t>(i)];
      moving.push_back(l > tol);
      if (l > tol) {
        const W ci = W(proj[i]) / l;
        c[i] = S(ci);
        sp.lam.push_back(l);
        sp.logW.push_back(ci != W(0) ? sm::log(W(0.5)) + sm::log(l) + W(2) * sm::log(sm::abs(ci))
                                     : -sm::infinity<W>());
      } else {
        c[i] = 0;
      }
    }
    sp.L = Lmax;
    sp.alpha = amin;
    {
      const std::vector<W> all = eigen_errors<S>(lam, Lmax, d);
      for (Index i = 0; i < d; ++i)
        if (moving[static_cast<size_t>(i)]) sp.dlam.push_back(all[static_cast<size_t>(i)]);
    }
    // Constant part: the training loss at the minimiser wbar nearest to w0.
    // Formed in the wide type: ||X wbar - y||^2 / (2n) can exceed S's range (float32 targets
    // of 1e20 give a floor of 1e40) while everything else stays inside it.
    const Vec<S> wbar = p.w0() - V * c;
    const Eigen::Matrix<W, Eigen::Dynamic, 1> rf = wide_residual<W>(p.X(), wbar, p.y());
    const W lr = log_norm(rf);
    sp.log_floor = lr == -sm::infinity<W>() ? lr : W(2) * lr - sm::log(W(2) * W(n));
    // wbar carries errors of about eps (|w0| + |V||c|) from the decomposition, so X wbar - y is
    // known only to about eps times |X| (|w0| + |V||c|) + |y|; below sqrt(eps) of that, half the
    // digits of the floor or more are noise (as in the validation check)
    const Eigen::Matrix<W, Eigen::Dynamic, 1> mag = residual_scale<W>(p.X(), p.y(), p.w0(), V, c);
    W big = 0, left = 0;
    for (Index i = 0; i < n; ++i) {
      big = std::max(big, mag[i]);
      left = std::max(left, W(sm::abs(rf[i])));
    }
    sp.floor_cancelled = big > W(0) && sm::isfinite(big) && left < W(sm::sqrt(eps)) * big;
    add_validation(sp, p, V, c, lam, moving);
  }
  check_spectrum(sp);
  return sp;
}

namespace detail {

// Signed log-sum-exp: sum_i sign_i exp(l_i), returned as (log|sum|, sign).
template <class W>
struct LogSum {
  std::vector<W> l;
  std::vector<int> s;
  void add(const W& log_abs, int sign) {
    if (sign == 0 || log_abs == -sm::infinity<W>()) return;
    l.push_back(log_abs);
    s.push_back(sign);
  }
  std::pair<W, int> result() const {
    if (l.empty()) return {-sm::infinity<W>(), 0};
    const W m = *std::max_element(l.begin(), l.end());
    W pos = 0, neg = 0;
    for (size_t i = 0; i < l.size(); ++i) (s[i] > 0 ? pos : neg) += sm::exp(W(l[i] - m));
    const W diff = pos - neg;
    if (diff == W(0)) return {-sm::infinity<W>(), 0};
    return {m + sm::log(sm::abs(diff)), diff > W(0) ? 1 : -1};
  }
};

// sign^power for an integer power >= 0 given by its parity.
inline int parity_sign(int s, bool odd) { return (s < 0 && odd) ? -1 : 1; }

// log|1 - eta lambda| and its sign, in the wide type.
template <class W>
std::pair<W, int> log_one_minus(const W& eta, const W& lam) {
  const W el = eta * lam;
  const W q = W(1) - el;
  if (q == W(0)) return {-sm::infinity<W>(), 0};
  const W lq = (el < W(0.5) && el > W(-0.5)) ? sm::log1p(W(-el)) : sm::log(sm::abs(q));
  return {lq, q > W(0) ? 1 : -1};
}

}  // namespace detail

// log|M|, log|dM/deta| and the sign of dM/deta for one (eta, t), exactly.
template <class W>
struct ExactPoint {
  W log_M = -sm::infinity<W>();
  int sign_M = 0;
  W log_dM = -sm::infinity<W>();
  int sign_dM = 0;
  bool cancelled = false;  // the residual is at the level of its rounding error (digits lost)
  // estimated relative errors of M and dM/deta from the eigenvalues' errors (Spectrum::dlam)
  double rel_M = 0, rel_dM = 0;
};

template <class S>
ExactPoint<typename Spectrum<S>::Wide> exact_train(const Spectrum<S>& sp, const S& eta_s, Steps t) {
  using W = typename Spectrum<S>::Wide;
  const W eta = W(eta_s), tt = W(static_cast<long double>(t));
  const W log2t = sm::log(W(2) * tt);
  detail::LogSum<W> val, der;
  // per term: its log and the relative error it inherits from its eigenvalue's error
  std::vector<std::pair<W, W>> val_err, der_err;
  val_err.reserve(sp.lam.size());
  der_err.reserve(sp.lam.size());
  val.add(sp.log_floor, 1);
  for (size_t i = 0; i < sp.lam.size(); ++i) {
    const W& lW = sp.logW[i];
    if (lW == -sm::infinity<W>()) continue;
    const W& lam = sp.lam[i];
    const auto [lq, sq] = detail::log_one_minus(eta, lam);
    if (sq == 0) continue;  // (1 - eta lambda) = 0: the term vanishes (t >= 1)
    const W lv = lW + W(2) * tt * lq;
    val.add(lv, 1);
    // d/dlam log|1 - eta lam| = -eta / (1 - eta lam); the weight W ~ lam c^2 adds dlam / lam
    const auto [sens, rel_lam] = detail::lam_sensitivity(eta, lam, i < sp.dlam.size() ? sp.dlam[i] : W(0));
    val_err.emplace_back(lv, W(2) * tt * sens + rel_lam);
    // d/deta W (1 - eta lam)^(2t) = -2t lam W (1 - eta lam)^(2t-1); 2t - 1 is odd
    if (lam > W(0)) {
      const W ld = lW + log2t + sm::log(lam) + (W(2) * tt - W(1)) * lq;
      der.add(ld, -detail::parity_sign(sq, true));
      der_err.emplace_back(ld, (W(2) * tt - W(1)) * sens + W(2) * rel_lam);
    }
  }
  ExactPoint<W> e;
  std::tie(e.log_M, e.sign_M) = val.result();
  std::tie(e.log_dM, e.sign_dM) = der.result();
  // first order: sum over terms of |term| / |sum| times the term's relative error
  auto spread = [](const std::vector<std::pair<W, W>>& terms, const W& log_sum) {
    double r = 0;
    for (const auto& [l, err] : terms) r += sm::to_double(W(sm::exp(W(l - log_sum)) * err));
    return r;
  };
  if (e.sign_M != 0) e.rel_M = spread(val_err, e.log_M);
  if (e.sign_dM != 0) e.rel_dM = spread(der_err, e.log_dM);
  // a floor that is mostly rounding noise, and at least sqrt(eps) of M: M has lost half its digits
  if (sp.floor_cancelled && e.sign_M > 0 &&
      sp.log_floor - e.log_M > W(0.5) * sm::log(W(sm::epsilon<S>())))
    e.cancelled = true;
  return e;
}

template <class S>
ExactPoint<typename Spectrum<S>::Wide> exact_valid(const Spectrum<S>& sp, const S& eta_s, Steps t) {
  using W = typename Spectrum<S>::Wide;
  if (!sp.has_valid) throw std::invalid_argument("this task has no validation set");
  const W eta = W(eta_s), tt = W(static_cast<long double>(t));
  const bool t_odd = (t % 2) != 0;
  const Index k = sp.c.size();
  const W NEG_INF = -sm::infinity<W>();
  std::vector<W> lz(static_cast<size_t>(k), NEG_INF), ld(static_cast<size_t>(k), NEG_INF);
  std::vector<int> sz(static_cast<size_t>(k), 0), sd(static_cast<size_t>(k), 0);
  // relative errors of z_i and dz_i/deta inherited from the eigenvalue errors: t eta dlam / |1 - eta
  // lam| from the power, dlam / lam from c_i (a projection divided by lam) and from the factor lam
  Vec<S> ez = Vec<S>::Zero(k), ed = Vec<S>::Zero(k);
  W mz = NEG_INF, md = NEG_INF;
  for (Index i = 0; i < k; ++i) {
    const size_t u = static_cast<size_t>(i);
    const W ci = W(sp.c[i]);
    if (ci == W(0)) continue;
    const W& lam = sp.lam_v[u];
    {
      const auto [sens, rl] = detail::lam_sensitivity(eta, lam, u < sp.dlam_v.size() ? sp.dlam_v[u] : W(0));
      ez[i] = S(W(tt * sens + rl));
      ed[i] = S(W((tt - W(1)) * sens + W(2) * rl));
    }
    const auto [lq, sq] = detail::log_one_minus(eta, lam);
    const int sc = ci > W(0) ? 1 : -1;
    const W lc = sm::log(sm::abs(ci));
    if (sq != 0) {
      lz[u] = lc + tt * lq;
      sz[u] = sc * detail::parity_sign(sq, t_odd);
    }
    // dz_i/deta = -t lambda_i c_i (1 - eta lambda_i)^(t-1)
    if (t == 1) {
      ld[u] = sm::log(lam) + lc;
      sd[u] = -sc;
    } else if (sq != 0) {
      ld[u] = sm::log(tt) + sm::log(lam) + lc + (tt - W(1)) * lq;
      sd[u] = -sc * detail::parity_sign(sq, !t_odd);
    }
    if (sz[u] != 0) mz = std::max(mz, lz[u]);
    if (sd[u] != 0) md = std::max(md, ld[u]);
  }
  const W rho = sp.log_r_inf;
  const W m = std::max(rho, mz);
  ExactPoint<W> e;
  if (m == NEG_INF) return e;  // residual exactly zero for every t
  // r~ = r_inf e^{-m} + B zhat e^{mz - m}: every factor <= 1, nothing overflows.
  Vec<S> zh = Vec<S>::Zero(k), dh = Vec<S>::Zero(k);
  for (Index i = 0; i < k; ++i) {
    const size_t u = static_cast<size_t>(i);
    if (sz[u] != 0) zh[i] = S(W(sz[u]) * sm::exp(W(lz[u] - m)));
    if (sd[u] != 0) dh[i] = S(W(sd[u]) * sm::exp(W(ld[u] - md)));
  }
  Vec<S> rt = sp.B * zh;
  // the same sum over absolute values: the scale of the terms that cancel in rt
  Vec<S> mag = sp.B.cwiseAbs() * zh.cwiseAbs();
  if (rho > NEG_INF) rt += sp.r_inf_dir * S(sm::exp(W(rho - m)));  // r_inf e^{-m}, norm <= 1
  for (Index j = 0; j < mag.size(); ++j) {
    const W rm = sp.r_inf_mag[j];
    if (rm > W(0)) mag[j] += S(sm::exp(W(sm::log(rm) - m)));
  }
  // Half the digits or more cancelled between r_inf and B z (e.g. a minimizer far from w0 whose
  // validation residual nearly vanishes): the result is rounding noise, flag it.
  const S big = mag.size() ? mag.maxCoeff() : S(0);
  const S left = rt.size() ? rt.cwiseAbs().maxCoeff() : S(0);
  e.cancelled = big > S(0) && sm::isfinite(big) && left < sm::sqrt(sm::epsilon<S>()) * big;
  const W nrm2 = W(rt.squaredNorm());
  // first-order error of rt from the errors of the z_i (all in the scaled units of rt)
  const Vec<S> drt = sp.B.cwiseAbs() * zh.cwiseAbs().cwiseProduct(ez);
  if (nrm2 > W(0)) {
    e.log_M = W(2) * m + sm::log(nrm2) - sm::log(W(2) * W(sp.n_valid));
    e.sign_M = 1;
    e.rel_M = 2.0 * sm::to_double(W(W(drt.norm()) / sm::sqrt(nrm2)));
  }
  if (md != NEG_INF) {
    const Vec<S> Btr = sp.B.transpose() * rt;
    const W q = W(Btr.dot(dh));
    e.sign_dM = (q > W(0)) - (q < W(0));
    if (q != W(0)) {
      e.log_dM = m + md + sm::log(sm::abs(q)) - sm::log(W(sp.n_valid));
      const W err = W((sp.B.cwiseAbs().transpose() * drt).dot(dh.cwiseAbs())) +
                    W(Btr.cwiseAbs().dot(dh.cwiseAbs().cwiseProduct(ed)));
      e.rel_dM = sm::to_double(W(err / sm::abs(q)));
    }
  }
  return e;
}

// Objective from the exact point, all in log form.
template <class S>
Outcome exact_outcome(const Spectrum<S>& sp, const S& eta, const MetaOptions& opt) {
  using W = typename Spectrum<S>::Wide;
  Outcome out;
  if (!sp.problem.empty()) {
    out.diag.fail(Quantity::loss, "non-finite", 0);
    out.diag.kind = "non-finite (" + sp.problem + ")";
    out.value = Num::of(sm::quiet_nan<double>());
    out.grad = Num::of(sm::quiet_nan<double>());
    return out;
  }
  const ExactPoint<W> e = opt.valid ? exact_valid(sp, eta, opt.steps) : exact_train(sp, eta, opt.steps);
  if (e.cancelled) out.diag.fail(Quantity::meta_loss, "cancellation", opt.steps);
  // eta lambda within rounding of 1 for some component and t large: the eigenvalues' own errors
  // (dlam) move the result by more than cbrt(eps) of it (the limit of the other modes' checks)
  {
    const bool log_obj = opt.objective != Objective::final_loss;
    const double rel_grad = log_obj ? e.rel_dM + e.rel_M : e.rel_dM;
    const double limit = std::cbrt(sm::to_double(sm::epsilon<S>()));
    out.diag.value_rel_error = e.rel_M;
    if (!(e.rel_M <= limit)) out.diag.fail(Quantity::meta_loss, "ill-conditioned", opt.steps);
    // the meta-gradient as in the other modes: near a stationary point its terms cancel and the
    // estimate grows (kind "cancellation", which meta-training tolerates by default)
    if (e.sign_dM != 0) out.diag.check_grad_error<S>(rel_grad, opt.steps);
    else out.diag.grad_rel_error = rel_grad;
  }
  const W t = W(static_cast<long double>(opt.steps));
  if (opt.objective == Objective::final_loss) {
    out.value = Num::of_log(e.log_M, e.sign_M);
    out.grad = Num::of_log(e.log_dM, e.sign_dM);
  } else if (e.sign_M <= 0) {
    out.diag.fail(Quantity::meta_loss, "zero (log undefined)", opt.steps);
    out.value = Num::of(-sm::infinity<double>());
    out.grad = Num::of(sm::quiet_nan<double>());
  } else {
    out.value = Num::of(W(e.log_M / t));
    out.grad = Num::of_log(W(e.log_dM - sm::log(t) - e.log_M), e.sign_dM);
  }
  return out;
}

}  // namespace metastep
