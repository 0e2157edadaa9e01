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
  for (Steps tau = 0; tau < t; ++tau) {
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
      const double r = std::exp(sm::log_abs(ws.grad_err) + 0.5 * std::log(double(d)) - sm::log_abs(vn));
      const double eps = sm::to_double(sm::epsilon<S>());
      vrel2 += r * r + eps * eps;
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
  }
  return finalize<S>(M, dM, nullptr, opt, std::move(diag));
}

}  // namespace metastep
