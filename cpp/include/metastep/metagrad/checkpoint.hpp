// Reverse mode with binomial checkpointing (SPEC §4.2): at most k iterates stored at once
// (memory O(k d) whatever t), segments recomputed from the nearest snapshot. With k
// snapshots and r recomputations per step, C(k + r, k) steps can be reversed; the split
// points below realise that bound, so the extra work is at most about r t forward steps
// with r the smallest integer such that C(k + r, k) >= t. The gradient is bit-identical to
// plain reverse mode (same step and back-propagation code, same order).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "reverse.hpp"

namespace metastep {

namespace detail {
// C(n, k), saturating at INT64_MAX.
inline std::int64_t binom_sat(std::int64_t n, std::int64_t k) {
  if (k < 0 || k > n) return 0;
  k = std::min(k, n - k);
  long double r = 1;
  for (std::int64_t i = 1; i <= k; ++i) {
    r = r * static_cast<long double>(n - k + i) / static_cast<long double>(i);
    if (r > 9.0e18L) return INT64_MAX;
  }
  return static_cast<std::int64_t>(std::llround(r));
}
}  // namespace detail

template <class Problem, class S = typename Problem::S>
class Checkpointer {
 public:
  Checkpointer(const Problem& p, const StepSizes<S>& eta, Backprop<Problem>& bp, Diagnostics& diag)
      : p_(p), eta_(eta), bp_(bp), diag_(diag), g_(p.dim()) {}

  // Reverse steps a .. b-1 starting from the snapshot w_a, with `snaps` snapshots available
  // (w_a's own included).
  void reverse(const Vec<S>& w_a, Steps a, Steps b, std::int64_t snaps) {
    const Steps n = b - a;
    if (n <= 0) return;
    if (n == 1) {
      bp_.step_back(w_a, a);
      return;
    }
    if (snaps <= 1) {  // only the start: recompute every step from it
      Vec<S> w(w_a.size());
      for (Steps j = b - 1; j >= a; --j) {
        w = w_a;
        advance(w, a, j);
        bp_.step_back(w, j);
      }
      return;
    }
    // Smallest r with C(snaps + r, snaps) >= n, then the split that leaves the right part
    // reversible with snaps - 1 snapshots and the left part with one recomputation fewer.
    std::int64_t r = 1;
    while (detail::binom_sat(snaps + r, snaps) < n) ++r;
    const std::int64_t right_cap = detail::binom_sat(snaps - 1 + r, snaps - 1);
    const Steps l = std::max<Steps>(1, std::min<Steps>(n - 1, n - right_cap));
    Vec<S> w_m = w_a;
    advance(w_m, a, a + l);
    ++live_;
    peak_ = std::max(peak_, live_);
    reverse(w_m, a + l, b, snaps - 1);
    --live_;
    reverse(w_a, a, a + l, snaps);
  }

  std::int64_t peak_snapshots() const { return peak_; }
  std::int64_t live_ = 1, peak_ = 1;   // w_0 is the first snapshot

 private:
  void advance(Vec<S>& w, Steps from, Steps to) {
    for (Steps tau = from; tau < to; ++tau) gd_step(p_, w, eta_.at(tau), g_, ws_);
    diag_.recomputed_steps += to - from;
  }
  const Problem& p_;
  const StepSizes<S>& eta_;
  Backprop<Problem>& bp_;
  Diagnostics& diag_;
  Workspace<S> ws_;
  Vec<S> g_;
};

// Automatic number of snapshots: about sqrt(t) (at most 2 recomputations per step).
inline std::int64_t default_checkpoints(Steps t) {
  return std::max<std::int64_t>(2, static_cast<std::int64_t>(std::ceil(std::sqrt(static_cast<double>(t)))));
}

template <class Problem, class S = typename Problem::S>
Outcome checkpoint_mode(const Problem& p, const StepSizes<S>& eta, const MetaOptions& opt) {
  const Steps t = opt.steps;
  const std::int64_t k = opt.checkpoints > 0 ? opt.checkpoints : default_checkpoints(t);
  Diagnostics diag;
  Backprop<Problem> bp(p, eta, t, diag);
  Vec<S> w = p.w0();
  const S M = bp.sweep(w, t, opt.valid, [](Steps, const Vec<S>&) {});
  Checkpointer<Problem> cp(p, eta, bp, diag);
  const Vec<S> w0 = p.w0();
  cp.reverse(w0, 0, t, k);
  diag.stored_states = cp.peak_snapshots();
  const S dM = bp.total();
  return finalize<S>(M, dM, eta.schedule ? &bp.dM_steps : nullptr, opt, std::move(diag));
}

}  // namespace metastep
