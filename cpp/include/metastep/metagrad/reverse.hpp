// Reverse mode (SPEC §4.1): back-propagation through the stored trajectory w_0 .. w_t.
//   a_t = grad M(w_t);  for tau = t-1 .. 0:
//     dM/deta_tau = -a_{tau+1} . grad f(w_tau);   a_tau = a_{tau+1} - eta_tau H a_{tau+1}
// Memory O(t d). This is what autodiff frameworks do, and what fails in floating point for
// large t (SPEC claim 3): the adjoint grows or shrinks like (1 - eta lambda)^t.
#pragma once
#include <cmath>

#include "../trajectory.hpp"
#include "common.hpp"

namespace metastep {

// Shared by reverse and checkpoint mode: the same operations in the same order, so the
// two modes return bit-identical gradients.
template <class Problem, class S = typename Problem::S>
struct Backprop {
  const Problem& p;
  const StepSizes<S>& eta;
  Diagnostics& diag;
  Workspace<S> ws;
  Vec<S> a, g, ha;
  Vec<S> dM_steps;        // dM/deta_tau
  bool a_nonzero = true;
  S rho_a = 0;            // relative (1-norm) rounding error of the adjoint, carried back linearly
  double log_err2 = -std::numeric_limits<double>::infinity();  // log of the summed squared term errors
  Stop* stop = nullptr;   // polled once per step, forward and backward

  Backprop(const Problem& p_, const StepSizes<S>& eta_, Steps t, Diagnostics& diag_)
      : p(p_), eta(eta_), diag(diag_), g(p_.dim()), ha(p_.dim()), dM_steps(Vec<S>::Zero(t)) {}

  // Forward sweep from w (overwritten with w_t): losses and iterates checked, optionally
  // each w_tau handed to `keep(tau, w)` before the step.
  template <class Keep>
  S sweep(Vec<S>& w, Steps t, bool valid, Keep&& keep) {
    bool w_nonzero = false;  // w_0 = 0 is a legitimate start
    for (Steps tau = 0; tau < t; ++tau) {
      poll(stop);
      keep(tau, w);
      const S wmax = maxabs(w);
      diag.check_vector(Quantity::iterate, wmax, w_nonzero, tau);
      w_nonzero = wmax != S(0);
      const S f = gd_step(p, w, eta.at(tau), g, ws, tau);
      note_loss(diag, Quantity::loss, f, ws, tau);
    }
    keep(t, w);
    diag.check_vector(Quantity::iterate, maxabs(w), w_nonzero, t);
    a.resize(p.dim());
    const S M = p.meta(valid, w, &a, ws);
    note_loss(diag, Quantity::meta_loss, M, ws, t);
    diag.check_vector(Quantity::adjoint, maxabs(a), true, t);
    a_nonzero = maxabs(a) != S(0);
    const S a2 = safe_norm(a);
    rho_a = a2 > S(0) ? S(std::exp(sm::log_abs(ws.grad_err) + 0.5 * std::log(double(p.dim())) - sm::log_abs(a2)))
                      : S(0);
    diag.forward_steps = t;
    return M;
  }

  // Reverse one step tau given w_tau; a holds a_{tau+1} on entry and a_tau on exit.
  void step_back(const Vec<S>& w_tau, Steps tau) {
    poll(stop);
    ws.tau = tau;
    p.value_grad_hvp(w_tau, a, g, ha, ws);
    dM_steps[tau] = -a.dot(g);
    if (dM_steps[tau] == S(0)) check_dot_underflow<S>(diag, a, g, tau);
    const double la = sm::log_abs(safe_norm(a)), lg = sm::log_abs(safe_norm(g));
    const double le = log_add(sm::log_abs(ws.grad_err) + la, sm::log_abs(sm::epsilon<S>()) + la + lg);
    log_err2 = log_add(log_err2, 2.0 * le);  // independent roundings add like a random walk
    a -= eta.at(tau) * ha;
    const S amax = maxabs(a);
    diag.check_vector(Quantity::adjoint, amax, a_nonzero, tau);
    a_nonzero = amax != S(0);
  }

  // dM/deta for a constant eta: the sum over steps, in a fixed order (t-1 down to 0).
  S total() {
    S sum = 0, sum_abs = 0;
    for (Index tau = dM_steps.size() - 1; tau >= 0; --tau) {
      sum += dM_steps[tau];
      sum_abs += sm::abs(dM_steps[tau]);
    }
    diag.grad_condition = sum != S(0) ? sm::to_double(sum_abs / sm::abs(sum)) : std::numeric_limits<double>::infinity();
    if (sum != S(0) && sm::isfinite(sum))
      // the adjoint's own error is one relative error carried linearly: it scales every term
      diag.check_grad_error<S>(std::exp(0.5 * log_err2 - sm::log_abs(sum)) +
                                   sm::to_double(rho_a + sm::epsilon<S>()) * std::exp(sm::log_abs(sum_abs) - sm::log_abs(sum)),
                               dM_steps.size());
    return sum;
  }
};

template <class Problem, class S = typename Problem::S>
Outcome reverse_mode(const Problem& p, const StepSizes<S>& eta, const MetaOptions& opt) {
  const Steps t = opt.steps;
  const Index d = p.dim();
  Diagnostics diag;
  Backprop<Problem> bp(p, eta, t, diag);
  bp.stop = opt.stop;
  Mat<S> W(static_cast<Index>(t) + 1, d);  // stored trajectory
  Vec<S> w = p.w0();
  const S M = bp.sweep(w, t, opt.valid, [&](Steps tau, const Vec<S>& wt) { W.row(tau) = wt.transpose(); });
  diag.stored_states = t + 1;
  Vec<S> w_tau(d);
  for (Steps tau = t - 1; tau >= 0; --tau) {
    w_tau = W.row(tau).transpose();
    bp.step_back(w_tau, tau);
  }
  const S dM = bp.total();
  return finalize<S>(M, dM, eta.schedule ? &bp.dM_steps : nullptr, opt, std::move(diag));
}

}  // namespace metastep
