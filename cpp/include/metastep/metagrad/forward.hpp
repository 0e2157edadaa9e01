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
  }
  return finalize<S>(M, dM, nullptr, opt, std::move(diag));
}

}  // namespace metastep

namespace metastep {

// Forward mode for a batch of constant step sizes on a quadratic, float or double: every
// iterate and tangent of the batch advances together, so each step streams H once for all of
// them (kernels::DenseOp::apply_many on the 2m columns [w_j - w*, v_j]). Each column goes
// through exactly the operations of a single run, on columns aligned like a lone vector, and
// the products are the same fused chains: a step size gives the same bits alone, in any batch
// and on any thread (one step size is simply a batch of one).
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
  std::vector<Diagnostics> diag(static_cast<size_t>(m));
  std::vector<double> vrel2(static_cast<size_t>(m), 0.0);
  std::vector<char> w_nonzero(static_cast<size_t>(m), 0), v_nonzero(static_cast<size_t>(m), 0);
  for (Index j = 0; j < m; ++j) Col(W.col(j).data(), d) = p.w0();
  Workspace<S> ws;
  ws.r.resize(d);
  const double sqrt_d = std::sqrt(double(d));
  const double eps2 = sm::to_double(sm::epsilon<S>()) * sm::to_double(sm::epsilon<S>());
  auto residuals = [&] {
    for (Index j = 0; j < m; ++j) Col(IN.col(j).data(), d) = Col(W.col(j).data(), d) - wstar;
  };
  for (Steps tau = 0; tau < t; ++tau) {
    residuals();
    p.op().apply_many(IN.data(), ld, 2 * m, OUT.data(), ld);
    ws.tau = tau;
    for (Index j = 0; j < m; ++j) {
      const size_t u = static_cast<size_t>(j);
      Diagnostics& dg = diag[u];
      Col w(W.col(j).data(), d), v(IN.col(m + j).data(), d), g(OUT.col(j).data(), d), hv(OUT.col(m + j).data(), d);
      ws.r = Col(IN.col(j).data(), d);
      p.note(ws);
      const S f = S(0.5) * ws.r.dot(g);
      note_loss(dg, Quantity::loss, f, ws, tau);
      const S wmax = maxabs(w), vmax = maxabs(v);
      dg.check_vector(Quantity::iterate, wmax, w_nonzero[u], tau);
      dg.check_vector(Quantity::tangent, vmax, v_nonzero[u], tau);
      w_nonzero[u] = wmax != S(0);
      v_nonzero[u] = vmax != S(0);
      const S e = etas[j];
      w -= e * g;
      v -= g + e * hv;
      // rounding error carried by the tangent, as in forward_mode
      const S vn = safe_norm(v);
      if (vn > S(0)) {
        double r = static_cast<double>(ws.grad_err) * sqrt_d / static_cast<double>(vn);
        if (!std::isfinite(r * r)) r = std::exp(sm::log_abs(ws.grad_err) + std::log(sqrt_d) - sm::log_abs(vn));
        vrel2[u] += r * r + eps2;
      }
    }
  }
  // meta-loss M = f(w_t) and its gradient H (w_t - w*), then dM/deta = <grad M, v_t>
  residuals();
  p.op().apply_many(IN.data(), ld, m, OUT.data(), ld);
  std::vector<Outcome> out(static_cast<size_t>(m));
  for (Index j = 0; j < m; ++j) {
    const size_t u = static_cast<size_t>(j);
    Diagnostics& dg = diag[u];
    Col w(W.col(j).data(), d), v(IN.col(m + j).data(), d), gM(OUT.col(j).data(), d);
    dg.check_vector(Quantity::iterate, maxabs(w), w_nonzero[u], t);
    dg.check_vector(Quantity::tangent, maxabs(v), v_nonzero[u], t);
    ws.r = Col(IN.col(j).data(), d);
    p.note(ws);
    const S M = S(0.5) * ws.r.dot(gM);
    note_loss(dg, Quantity::meta_loss, M, ws, t);
    const S dM = gM.dot(v);
    dg.forward_steps = t;
    if (dM != S(0) && sm::isfinite(dM)) {
      const double ldm = sm::log_abs(dM), lv = sm::log_abs(safe_norm(v)), lg = sm::log_abs(safe_norm(gM));
      double lest = sm::log_abs(ws.grad_err) + lv;
      if (vrel2[u] > 0) lest = log_add(lest, lg + lv + 0.5 * std::log(vrel2[u]));
      lest = log_add(lest, sm::log_abs(sm::epsilon<S>()) + lg + lv);
      dg.check_grad_error<S>(std::exp(lest - ldm), t);
    }
    out[u] = finalize<S>(M, dM, nullptr, opt, std::move(dg));
  }
  return out;
}

}  // namespace metastep
