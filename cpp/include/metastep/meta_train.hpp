// Meta-training of the step size in the core (issue 8): the loop of metastep.meta_train
// without a Python round trip per meta-step. The arithmetic of every update is the one of the
// Python reference loop (python/metastep/meta_train.py, engine="python"), operation for
// operation in double, so both give the same bits; the failure handling is the same too.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "metagrad/common.hpp"

namespace metastep {

enum class MetaOptimizer { gd, momentum, rmsprop, adam };
enum class OnFailure { stop, cont, raise };

struct MetaTrainConfig {
  double eta0 = 0;
  long meta_steps = 0;
  MetaOptimizer optimizer = MetaOptimizer::gd;
  double mu0 = 0.01;
  bool decay_sqrt = true;
  bool log_eta = false;
  OnFailure on_failure = OnFailure::stop;
  double beta = 0.9, rho = 0.9, eps = 1e-8, beta1 = 0.9, beta2 = 0.999;
  std::vector<std::string> tolerate;  // status prefixes used (and counted) rather than failing
  Stop* stop = nullptr;               // polled once per meta-step (the modes poll per inner step)
};

// One recorded event (the first failure, the first tolerated flag).
struct MetaEvent {
  bool set = false;
  long meta_step = 0;
  double eta = 0, grad = 0, value = 0, grad_rel_error = 0;
  std::string status;
  bool finite = false, used = false;
};

struct MetaTrainTrace {
  std::vector<double> etas, values, grads, log_abs_grads, lrs, grad_rel_errors;
  std::vector<int> signs;
  std::vector<std::string> statuses;
  long steps_done = 0;
  long n_not_ok = 0, n_flagged = 0;
  MetaEvent failure, first_flag;
  std::string stop_reason;
};

namespace detail {
inline bool starts_with_any(const std::string& s, const std::vector<std::string>& prefixes) {
  for (const auto& p : prefixes)
    if (s.compare(0, p.size(), p) == 0) return true;
  return false;
}
// Python's repr of a float (shortest round-trip form), for the messages.
inline std::string repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  std::string s(buf);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}
}  // namespace detail

// `evaluate(eta)` returns the Outcome of the meta-gradient at eta (any mode, any precision).
template <class Eval>
MetaTrainTrace meta_train_loop(const MetaTrainConfig& c, Eval&& evaluate) {
  MetaTrainTrace tr;
  tr.etas.push_back(c.eta0);
  double theta = c.log_eta ? std::log(c.eta0) : c.eta0;
  double m1 = 0, m2 = 0;
  long k = 0;
  while (true) {
    poll(c.stop);
    const double eta = tr.etas.back();
    const Outcome r = evaluate(eta);
    const double g = r.grad.value, v = r.value.value;
    const std::string status = r.diag.status();
    tr.values.push_back(v);
    tr.grads.push_back(g);
    tr.log_abs_grads.push_back(r.grad.log_abs);
    tr.signs.push_back(r.grad.sign);
    tr.statuses.push_back(status);
    tr.grad_rel_errors.push_back(r.diag.grad_rel_error);
    const bool finite = std::isfinite(g) && std::isfinite(v);
    bool good = finite && status == "ok";
    if (finite && !good && !c.tolerate.empty() && detail::starts_with_any(status, c.tolerate)) {
      ++tr.n_flagged;
      if (!tr.first_flag.set)
        tr.first_flag = {true, k + 1, eta, g, v, tr.grad_rel_errors.back(), status, true, k < c.meta_steps};
      good = true;
    }
    if (!good) {
      ++tr.n_not_ok;
      if (!tr.failure.set) tr.failure = {true, k + 1, eta, g, v, 0.0, status, finite, false};
      if (!finite) {
        if (k < c.meta_steps)
          tr.stop_reason = std::string("non-finite meta-") + (!std::isfinite(g) ? "gradient" : "objective") +
                           " at meta-step " + std::to_string(k + 1) + " (eta = " + detail::repr(eta) + "): " + status;
        break;
      }
      if (c.on_failure != OnFailure::cont && k < c.meta_steps) {
        tr.stop_reason = "status not ok at meta-step " + std::to_string(k + 1) + " (eta = " + detail::repr(eta) +
                         "): " + status;
        break;
      }
      if (tr.failure.meta_step == k + 1 && k < c.meta_steps) tr.failure.used = true;
    }
    if (k >= c.meta_steps) break;
    ++k;
    const double mu = c.decay_sqrt ? c.mu0 / std::sqrt(static_cast<double>(k)) : c.mu0;
    const double gt = c.log_eta ? g * eta : g;
    double step;
    switch (c.optimizer) {
      case MetaOptimizer::gd: step = gt; break;
      case MetaOptimizer::momentum:
        m1 = c.beta * m1 + gt;
        step = m1;
        break;
      case MetaOptimizer::rmsprop:
        m2 = c.rho * m2 + (1.0 - c.rho) * gt * gt;
        step = gt / (std::sqrt(m2) + c.eps);
        break;
      default: {
        m1 = c.beta1 * m1 + (1.0 - c.beta1) * gt;
        m2 = c.beta2 * m2 + (1.0 - c.beta2) * gt * gt;
        const double mhat = m1 / (1.0 - std::pow(c.beta1, static_cast<double>(k)));
        const double vhat = m2 / (1.0 - std::pow(c.beta2, static_cast<double>(k)));
        step = mhat / (std::sqrt(vhat) + c.eps);
      }
    }
    double theta_new = theta - mu * step;
    double new_eta;
    if (c.log_eta) {
      new_eta = std::exp(theta_new);
    } else {
      theta_new = std::max(0.0, theta_new);
      new_eta = theta_new;
    }
    if (!std::isfinite(new_eta) || !std::isfinite(theta_new)) {
      ++tr.n_not_ok;
      if (!tr.failure.set)
        tr.failure = {true, k, eta, g, v, 0.0, "update overflow: eta -> " + detail::repr(new_eta), false, false};
      tr.stop_reason = "the update at meta-step " + std::to_string(k) + " overflowed (eta " + detail::repr(eta) +
                       " - " + detail::repr(mu) + " * " + detail::repr(step) + ")";
      break;
    }
    theta = theta_new;
    tr.lrs.push_back(mu);
    tr.etas.push_back(new_eta);
  }
  tr.steps_done = static_cast<long>(tr.etas.size()) - 1;
  return tr;
}

}  // namespace metastep
