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
#include <vector>

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

  // Reverse steps 0 .. t-1 from the snapshot w0 with at most `snaps` snapshots held at once
  // (w0's own included). Iterative (explicit stack, depth <= snaps): no recursion limit.
  void reverse(const Vec<S>& w0, Steps t, std::int64_t snaps) {
    struct Frame {
      Vec<S> w;  // state at a
      Steps a, b;
      std::int64_t snaps;
    };
    std::vector<Frame> stack;
    stack.push_back(Frame{w0, 0, t, std::max<std::int64_t>(1, snaps)});
    note_live(1);
    while (!stack.empty()) {
      Frame& f = stack.back();
      const Steps n = f.b - f.a;
      if (n <= 0) {
        stack.pop_back();
        continue;
      }
      if (n == 1) {
        bp_.step_back(f.w, f.a);
        stack.pop_back();
        continue;
      }
      if (f.snaps >= n) {  // room for every state of the segment: store them all
        note_live(static_cast<std::int64_t>(stack.size()) - 1 + n);
        std::vector<Vec<S>> states(static_cast<size_t>(n));
        states[0] = f.w;
        for (Steps j = 1; j < n; ++j) {
          states[static_cast<size_t>(j)] = states[static_cast<size_t>(j - 1)];
          advance(states[static_cast<size_t>(j)], f.a + j - 1, f.a + j);
        }
        for (Steps j = n - 1; j >= 0; --j) bp_.step_back(states[static_cast<size_t>(j)], f.a + j);
        stack.pop_back();
        continue;
      }
      if (f.snaps <= 1) {  // only the start: recompute every step from it
        note_live(static_cast<std::int64_t>(stack.size()) + 1);
        Vec<S> w(f.w.size());
        for (Steps j = f.b - 1; j >= f.a; --j) {
          w = f.w;
          advance(w, f.a, j);
          bp_.step_back(w, j);
        }
        stack.pop_back();
        continue;
      }
      // Smallest r with C(snaps + r, snaps) >= n, then the split that leaves the right
      // part reversible with snaps - 1 snapshots and the left part with one fewer pass.
      std::int64_t r = 1;
      while (detail::binom_sat(f.snaps + r, f.snaps) < n) ++r;
      const std::int64_t right_cap = detail::binom_sat(f.snaps - 1 + r, f.snaps - 1);
      const Steps l = std::max<Steps>(1, std::min<Steps>(n - 1, n - right_cap));
      Vec<S> w_m = f.w;
      advance(w_m, f.a, f.a + l);
      const Steps a = f.a, b = f.b;
      const std::int64_t s = f.snaps;
      f.b = a + l;  // the left part stays on the stack, handled after the right part
      stack.push_back(Frame{std::move(w_m), a + l, b, s - 1});
      note_live(static_cast<std::int64_t>(stack.size()));
    }
  }

  std::int64_t peak_snapshots() const { return peak_; }

 private:
  void note_live(std::int64_t live) { peak_ = std::max(peak_, live); }
  void advance(Vec<S>& w, Steps from, Steps to) {
    for (Steps tau = from; tau < to; ++tau) {
      poll(bp_.stop);
      gd_step(p_, w, eta_.at(tau), g_, ws_, tau);
    }
    diag_.recomputed_steps += to - from;
  }
  const Problem& p_;
  const StepSizes<S>& eta_;
  Backprop<Problem>& bp_;
  Diagnostics& diag_;
  Workspace<S> ws_;
  Vec<S> g_;
  std::int64_t peak_ = 0;
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
  bp.stop = opt.stop;
  Vec<S> w = p.w0();
  const S M = bp.sweep(w, t, opt.valid, [](Steps, const Vec<S>&) {});
  Checkpointer<Problem> cp(p, eta, bp, diag);
  cp.reverse(p.w0(), t, k);
  diag.stored_states = cp.peak_snapshots();
  const S dM = bp.total();
  return finalize<S>(M, dM, eta.schedule ? &bp.dM_steps : nullptr, opt, std::move(diag));
}

}  // namespace metastep
