// Central finite differences (SPEC §4.6), for checking only: M(w_t) recomputed at eta +- h
// (for a schedule: every eta_tau shifted by +-h, i.e. the derivative along all-ones).
#pragma once
#include <cmath>

#include "../trajectory.hpp"
#include "common.hpp"

namespace metastep {

template <class Problem, class S = typename Problem::S>
Outcome fd_mode(const Problem& p, const StepSizes<S>& eta, const MetaOptions& opt) {
  const Steps t = opt.steps;
  const S base = eta.schedule ? S(1) : sm::abs(eta.eta);
  const S h = std::cbrt(sm::to_double(sm::epsilon<S>())) * (base > S(1e-3) ? base : S(1e-3));
  Diagnostics diag;
  auto shifted = [&](S delta) {
    std::vector<S> sched;
    StepSizes<S> e = eta;
    if (eta.schedule) {
      sched.assign(eta.schedule, eta.schedule + t);
      for (auto& x : sched) x += delta;
      e.schedule = sched.data();
      return final_meta_loss(p, e, t, opt.valid, diag, opt.stop);
    }
    e.eta = eta.eta + delta;
    return final_meta_loss(p, e, t, opt.valid, diag, opt.stop);
  };
  Diagnostics d0;
  const S M = final_meta_loss(p, eta, t, opt.valid, d0, opt.stop);
  const S Mp = shifted(h), Mm = shifted(-h);
  // Differentiate the objective itself (log form included) rather than M.
  S dM;
  if (opt.objective == Objective::log_loss) {
    // G' ~ (log M+ - log M-)/(2h t);  finalize() divides by t M, so hand it M * that.
    dM = (sm::log(Mp) - sm::log(Mm)) / (S(2) * h) * M;
  } else {
    dM = (Mp - Mm) / (S(2) * h);
  }
  if (d0.failed) diag = d0;
  return finalize<S>(M, dM, nullptr, opt, std::move(diag));
}

}  // namespace metastep
