// Diagnostics of one run: the first failure (quantity, kind, step) and the range of
// log2-magnitudes each tracked quantity went through. A run never hides a failure: the
// numbers it returns are what the arithmetic produced, and the status says what went wrong.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "scalar/traits.hpp"
#include "types.hpp"

namespace metastep {

// Range of log2 of a quantity's magnitude (max-abs element for a vector) over a run.
// Magnitudes of float and double are kept as they are (exactly, in double) and turned into
// logarithms only when the range is read, so that the inner loop takes no logarithm; wider
// types, whose magnitudes may not fit in a double, are logged as they come.
struct Log2Range {
  template <class S>
  void add(S magnitude) {
    if (!(magnitude > S(0)) || !sm::isfinite(magnitude)) return;  // zeros/non-finite: see failure
    if constexpr (std::is_same_v<S, float> || std::is_same_v<S, double>) {
      const double m = static_cast<double>(magnitude);
      mag_lo_ = std::min(mag_lo_, m);
      mag_hi_ = std::max(mag_hi_, m);
    } else {
      add_log2(sm::log_abs(magnitude) / std::log(2.0));
    }
  }
  void add_log2(double l2) {  // a magnitude known as log2 (scaled mode: exponent + mantissa)
    if (!std::isfinite(l2)) return;
    lo_ = std::min(lo_, l2);
    hi_ = std::max(hi_, l2);
  }
  bool seen() const { return mag_hi_ > 0 || std::isfinite(hi_); }
  double lo() const { return mag_hi_ > 0 ? std::min(lo_, std::log2(mag_lo_)) : lo_; }
  double hi() const { return mag_hi_ > 0 ? std::max(hi_, std::log2(mag_hi_)) : hi_; }

 private:
  double lo_ = std::numeric_limits<double>::infinity();
  double hi_ = -std::numeric_limits<double>::infinity();
  double mag_lo_ = std::numeric_limits<double>::infinity();
  double mag_hi_ = 0;
};

enum class Quantity { iterate, tangent, adjoint, loss, meta_loss, meta_grad };
inline const char* quantity_name(Quantity q) {
  switch (q) {
    case Quantity::iterate: return "iterate";
    case Quantity::tangent: return "tangent";
    case Quantity::adjoint: return "adjoint";
    case Quantity::loss: return "loss";
    case Quantity::meta_loss: return "meta-loss";
    case Quantity::meta_grad: return "meta-gradient";
  }
  return "?";
}

// log(e^a + e^b) for the error estimates, which are combined in the log domain so that
// large-but-finite quantities (a float32 tangent of 1e30) cannot overflow the estimate.
inline double log_add(double a, double b) {
  if (a == -std::numeric_limits<double>::infinity()) return b;
  if (b == -std::numeric_limits<double>::infinity()) return a;
  const double m = std::max(a, b);
  return m + std::log(std::exp(a - m) + std::exp(b - m));
}

struct Diagnostics {
  // First failure in computation order.
  bool failed = false;
  std::string quantity;   // e.g. "adjoint"
  std::string kind;       // "non-finite", "underflow to zero", "subnormal", "cancellation"
  Steps step = -1;        // inner step index tau of the failing quantity
  Log2Range iterate, tangent, adjoint, loss;
  // Memory/cost accounting (reverse and checkpoint modes).
  std::int64_t stored_states = 0;      // peak number of d-vectors of iterate stored at once
  std::int64_t recomputed_steps = 0;   // inner steps run again from checkpoints
  std::int64_t forward_steps = 0;      // inner steps of the first forward sweep
  double grad_condition = 0.0;         // sum|terms| / |sum| of the accumulated meta-gradient (reverse)
  double grad_rel_error = 0.0;         // estimated relative rounding error of the meta-gradient
  double value_rel_error = 0.0;        // the same for the meta-objective (exact mode)

  void fail(Quantity q, const char* what, Steps at) {
    if (failed) return;
    failed = true;
    quantity = quantity_name(q);
    kind = what;
    step = at;
  }

  Log2Range* range_of(Quantity q) {
    switch (q) {
      case Quantity::iterate: return &iterate;
      case Quantity::tangent: return &tangent;
      case Quantity::adjoint: return &adjoint;
      case Quantity::loss: return &loss;
      default: return nullptr;
    }
  }

  // A vector quantity, judged by its largest magnitude. A vector can legitimately become
  // exactly zero (eta lambda = 1 on a one-dimensional problem, w0 = w*), so zero alone is not
  // a failure; a vector shrinking towards zero passes through the subnormal range first,
  // where it is flagged (its relative precision is already lost there).
  template <class S>
  void check_vector(Quantity q, S maxabs, bool /*was_nonzero*/, Steps at) {
    if (Log2Range* r = range_of(q)) r->add(maxabs);
    if (!sm::isfinite(maxabs)) {
      fail(q, "non-finite", at);
    } else if (maxabs > S(0) && maxabs < sm::min_normal<S>()) {
      fail(q, "subnormal", at);
    }
  }

  // A loss value; `grad_nonzero` says whether the gradient at the same point is non-zero,
  // which for a convex quadratic means the true loss is strictly above its minimum.
  template <class S>
  void check_loss(Quantity q, S value, bool true_positive, Steps at) {
    if (Log2Range* r = range_of(q)) r->add(value);
    if (!sm::isfinite(value)) {
      fail(q, "non-finite", at);
    } else if (value < S(0)) {
      fail(q, "negative (rounding)", at);
    } else if (value == S(0)) {
      if (true_positive) fail(q, "underflow to zero", at);
    } else if (value < sm::min_normal<S>()) {
      fail(q, "subnormal", at);
    }
  }

  template <class S>
  void check_scalar(Quantity q, S value, Steps at) {
    if (!sm::isfinite(value)) fail(q, "non-finite", at);
    else if (value != S(0) && sm::abs(value) < sm::min_normal<S>()) fail(q, "subnormal", at);
  }

  // Flag a meta-gradient whose estimated relative rounding error exceeds eps^(1/3): two
  // thirds of the digits are gone (e.g. the gradient of a converged least-squares fit is
  // rounding noise). The estimate (a random-walk bound, usually pessimistic) is reported.
  template <class S>
  void check_grad_error(double rel, Steps at) {
    grad_rel_error = rel;
    const double limit = std::cbrt(sm::to_double(sm::epsilon<S>()));
    if (!(rel <= limit)) fail(Quantity::meta_grad, "cancellation", at);
  }

  std::string status() const {
    if (!failed) return "ok";
    return kind + ": " + quantity + " at step " + std::to_string(step);
  }
};

}  // namespace metastep
