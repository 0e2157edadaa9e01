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
  S verr2 = 0;                                // squared error estimate of the tangent
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
    const S vold2 = v.squaredNorm();
    w -= e * g;
    v -= g + e * hv;
    // the tangent absorbs the rounding error of every gradient; earlier errors are carried
    // with the tangent's own growth or decay, new ones add like a random walk
    const S vnew2 = v.squaredNorm();
    verr2 = (vold2 > S(0) ? verr2 * (vnew2 / vold2) : S(0)) + ws.grad_err * ws.grad_err * S(d) +
            sm::epsilon<S>() * sm::epsilon<S>() * vnew2;
  }
  diag.check_vector(Quantity::iterate, maxabs(w), w_nonzero, t);
  diag.check_vector(Quantity::tangent, maxabs(v), v_nonzero, t);
  Vec<S> gM(d);
  const S M = p.meta(opt.valid, w, &gM, ws);
  note_loss(diag, Quantity::meta_loss, M, ws, t);
  const S dM = gM.dot(v);
  diag.forward_steps = t;
  if (dM != S(0) && sm::isfinite(dM)) {
    const S est = ws.grad_err * v.norm() + gM.norm() * sm::sqrt(verr2) + sm::epsilon<S>() * gM.cwiseProduct(v).norm();
    diag.check_grad_error<S>(sm::to_double(est / sm::abs(dM)), t);
  }
  return finalize<S>(M, dM, nullptr, opt, std::move(diag));
}

}  // namespace metastep
