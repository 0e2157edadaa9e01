// Unrolled inner runs (SPEC §2): GD with a constant step size or a schedule, recording the
// loss at every step (t + 1 values) and diagnostics.
#pragma once
#include <vector>

#include "metagrad/common.hpp"

namespace metastep {

template <class S>
struct Trajectory {
  std::vector<S> losses;        // f(w_0) .. f(w_t)
  std::vector<S> valid_losses;  // validation loss at w_0 .. w_t (when the task has one)
  Vec<S> w_final;
  Diagnostics diag;
};

// One GD step: returns f(w) and replaces w by w - eta grad f(w). The same code serves the
// unroll, the forward sweep of reverse mode and the recomputation in checkpoint mode, so
// those produce bit-identical iterates.
template <class Problem, class S = typename Problem::S>
inline S gd_step(const Problem& p, Vec<S>& w, S eta, Vec<S>& g, Workspace<S>& ws, Steps tau) {
  ws.tau = tau;
  const S f = p.value_grad(w, g, ws);
  w -= eta * g;
  return f;
}

template <class Problem, class S = typename Problem::S>
Trajectory<S> unroll(const Problem& p, const StepSizes<S>& eta, Steps t, Stop* stop = nullptr) {
  Trajectory<S> tr;
  Workspace<S> ws;
  Vec<S> w = p.w0(), g(p.dim());
  tr.losses.reserve(static_cast<size_t>(t) + 1);
  const bool valid = p.has_valid();
  if (valid) tr.valid_losses.reserve(static_cast<size_t>(t) + 1);
  bool was_nonzero = false;  // w_0 = 0 is a legitimate start
  for (Steps tau = 0; tau <= t; ++tau) {
    poll(stop);
    const S wmax = maxabs(w);
    tr.diag.check_vector(Quantity::iterate, wmax, was_nonzero, tau);
    was_nonzero = wmax != S(0);
    if (valid) {
      const S fv = p.meta(true, w, nullptr, ws);
      note_loss(tr.diag, Quantity::meta_loss, fv, ws, tau);
      tr.valid_losses.push_back(fv);
    }
    // the full training loss (for SGD: over all samples, not the minibatch)
    const S f = p.meta(false, w, nullptr, ws);
    note_loss(tr.diag, Quantity::loss, f, ws, tau);
    tr.losses.push_back(f);
    if (tau < t) gd_step(p, w, eta.at(tau), g, ws, tau);
  }
  tr.w_final = w;
  tr.diag.forward_steps = t;
  return tr;
}

// Meta-loss after t steps, value only (finite differences).
template <class Problem, class S = typename Problem::S>
S final_meta_loss(const Problem& p, const StepSizes<S>& eta, Steps t, bool valid, Diagnostics& diag,
                  Stop* stop = nullptr) {
  Workspace<S> ws;
  Vec<S> w = p.w0(), g(p.dim());
  for (Steps tau = 0; tau < t; ++tau) {
    poll(stop);
    const S f = gd_step(p, w, eta.at(tau), g, ws, tau);
    note_loss(diag, Quantity::loss, f, ws, tau);
  }
  const S M = p.meta(valid, w, nullptr, ws);
  note_loss(diag, Quantity::meta_loss, M, ws, t);
  return M;
}

}  // namespace metastep
