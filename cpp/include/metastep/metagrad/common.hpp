// What every meta-gradient mode returns, and the conversion of a meta-loss M(w_t) and its
// derivative into the requested objective (SPEC §3):
//   final: F = M,              F' = M'
//   log:   G = (1/t) log M,    G' = M' / (t M)
#pragma once
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "../diagnostics.hpp"
#include "../interrupt.hpp"
#include "../problems.hpp"
#include "../scalar/format.hpp"

namespace metastep {

enum class Objective { final_loss, log_loss };
inline Objective parse_objective(const std::string& s) {
  if (s == "final") return Objective::final_loss;
  if (s == "log") return Objective::log_loss;
  throw std::invalid_argument("unknown objective '" + s + "': expected 'final' or 'log'");
}

struct MetaOptions {
  Objective objective = Objective::final_loss;
  bool valid = false;        // meta-loss on the validation set (train-by-validation)
  Steps steps = 1;           // t
  Index checkpoints = 0;     // checkpoint mode: snapshots held at once (0: automatic)
  Stop* stop = nullptr;      // polled once per step (and per step size in batches); may be null
};

// A number in float64 plus its exact magnitude and sign, a long double copy, and for the
// extended precisions (quad, mp) an exact decimal text.
struct Num {
  double value = 0.0;
  double log_abs = -std::numeric_limits<double>::infinity();
  int sign = 0;
  long double ext = 0.0L;
  std::string text;

  template <class S>
  static Num of(const S& x) {
    Num n;
    n.value = sm::to_double(x);
    n.ext = sm::to_longdouble(x);
    if (sm::isnan(x)) {
      n.log_abs = std::numeric_limits<double>::quiet_NaN();
      n.sign = 0;
    } else {
      n.log_abs = sm::log_abs(x);
      n.sign = sm::sign(x);
    }
    if (IsExtended<S>::value) n.text = decimal(x);
    return n;
  }
  // From a log-magnitude and sign (exact and scaled modes): no intermediate leaves the range.
  template <class W>
  static Num of_log(const W& log_abs, int sign) {
    Num n;
    const long double l = sm::to_longdouble(log_abs);
    n.log_abs = static_cast<double>(l);
    n.sign = sign;
    if (sign == 0 || sm::isnan(log_abs) || l == -std::numeric_limits<long double>::infinity()) {
      n.value = 0.0;
      n.ext = 0.0L;
      n.sign = sm::isnan(log_abs) ? 0 : sign;
      if (sm::isnan(log_abs)) {
        n.value = std::numeric_limits<double>::quiet_NaN();
        n.ext = n.value;
      }
      n.log_abs = sm::isnan(log_abs) ? std::numeric_limits<double>::quiet_NaN()
                                     : -std::numeric_limits<double>::infinity();
      if (IsExtended<W>::value) n.text = sm::isnan(log_abs) ? "nan" : "0";
      return n;
    }
    n.ext = sign * std::exp(l);                                  // long double range
    n.value = sign * std::exp(static_cast<double>(l));           // may be inf / 0 in float64
    if (IsExtended<W>::value) n.text = decimal_from_log(log_abs, sign);
    return n;
  }
};

struct Outcome {
  Num value;                   // objective value (F or G)
  Num grad;                    // derivative w.r.t. a constant eta (or along all-ones for schedules)
  std::vector<Num> grad_steps; // derivative w.r.t. each eta_tau (schedule, reverse/checkpoint)
  Diagnostics diag;
};

// A dot product a.b that came out exactly zero although neither vector is: when even the
// largest term max|a| max|b| lies below the normal range, every term underflowed and the zero
// is not the true value (a plain mode cannot represent it): flag it.
template <class S, class A, class B>
inline void check_dot_underflow(Diagnostics& diag, const A& a, const B& b, Steps at) {
  if (a.size() == 0 || b.size() == 0) return;
  const S am = a.cwiseAbs().maxCoeff(), bm = b.cwiseAbs().maxCoeff();
  if (am > S(0) && bm > S(0) && sm::log_abs(am) + sm::log_abs(bm) < sm::log_abs(sm::min_normal<S>()))
    diag.fail(Quantity::meta_grad, "underflow to zero", at);
}

// Turn M, M' computed in precision S into the objective, checking what a plain mode produced.
template <class S>
Outcome finalize(S M, S dM, const Vec<S>* dM_steps, const MetaOptions& opt, Diagnostics diag) {
  Outcome out;
  const S t = S(static_cast<double>(opt.steps));
  S value, grad;
  if (opt.objective == Objective::final_loss) {
    value = M;
    grad = dM;
  } else {
    if (!(M > S(0)) && !diag.failed)
      diag.fail(Quantity::meta_loss, M == S(0) ? "zero (log undefined)" : "non-positive (log undefined)", opt.steps);
    // M or M' subnormal already lost digits, although their ratio may look normal: flag it
    diag.check_scalar(Quantity::meta_loss, M, opt.steps);
    diag.check_scalar(Quantity::meta_grad, dM, opt.steps);
    value = sm::log(M) / t;
    grad = dM / (t * M);
  }
  diag.check_scalar(Quantity::meta_loss, value, opt.steps);
  diag.check_scalar(Quantity::meta_grad, grad, opt.steps);
  out.value = Num::of(value);
  out.grad = Num::of(grad);
  if (dM_steps) {
    out.grad_steps.reserve(dM_steps->size());
    for (Index i = 0; i < dM_steps->size(); ++i) {
      const S g = opt.objective == Objective::final_loss ? (*dM_steps)[i] : (*dM_steps)[i] / (t * M);
      out.grad_steps.push_back(Num::of(g));
    }
  }
  out.diag = std::move(diag);
  return out;
}

// Record one loss evaluation of a run in the diagnostics.
template <class S>
inline void note_loss(Diagnostics& diag, Quantity q, S f, const Workspace<S>& ws, Steps tau) {
  diag.check_loss(q, f, ws.residual_maxabs > S(0), tau);
  if (ws.cancellation) diag.fail(q, "cancellation", tau);
}

}  // namespace metastep
