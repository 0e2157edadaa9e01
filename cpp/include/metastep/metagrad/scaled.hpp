// Scaled mode (SPEC §4.5): forward or reverse propagation with the state carried as a
// mantissa vector times a power of two, renormalised after every step.
//
// GD on a quadratic is affine in w: w' = (I - eta H) w + eta H w*  (or + eta X^T y / n).
// Writing w = 2^E w^ and carrying the constant as off = 2^-E, the step becomes the same
// linear map on (w^, off); the tangent v = 2^Ev v^ and the adjoint a = 2^Ea a^ obey linear
// maps too. Multiplying by a power of two is exact, so nothing is approximated: the
// exponents (64-bit integers) absorb the exponential growth or decay in t, and log f(w_t),
// G'(eta) and F'(eta) (as log-magnitude and sign) come out right at any t, even in float32.
// Costs: forward as plain forward mode, reverse as plain reverse mode (plus one exponent per
// stored step).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common.hpp"
#include "exact.hpp"

namespace metastep {

namespace detail {

// Scale x (and the constant-term factor *off, if given) by 2^-k so that its largest
// magnitude lies in [1/2, 1); returns k. Zero or non-finite vectors are left alone (0).
template <class Derived, class S = typename Derived::Scalar>
std::int64_t renormalize(Eigen::MatrixBase<Derived>& x, S* off) {
  S m = maxabs(x);
  if (off && sm::abs(*off) > m) m = sm::abs(*off);
  if (!(m > S(0)) || !sm::isfinite(m)) return 0;
  int k = 0;
  sm::frexp(m, &k);
  if (k == 0) return 0;
  for (Index i = 0; i < x.size(); ++i) x[i] = sm::ldexp(x[i], -k);
  if (off) *off = sm::ldexp(*off, -k);
  return k;
}

// 2^diff as a scalar, saturating the exponent (a factor beyond the range means the scaled
// term is negligible, or dominant, by more than the type can express).
template <class S>
S pow2(std::int64_t diff) {
  const std::int64_t lim = 1 << 20;
  diff = std::max<std::int64_t>(-lim, std::min<std::int64_t>(lim, diff));
  return sm::ldexp(S(1), static_cast<int>(diff));
}

// log|x| of a mantissa (near 1: no range issue) computed in S, carried in the wide type W.
template <class W, class S>
W log_of(const S& x) {
  return W(sm::log(sm::abs(x)));
}
// E ln 2 in the wide type.
template <class W>
W exp2_log(std::int64_t E) {
  return W(static_cast<long double>(E)) * sm::log(W(2));
}

template <class S>
double log2_mag(std::int64_t E, S mant) {
  if (!(sm::abs(mant) > S(0))) return -std::numeric_limits<double>::infinity();
  return static_cast<double>(E) + sm::log_abs(mant) / std::log(2.0);
}

// Objective from log M and the log-magnitude/sign of dM/deta (shared by both variants).
template <class W>
Outcome scaled_outcome(const W& logM, bool M_pos, const W& log_dM, int sign_dM, const MetaOptions& opt,
                       Diagnostics diag) {
  Outcome out;
  const W t = W(static_cast<long double>(opt.steps));
  if (opt.objective == Objective::final_loss) {
    out.value = M_pos ? Num::of_log(logM, 1) : Num::of(W(0));
    out.grad = Num::of_log(log_dM, sign_dM);
  } else if (!M_pos) {
    diag.fail(Quantity::meta_loss, "zero (log undefined)", opt.steps);
    out.value = Num::of(-std::numeric_limits<double>::infinity());
    out.grad = Num::of(std::numeric_limits<double>::quiet_NaN());
  } else {
    out.value = Num::of(W(logM / t));
    out.grad = Num::of_log(W(log_dM - sm::log(t) - logM), sign_dM);
  }
  out.diag = std::move(diag);
  return out;
}

}  // namespace detail

template <class Problem, class S = typename Problem::S>
Outcome scaled_forward(const Problem& p, const StepSizes<S>& eta, const MetaOptions& opt) {
  using namespace detail;
  using W = typename ScalarTraits<S>::Wide;
  const Steps t = opt.steps;
  const Index d = p.dim();
  Diagnostics diag;
  Workspace<S> ws;
  Vec<S> w = p.w0(), v = Vec<S>::Zero(d), g(d), hv(d);
  S off = p.has_offset() ? S(1) : S(0);
  S* offp = p.has_offset() ? &off : nullptr;
  std::int64_t Ew = renormalize(w, offp), Ev = Ew;
  S verr2 = 0;  // squared error estimate of the tangent mantissa
  for (Steps tau = 0; tau < t; ++tau) {
    poll(opt.stop);
    ws.tau = tau;
    const S f = p.value_grad_hvp(w, v, g, hv, ws, off);
    diag.loss.add_log2(log2_mag(2 * Ew, f));
    diag.iterate.add_log2(log2_mag(Ew, maxabs(w)));
    diag.tangent.add_log2(log2_mag(Ev, maxabs(v)));
    if (!sm::isfinite(f)) diag.fail(Quantity::loss, "non-finite", tau);
    if (ws.cancellation) diag.fail(Quantity::loss, "cancellation", tau);
    const S e = eta.at(tau);
    if (maxabs(v) == S(0)) Ev = Ew;  // v = 0: give it w's scale
    const S rel = pow2<S>(Ew - Ev);
    const S vold2 = v.squaredNorm();
    w -= e * g;
    v -= rel * g + e * hv;
    const S vnew2 = v.squaredNorm();
    verr2 = (vold2 > S(0) ? verr2 * (vnew2 / vold2) : S(0)) + ws.grad_err * ws.grad_err * rel * rel * S(d) +
            sm::epsilon<S>() * sm::epsilon<S>() * vnew2;
    Ew += renormalize(w, offp);
    const std::int64_t kv = renormalize(v, static_cast<S*>(nullptr));
    Ev += kv;
    verr2 = sm::ldexp(verr2, static_cast<int>(-2 * kv));  // the error is scaled with v
    if (!sm::isfinite(maxabs(w))) diag.fail(Quantity::iterate, "non-finite", tau + 1);
    if (!sm::isfinite(maxabs(v))) diag.fail(Quantity::tangent, "non-finite", tau + 1);
  }
  diag.iterate.add_log2(log2_mag(Ew, maxabs(w)));
  diag.tangent.add_log2(log2_mag(Ev, maxabs(v)));
  Vec<S> gM(d);
  const S Mh = p.meta(opt.valid, w, &gM, ws, off);
  if (ws.cancellation) diag.fail(Quantity::meta_loss, "cancellation", t);
  if (!sm::isfinite(Mh)) diag.fail(Quantity::meta_loss, "non-finite", t);
  const S q = gM.dot(v);
  if (!sm::isfinite(q)) diag.fail(Quantity::meta_grad, "non-finite", t);
  if (q != S(0) && sm::isfinite(q)) {
    const S est = ws.grad_err * v.norm() + gM.norm() * sm::sqrt(verr2) + sm::epsilon<S>() * gM.cwiseProduct(v).norm();
    diag.check_grad_error<S>(sm::to_double(est / sm::abs(q)), t);
  }
  const bool M_pos = Mh > S(0);
  const W logM = M_pos ? exp2_log<W>(2 * Ew) + log_of<W>(Mh) : -sm::infinity<W>();
  const W log_dM = q != S(0) ? exp2_log<W>(Ew + Ev) + log_of<W>(q) : -sm::infinity<W>();
  diag.forward_steps = t;
  return scaled_outcome(logM, M_pos, log_dM, sm::sign(q), opt, std::move(diag));
}

// Scaled forward mode for a batch of constant step sizes on a quadratic (float, double): the
// columns advance together as in forward_batch (one pass over H per step for all of them),
// each column carrying its own exponents Ew, Ev, with the operations of scaled_forward for one
// step size — except that the state is the residual e = w - w* itself: GD on a quadratic is
// linear in e (e' = (I - eta H) e, grad f = H e), so nothing cancels as w approaches a non-zero
// w* (e_0 = w_0 - w* is rounded once), there is no constant term, and e is directly the
// product's input. The diagnostics' "iterate" range is then that of w - w*.
template <class S>
std::vector<Outcome> scaled_forward_batch(const Quadratic<S>& p, const S* etas, Index m, const MetaOptions& opt) {
  static_assert(kernels::simd_scalar<S>, "the batched engine serves float and double");
  using namespace detail;
  using W = typename ScalarTraits<S>::Wide;
  using Col = Eigen::Map<Vec<S>, Eigen::AlignedMax>;
  constexpr Index align = 64 / sizeof(S);
  const Steps t = opt.steps;
  const Index d = p.dim(), ld = (d + align - 1) / align * align;
  const size_t mu = static_cast<size_t>(m);
  // IN = [E | V]: the residuals e_j (the state itself, the product's input) and the tangents
  kernels::ColMat<S> IN(ld, 2 * m), OUT(ld, 2 * m);
  IN.setZero();
  OUT.setZero();
  std::vector<Diagnostics> diag(mu);
  std::vector<std::int64_t> Ew(mu), Ev(mu);
  std::vector<S> verr2(mu, S(0));
  for (Index j = 0; j < m; ++j) {
    Col e(IN.col(j).data(), d);
    e = p.w0() - p.w_star();
    Ew[static_cast<size_t>(j)] = Ev[static_cast<size_t>(j)] = renormalize(e, static_cast<S*>(nullptr));
  }
  Workspace<S> ws;
  for (Steps tau = 0; tau < t; ++tau) {
    poll(opt.stop);
    p.op().apply_many(IN.data(), ld, 2 * m, OUT.data(), ld);
    ws.tau = tau;
    for (Index j = 0; j < m; ++j) {
      const size_t u = static_cast<size_t>(j);
      Diagnostics& dg = diag[u];
      Col e(IN.col(j).data(), d), v(IN.col(m + j).data(), d), g(OUT.col(j).data(), d), hv(OUT.col(m + j).data(), d);
      const S emax = maxabs(e), vmax = maxabs(v);
      p.note_stats(ws, emax, e.norm(), S(0));
      const S f = S(0.5) * e.dot(g);
      dg.loss.add_log2(log2_mag(2 * Ew[u], f));
      dg.iterate.add_log2(log2_mag(Ew[u], emax));
      dg.tangent.add_log2(log2_mag(Ev[u], vmax));
      if (!sm::isfinite(f)) dg.fail(Quantity::loss, "non-finite", tau);
      if (ws.cancellation) dg.fail(Quantity::loss, "cancellation", tau);
      const S eta = etas[j];
      if (vmax == S(0)) Ev[u] = Ew[u];
      const S rel = pow2<S>(Ew[u] - Ev[u]);
      const S vold2 = v.squaredNorm();
      e -= eta * g;
      v -= rel * g + eta * hv;
      const S vnew2 = v.squaredNorm();
      verr2[u] = (vold2 > S(0) ? verr2[u] * (vnew2 / vold2) : S(0)) +
                 ws.grad_err * ws.grad_err * rel * rel * S(d) + sm::epsilon<S>() * sm::epsilon<S>() * vnew2;
      Ew[u] += renormalize(e, static_cast<S*>(nullptr));
      const std::int64_t kv = renormalize(v, static_cast<S*>(nullptr));
      Ev[u] += kv;
      verr2[u] = sm::ldexp(verr2[u], static_cast<int>(-2 * kv));
      if (!sm::isfinite(maxabs(e))) dg.fail(Quantity::iterate, "non-finite", tau + 1);
      if (!sm::isfinite(maxabs(v))) dg.fail(Quantity::tangent, "non-finite", tau + 1);
    }
  }
  p.op().apply_many(IN.data(), ld, m, OUT.data(), ld);
  std::vector<Outcome> out(mu);
  for (Index j = 0; j < m; ++j) {
    const size_t u = static_cast<size_t>(j);
    Diagnostics& dg = diag[u];
    Col e(IN.col(j).data(), d), v(IN.col(m + j).data(), d), gM(OUT.col(j).data(), d);
    const S emax = maxabs(e);
    dg.iterate.add_log2(log2_mag(Ew[u], emax));
    dg.tangent.add_log2(log2_mag(Ev[u], maxabs(v)));
    p.note_stats(ws, emax, e.norm(), S(0));
    const S Mh = S(0.5) * e.dot(gM);
    if (ws.cancellation) dg.fail(Quantity::meta_loss, "cancellation", t);
    if (!sm::isfinite(Mh)) dg.fail(Quantity::meta_loss, "non-finite", t);
    const S q = gM.dot(v);
    if (!sm::isfinite(q)) dg.fail(Quantity::meta_grad, "non-finite", t);
    if (q != S(0) && sm::isfinite(q)) {
      const S est = ws.grad_err * v.norm() + gM.norm() * sm::sqrt(verr2[u]) +
                    sm::epsilon<S>() * gM.cwiseProduct(v).norm();
      dg.check_grad_error<S>(sm::to_double(est / sm::abs(q)), t);
    }
    const bool M_pos = Mh > S(0);
    const W logM = M_pos ? exp2_log<W>(2 * Ew[u]) + log_of<W>(Mh) : -sm::infinity<W>();
    const W log_dM = q != S(0) ? exp2_log<W>(Ew[u] + Ev[u]) + log_of<W>(q) : -sm::infinity<W>();
    dg.forward_steps = t;
    out[u] = scaled_outcome(logM, M_pos, log_dM, sm::sign(q), opt, std::move(dg));
  }
  return out;
}

template <class Problem, class S = typename Problem::S>
Outcome scaled_reverse(const Problem& p, const StepSizes<S>& eta, const MetaOptions& opt) {
  using namespace detail;
  using W = typename ScalarTraits<S>::Wide;
  const Steps t = opt.steps;
  const Index d = p.dim();
  Diagnostics diag;
  Workspace<S> ws;
  Mat<S> traj(static_cast<Index>(t) + 1, d);
  std::vector<std::int64_t> E(static_cast<size_t>(t) + 1);
  std::vector<S> offs(static_cast<size_t>(t) + 1);
  Vec<S> w = p.w0(), g(d), ha(d);
  S off = p.has_offset() ? S(1) : S(0);
  S* offp = p.has_offset() ? &off : nullptr;
  std::int64_t Ew = renormalize(w, offp);
  for (Steps tau = 0; tau < t; ++tau) {
    poll(opt.stop);
    traj.row(tau) = w.transpose();
    E[static_cast<size_t>(tau)] = Ew;
    offs[static_cast<size_t>(tau)] = off;
    ws.tau = tau;
    const S f = p.value_grad(w, g, ws, off);
    diag.loss.add_log2(log2_mag(2 * Ew, f));
    diag.iterate.add_log2(log2_mag(Ew, maxabs(w)));
    if (!sm::isfinite(f)) diag.fail(Quantity::loss, "non-finite", tau);
    if (ws.cancellation) diag.fail(Quantity::loss, "cancellation", tau);
    w -= eta.at(tau) * g;
    Ew += renormalize(w, offp);
    if (!sm::isfinite(maxabs(w))) diag.fail(Quantity::iterate, "non-finite", tau + 1);
  }
  traj.row(t) = w.transpose();
  E[static_cast<size_t>(t)] = Ew;
  diag.stored_states = t + 1;
  Vec<S> a(d);
  const S Mh = p.meta(opt.valid, w, &a, ws, off);
  if (ws.cancellation) diag.fail(Quantity::meta_loss, "cancellation", t);
  if (!sm::isfinite(Mh)) diag.fail(Quantity::meta_loss, "non-finite", t);
  const bool M_pos = Mh > S(0);
  const W logM = M_pos ? exp2_log<W>(2 * Ew) + log_of<W>(Mh) : -sm::infinity<W>();
  const S a2_t = a.norm();
  const S rho_a = a2_t > S(0) ? ws.grad_err * sm::sqrt(S(d)) / a2_t : S(0);
  detail::LogSum<W> err_total;  // squared per-step error bounds (random walk)
  detail::LogSum<W> abs_total;  // sum of |terms|: scaled by the adjoint's carried relative error
  std::int64_t Ea = Ew + renormalize(a, static_cast<S*>(nullptr));
  // Per-step terms dM/deta_tau = -a_{tau+1} . g(w_tau) as (log|.|, sign).
  std::vector<W> lt(static_cast<size_t>(t));
  std::vector<int> st(static_cast<size_t>(t));
  detail::LogSum<W> total;
  Vec<S> wt(d);
  for (Steps tau = t - 1; tau >= 0; --tau) {
    poll(opt.stop);
    wt = traj.row(tau).transpose();
    const std::int64_t Et = E[static_cast<size_t>(tau)];
    ws.tau = tau;
    p.value_grad_hvp(wt, a, g, ha, ws, offs[static_cast<size_t>(tau)]);
    const S q = -a.dot(g);
    if (!sm::isfinite(q)) diag.fail(Quantity::meta_grad, "non-finite", tau);
    st[static_cast<size_t>(tau)] = sm::sign(q);
    lt[static_cast<size_t>(tau)] = q != S(0) ? exp2_log<W>(Ea + Et) + log_of<W>(q) : -sm::infinity<W>();
    total.add(lt[static_cast<size_t>(tau)], st[static_cast<size_t>(tau)]);
    abs_total.add(lt[static_cast<size_t>(tau)], 1);
    if (q != S(0) && sm::isfinite(q)) {
      const S a2 = a.norm();
      const S bound = ws.grad_err * a2 + sm::epsilon<S>() * a.cwiseProduct(g).norm();
      // squared errors summed (random walk): log(bound^2) with the scale, then halved below
      if (bound > S(0)) err_total.add(W(W(2) * (exp2_log<W>(Ea + Et) + log_of<W>(bound))), 1);
    }
    a -= eta.at(tau) * ha;
    Ea += renormalize(a, static_cast<S*>(nullptr));
    diag.adjoint.add_log2(log2_mag(Ea, maxabs(a)));
    if (!sm::isfinite(maxabs(a))) diag.fail(Quantity::adjoint, "non-finite", tau);
  }
  diag.forward_steps = t;
  const auto [log_dM, sign_dM] = total.result();
  if (sign_dM != 0) {
    const auto [log_err, sign_err] = err_total.result();
    const auto [log_abs_sum, sign_abs] = abs_total.result();
    double rel = sign_err == 0 ? 0.0 : sm::to_double(sm::exp(W(W(0.5) * log_err - log_dM)));
    if (sign_abs != 0) rel += sm::to_double((rho_a + sm::epsilon<S>()) * S(sm::exp(W(log_abs_sum - log_dM))));
    diag.check_grad_error<S>(rel, t);
  }
  Outcome out = scaled_outcome(logM, M_pos, log_dM, sign_dM, opt, diag);
  if (eta.schedule) {
    const W shift = opt.objective == Objective::log_loss ? W(sm::log(W(static_cast<long double>(t))) + logM) : W(0);
    out.grad_steps.reserve(static_cast<size_t>(t));
    for (Steps tau = 0; tau < t; ++tau)
      out.grad_steps.push_back(Num::of_log(W(lt[static_cast<size_t>(tau)] - shift), st[static_cast<size_t>(tau)]));
  }
  return out;
}

}  // namespace metastep
