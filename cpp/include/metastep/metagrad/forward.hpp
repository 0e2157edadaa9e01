// Forward mode (SPEC §4.3): the tangent v_tau = dw_tau/deta travels with the iterate,
//   v_{tau+1} = v_tau - s_tau grad f(w_tau) - eta_tau H v_tau,
// with s_tau = 1 for a constant eta (and for a schedule: the derivative along all-ones).
// Memory O(d), independent of t; one fused pass over the data per step.
#pragma once
#include "../trajectory.hpp"
#include "common.hpp"

namespace metastep {

template <class Problem, class S = typename Problem::S>
Outcome forward_mode(const Problem& p, const StepSizes<S>& eta, const MetaOptions& opt) {
  const Steps t = opt.steps;
  Diagnostics diag;
  Workspace<S> ws;
  const Index d = p.dim();
  Vec<S> w = p.w0(), v = Vec<S>::Zero(d), g(d), hv(d);
  bool w_nonzero = false, v_nonzero = false;  // zero starts are legitimate
  double vrel2 = 0;                           // squared relative error estimate of the tangent
  const double sqrt_d = std::sqrt(double(d));
  const double eps2 = sm::to_double(sm::epsilon<S>()) * sm::to_double(sm::epsilon<S>());
  for (Steps tau = 0; tau < t; ++tau) {
    poll(opt.stop);
    ws.tau = tau;
    const S f = p.value_grad_hvp(w, v, g, hv, ws);
    note_loss(diag, Quantity::loss, f, ws, tau);
    const S wmax = maxabs(w), vmax = maxabs(v);
    diag.check_vector(Quantity::iterate, wmax, w_nonzero, tau);
    diag.check_vector(Quantity::tangent, vmax, v_nonzero, tau);
    w_nonzero = wmax != S(0);
    v_nonzero = vmax != S(0);
    const S e = eta.at(tau);
    w -= e * g;
    v -= g + e * hv;
    // the tangent absorbs the rounding error of every gradient; earlier errors are carried
    // with the tangent's own growth or decay (its relative size is kept), new ones add like a
    // random walk; all in relative terms so that nothing overflows
    const S vn = safe_norm(v);
    if (vn > S(0)) {
      double r;
      if constexpr (kernels::simd_scalar<S>) {
        // both are float/double: the quotient needs no logarithm unless it leaves the range
        r = static_cast<double>(ws.grad_err) * sqrt_d / static_cast<double>(vn);
        if (!std::isfinite(r * r))
          r = std::exp(sm::log_abs(ws.grad_err) + 0.5 * std::log(double(d)) - sm::log_abs(vn));
      } else {
        r = std::exp(sm::log_abs(ws.grad_err) + 0.5 * std::log(double(d)) - sm::log_abs(vn));
      }
      vrel2 += r * r + eps2;
    }
  }
  diag.check_vector(Quantity::iterate, maxabs(w), w_nonzero, t);
  diag.check_vector(Quantity::tangent, maxabs(v), v_nonzero, t);
  Vec<S> gM(d);
  const S M = p.meta(opt.valid, w, &gM, ws);
  note_loss(diag, Quantity::meta_loss, M, ws, t);
  const S dM = gM.dot(v);
  diag.forward_steps = t;
  if (dM != S(0) && sm::isfinite(dM)) {
    const double ldm = sm::log_abs(dM), lv = sm::log_abs(safe_norm(v)), lg = sm::log_abs(safe_norm(gM));
    double lest = sm::log_abs(ws.grad_err) + lv;                                     // error of grad M
    if (vrel2 > 0) lest = log_add(lest, lg + lv + 0.5 * std::log(vrel2));            // error of the tangent
    lest = log_add(lest, sm::log_abs(sm::epsilon<S>()) + lg + lv);                   // the dot product
    diag.check_grad_error<S>(std::exp(lest - ldm), t);
  } else if (dM == S(0)) {
    check_dot_underflow<S>(diag, gM, v, t);
  }
  return finalize<S>(M, dM, nullptr, opt, std::move(diag));
}

}  // namespace metastep

namespace metastep {

namespace detail {

// Largest magnitude (NaN if any entry is NaN) and sum of squares of a column.
template <class S>
struct ColStats {
  S max = 0, sum2 = 0;
};

// The per-column work of one forward step after the product, in one pass over the column:
// returns <r, g> for the current residual r, then updates w -= e g, v -= g + e hv, writes the
// next residual r = w - w*, and gathers the magnitudes of the new w, v and r.
template <class S>
S fused_forward_update(S* w, S* v, S* r, const S* g, const S* hv, const S* wstar, Index d, S e, ColStats<S>& ws_,
                       ColStats<S>& vs_, ColStats<S>& rs_) {
  using namespace Eigen::internal;
  using P = kernels::detail::Packet<S>;
  constexpr Index PS = kernels::detail::packet_size<S>;
  const P pe = pset1<P>(e), zero = pset1<P>(S(0));
  P dot = zero, wmax = zero, vmax = zero, rmax = zero, vs = zero, rs = zero;
  Index i = 0;
  for (; i + PS <= d; i += PS) {
    const P ri = ploadu<P>(r + i), gi = ploadu<P>(g + i), hi = ploadu<P>(hv + i);
    dot = pmadd(ri, gi, dot);
    const P wn = psub(ploadu<P>(w + i), pmul(pe, gi));
    const P vn = psub(ploadu<P>(v + i), padd(gi, pmul(pe, hi)));
    const P rn = psub(wn, ploadu<P>(wstar + i));
    pstoreu(w + i, wn);
    pstoreu(v + i, vn);
    pstoreu(r + i, rn);
    wmax = pmax<Eigen::PropagateNaN>(wmax, pabs(wn));
    vmax = pmax<Eigen::PropagateNaN>(vmax, pabs(vn));
    rmax = pmax<Eigen::PropagateNaN>(rmax, pabs(rn));
    vs = pmadd(vn, vn, vs);
    rs = pmadd(rn, rn, rs);
  }
  S sdot = predux(dot), swm = predux_max<Eigen::PropagateNaN>(wmax), svm = predux_max<Eigen::PropagateNaN>(vmax),
    srm = predux_max<Eigen::PropagateNaN>(rmax), svs = predux(vs), srs = predux(rs);
  auto mx = [](S m, S a) { return (a <= m) ? m : a; };  // NaN wins
  for (; i < d; ++i) {
    sdot += r[i] * g[i];
    w[i] -= e * g[i];
    v[i] -= g[i] + e * hv[i];
    r[i] = w[i] - wstar[i];
    swm = mx(swm, std::abs(w[i]));
    svm = mx(svm, std::abs(v[i]));
    srm = mx(srm, std::abs(r[i]));
    svs += v[i] * v[i];
    srs += r[i] * r[i];
  }
  ws_.max = swm;
  vs_ = {svm, svs};
  rs_ = {srm, srs};
  return sdot;
}

}  // namespace detail

// Forward mode for a batch of constant step sizes on a quadratic, float or double: every
// iterate and tangent of the batch advances together, so each step streams H once for all of
// them (kernels::DenseOp::apply_many on the 2m columns [w_j - w*, v_j]); the rest of a step is
// one fused pass per column. A step size gives the same bits alone, in any batch and on any
// thread (one step size is simply a batch of one, and the columns never mix).
template <class S>
std::vector<Outcome> forward_batch(const Quadratic<S>& p, const S* etas, Index m, const MetaOptions& opt) {
  static_assert(kernels::simd_scalar<S>, "the batched engine serves float and double");
  using Col = Eigen::Map<Vec<S>, Eigen::AlignedMax>;
  constexpr Index align = 64 / sizeof(S);
  const Steps t = opt.steps;
  const Index d = p.dim(), ld = (d + align - 1) / align * align;
  const Vec<S>& wstar = p.w_star();
  kernels::ColMat<S> W(ld, m), IN(ld, 2 * m), OUT(ld, 2 * m);
  W.setZero();
  IN.setZero();
  OUT.setZero();
  const size_t mu = static_cast<size_t>(m);
  std::vector<Diagnostics> diag(mu);
  std::vector<double> vrel2(mu, 0.0);
  std::vector<char> w_nonzero(mu, 0), v_nonzero(mu, 0);
  std::vector<detail::ColStats<S>> wst(mu), vst(mu), rst(mu);  // of the current w, v, r
  for (Index j = 0; j < m; ++j) {
    const size_t u = static_cast<size_t>(j);
    Col w(W.col(j).data(), d), r(IN.col(j).data(), d);
    w = p.w0();
    r = w - wstar;
    wst[u].max = maxabs(w);
    rst[u] = {maxabs(r), r.squaredNorm()};
  }
  Workspace<S> ws;
  const double sqrt_d = std::sqrt(double(d));
  const double eps2 = sm::to_double(sm::epsilon<S>()) * sm::to_double(sm::epsilon<S>());
  const S safe_hi = std::sqrt(std::numeric_limits<S>::max() / S(d + 1));
  const S safe_lo = std::sqrt(std::numeric_limits<S>::min()) / std::numeric_limits<S>::epsilon();
  for (Steps tau = 0; tau < t; ++tau) {
    poll(opt.stop);
    p.op().apply_many(IN.data(), ld, 2 * m, OUT.data(), ld);
    ws.tau = tau;
    for (Index j = 0; j < m; ++j) {
      const size_t u = static_cast<size_t>(j);
      Diagnostics& dg = diag[u];
      p.note_stats(ws, rst[u].max, std::sqrt(rst[u].sum2));
      const S wmax = wst[u].max, vmax = vst[u].max;
      detail::ColStats<S> wn, vn, rn;
      const S dot = detail::fused_forward_update(W.col(j).data(), IN.col(m + j).data(), IN.col(j).data(),
                                                 OUT.col(j).data(), OUT.col(m + j).data(), wstar.data(), d, etas[j],
                                                 wn, vn, rn);
      note_loss(dg, Quantity::loss, S(0.5) * dot, ws, tau);
      dg.check_vector(Quantity::iterate, wmax, w_nonzero[u], tau);
      dg.check_vector(Quantity::tangent, vmax, v_nonzero[u], tau);
      w_nonzero[u] = wmax != S(0);
      v_nonzero[u] = vmax != S(0);
      // rounding error carried by the tangent, as in forward_mode
      const S vnorm = (vn.max < safe_hi && vn.max > safe_lo) ? std::sqrt(vn.sum2)
                                                              : safe_norm(Col(IN.col(m + j).data(), d));
      if (vnorm > S(0)) {
        double rr = static_cast<double>(ws.grad_err) * sqrt_d / static_cast<double>(vnorm);
        if (!std::isfinite(rr * rr)) rr = std::exp(sm::log_abs(ws.grad_err) + std::log(sqrt_d) - sm::log_abs(vnorm));
        vrel2[u] += rr * rr + eps2;
      }
      wst[u] = wn;
      vst[u] = vn;
      rst[u] = rn;
    }
  }
  // meta-loss M = f(w_t) and its gradient H (w_t - w*), then dM/deta = <grad M, v_t>
  p.op().apply_many(IN.data(), ld, m, OUT.data(), ld);
  std::vector<Outcome> out(mu);
  for (Index j = 0; j < m; ++j) {
    const size_t u = static_cast<size_t>(j);
    Diagnostics& dg = diag[u];
    Col v(IN.col(m + j).data(), d), gM(OUT.col(j).data(), d), r(IN.col(j).data(), d);
    dg.check_vector(Quantity::iterate, wst[u].max, w_nonzero[u], t);
    dg.check_vector(Quantity::tangent, vst[u].max, v_nonzero[u], t);
    p.note_stats(ws, rst[u].max, std::sqrt(rst[u].sum2));
    const S M = S(0.5) * r.dot(gM);
    note_loss(dg, Quantity::meta_loss, M, ws, t);
    const S dM = gM.dot(v);
    dg.forward_steps = t;
    if (dM != S(0) && sm::isfinite(dM)) {
      const double ldm = sm::log_abs(dM), lv = sm::log_abs(safe_norm(v)), lg = sm::log_abs(safe_norm(gM));
      double lest = sm::log_abs(ws.grad_err) + lv;
      if (vrel2[u] > 0) lest = log_add(lest, lg + lv + 0.5 * std::log(vrel2[u]));
      lest = log_add(lest, sm::log_abs(sm::epsilon<S>()) + lg + lv);
      dg.check_grad_error<S>(std::exp(lest - ldm), t);
    } else if (dM == S(0)) {
      check_dot_underflow<S>(dg, gM, v, t);
    }
    out[u] = finalize<S>(M, dM, nullptr, opt, std::move(dg));
  }
  return out;
}

}  // namespace metastep
