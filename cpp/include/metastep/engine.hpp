// One entry point per problem type: run the requested mode for each step size of a batch.
#pragma once
#include <string>
#include <vector>

#include "metagrad/checkpoint.hpp"
#include "metagrad/exact.hpp"
#include "metagrad/fd.hpp"
#include "metagrad/forward.hpp"
#include "metagrad/reverse.hpp"
#include "metagrad/scaled.hpp"
#include "sgd.hpp"
#include "trajectory.hpp"

namespace metastep {

enum class Mode { reverse, checkpoint, forward, fd, scaled_forward, scaled_reverse };
inline Mode parse_mode(const std::string& s) {
  if (s == "reverse") return Mode::reverse;
  if (s == "checkpoint") return Mode::checkpoint;
  if (s == "forward") return Mode::forward;
  if (s == "fd") return Mode::fd;
  if (s == "scaled" || s == "scaled_forward") return Mode::scaled_forward;
  if (s == "scaled_reverse") return Mode::scaled_reverse;
  throw std::invalid_argument("unknown iterative mode '" + s + "': expected reverse, checkpoint, forward, fd, scaled, scaled_forward or scaled_reverse");
}

template <class Problem, class S = typename Problem::S>
Outcome run_mode(const Problem& p, Mode mode, const StepSizes<S>& eta, const MetaOptions& opt) {
  if (opt.steps < 1) throw std::invalid_argument("steps must be at least 1");
  if (opt.valid && !p.has_valid()) throw std::invalid_argument("on='valid' needs a task with a validation set");
  switch (mode) {
    case Mode::reverse: return reverse_mode(p, eta, opt);
    case Mode::checkpoint: return checkpoint_mode(p, eta, opt);
    case Mode::forward: return forward_mode(p, eta, opt);
    case Mode::fd: return fd_mode(p, eta, opt);
    case Mode::scaled_forward: return scaled_forward(p, eta, opt);
    case Mode::scaled_reverse: return scaled_reverse(p, eta, opt);
  }
  throw std::invalid_argument("unknown mode");
}

// A batch of constant step sizes: the loop lives here, not in Python.
template <class Problem, class S = typename Problem::S>
std::vector<Outcome> run_batch(const Problem& p, Mode mode, const std::vector<S>& etas, const MetaOptions& opt) {
  if (opt.steps < 1) throw std::invalid_argument("steps must be at least 1");
  std::vector<Outcome> out;
  out.reserve(etas.size());
  for (const S& e : etas) {
    StepSizes<S> st;
    st.eta = e;
    out.push_back(run_mode(p, mode, st, opt));
  }
  return out;
}

template <class S>
std::vector<Outcome> exact_batch(const Spectrum<S>& sp, const std::vector<S>& etas, const MetaOptions& opt) {
  if (opt.steps < 1) throw std::invalid_argument("steps must be at least 1");
  if (opt.valid && !sp.has_valid) throw std::invalid_argument("on='valid' needs a task with a validation set");
  std::vector<Outcome> out;
  out.reserve(etas.size());
  for (const S& e : etas) out.push_back(exact_outcome(sp, e, opt));
  return out;
}

}  // namespace metastep
