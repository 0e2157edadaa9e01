// Bindings of one precision; instantiated once per dtype in its own translation unit.
#pragma once
#include "common.hpp"

namespace metastep::bind {

template <class Problem, class S = typename Problem::S>
py::dict do_unroll(const Problem& p, double eta, const std::optional<F64Array>& schedule, Steps steps) {
  if (steps < 1) throw std::invalid_argument("steps must be at least 1");
  std::vector<S> sched;
  StepSizes<S> st;
  st.eta = S(eta);
  if (schedule) {
    sched = to_std<S>(*schedule, "schedule");
    if (static_cast<Steps>(sched.size()) != steps) throw std::invalid_argument("schedule must have length steps");
    st.schedule = sched.data();
  }
  const Trajectory<S> tr = interruptible([&](Stop* stop) { return unroll(p, st, steps, stop); });
  py::dict d;
  d["losses"] = doubles(tr.losses);
  d["log_losses"] = log_abs_doubles(tr.losses);
  d["losses_ext"] = ext(tr.losses);
  if (!tr.valid_losses.empty()) {
    d["valid_losses"] = doubles(tr.valid_losses);
    d["log_valid_losses"] = log_abs_doubles(tr.valid_losses);
  }
  std::vector<S> wf(tr.w_final.data(), tr.w_final.data() + tr.w_final.size());
  d["w_final"] = doubles(wf);
  d["w_final_ext"] = ext(wf);
  d["status"] = tr.diag.status();
  d["diagnostics"] = diag_dict(tr.diag);
  return d;
}

template <class Problem, class S = typename Problem::S>
py::dict do_metagrad(const Problem& p, const std::string& mode_s, const F64Array& etas,
                     const std::optional<F64Array>& schedule, Steps steps, const std::string& objective, bool valid,
                     Index checkpoints, int threads) {
  const Mode mode = parse_mode(mode_s);
  MetaOptions opt;
  opt.objective = parse_objective(objective);
  opt.valid = valid;
  opt.steps = steps;
  opt.checkpoints = checkpoints;
  std::vector<Outcome> outs;
  if (schedule) {
    std::vector<S> sched = to_std<S>(*schedule, "schedule");
    if (static_cast<Steps>(sched.size()) != steps) throw std::invalid_argument("schedule must have length steps");
    StepSizes<S> st;
    st.schedule = sched.data();
    outs.push_back(interruptible([&](Stop* stop) {
      MetaOptions run = opt;
      run.stop = stop;
      return run_mode(p, mode, st, run);
    }));
  } else {
    std::vector<S> es = to_std<S>(etas, "eta");
    outs = interruptible([&](Stop* stop) {
      MetaOptions run = opt;
      run.stop = stop;
      return run_batch(p, mode, es, run, threads);
    });
  }
  return outcomes_dict(outs);
}

using I32Array = py::array_t<std::int32_t, py::array::c_style>;

template <class S>
MinibatchLeastSquares<S> minibatch(const LeastSquares<S>& p, const I32Array& batches, Steps steps) {
  if (batches.ndim() != 2) throw std::invalid_argument("batches must be a 2-D array (steps, batch_size)");
  if (batches.shape(0) != steps) throw std::invalid_argument("batches must have one row per step");
  std::vector<std::int32_t> b(batches.data(), batches.data() + batches.size());
  return MinibatchLeastSquares<S>(p, std::move(b), static_cast<Index>(batches.shape(1)));
}

inline MetaTrainConfig meta_config(const py::dict& c) {
  MetaTrainConfig cfg;
  cfg.eta0 = c["eta0"].cast<double>();
  cfg.meta_steps = c["meta_steps"].cast<long>();
  const auto opt = c["optimizer"].cast<std::string>();
  if (opt == "gd") cfg.optimizer = MetaOptimizer::gd;
  else if (opt == "momentum") cfg.optimizer = MetaOptimizer::momentum;
  else if (opt == "rmsprop") cfg.optimizer = MetaOptimizer::rmsprop;
  else if (opt == "adam") cfg.optimizer = MetaOptimizer::adam;
  else throw std::invalid_argument("unknown optimizer '" + opt + "'");
  cfg.mu0 = c["lr"].cast<double>();
  cfg.decay_sqrt = c["decay"].cast<std::string>() == "sqrt";
  cfg.log_eta = c["log_eta"].cast<bool>();
  const auto of = c["on_failure"].cast<std::string>();
  cfg.on_failure = of == "continue" ? OnFailure::cont : (of == "raise" ? OnFailure::raise : OnFailure::stop);
  const py::dict o = c["optimizer_options"].cast<py::dict>();
  for (auto item : o) {
    const auto key = item.first.cast<std::string>();
    const double val = item.second.cast<double>();
    if (key == "beta") cfg.beta = val;
    else if (key == "rho") cfg.rho = val;
    else if (key == "eps") cfg.eps = val;
    else if (key == "beta1") cfg.beta1 = val;
    else if (key == "beta2") cfg.beta2 = val;
  }
  cfg.tolerate = c["tolerate"].cast<std::vector<std::string>>();
  return cfg;
}

inline py::object event_dict(const MetaEvent& e, bool with_rel_error) {
  if (!e.set) return py::none();
  py::dict d;
  d["meta_step"] = e.meta_step;
  d["eta"] = e.eta;
  d["status"] = e.status;
  d["grad"] = e.grad;
  d["value"] = e.value;
  d["finite"] = e.finite;
  d["used"] = e.used;
  if (with_rel_error) d["grad_rel_error"] = e.grad_rel_error;
  return std::move(d);
}

inline py::dict trace_dict(const MetaTrainTrace& tr) {
  py::dict d;
  d["etas"] = py::array_t<double>(static_cast<py::ssize_t>(tr.etas.size()), tr.etas.data());
  d["values"] = py::array_t<double>(static_cast<py::ssize_t>(tr.values.size()), tr.values.data());
  d["grads"] = py::array_t<double>(static_cast<py::ssize_t>(tr.grads.size()), tr.grads.data());
  d["log_abs_grads"] = py::array_t<double>(static_cast<py::ssize_t>(tr.log_abs_grads.size()), tr.log_abs_grads.data());
  d["lrs"] = py::array_t<double>(static_cast<py::ssize_t>(tr.lrs.size()), tr.lrs.data());
  d["grad_rel_errors"] =
      py::array_t<double>(static_cast<py::ssize_t>(tr.grad_rel_errors.size()), tr.grad_rel_errors.data());
  std::vector<std::int64_t> signs(tr.signs.begin(), tr.signs.end());
  d["sign_grads"] = py::array_t<std::int64_t>(static_cast<py::ssize_t>(signs.size()), signs.data());
  d["statuses"] = tr.statuses;
  d["steps_done"] = tr.steps_done;
  d["n_not_ok"] = tr.n_not_ok;
  d["n_flagged"] = tr.n_flagged;
  d["failure"] = event_dict(tr.failure, false);
  d["first_flag"] = event_dict(tr.first_flag, true);
  d["stop_reason"] = tr.stop_reason;
  return d;
}

template <class Problem, class S = typename Problem::S>
void bind_runs(py::module_& m, const std::string& sfx) {
  m.def(("meta_train_" + sfx).c_str(),
        [](const Problem& p, const py::object& spectrum, const std::string& mode_s, Steps steps,
           const std::string& objective, bool valid, Index checkpoints, const py::dict& config) {
          const Spectrum<S>* sp = spectrum.is_none() ? nullptr : spectrum.cast<const Spectrum<S>*>();
          MetaOptions opt;
          opt.objective = parse_objective(objective);
          opt.valid = valid;
          opt.steps = steps;
          opt.checkpoints = checkpoints;
          const MetaTrainConfig cfg = meta_config(config);
          const bool exact = mode_s == "exact";
          if (exact && !sp) throw std::invalid_argument("the exact mode needs the problem's spectrum");
          if (exact && valid && !sp->has_valid) throw std::invalid_argument("on='valid' needs a validation set");
          const Mode mode = exact ? Mode::forward : parse_mode(mode_s);
          if (steps < 1) throw std::invalid_argument("steps must be at least 1");
          const MetaTrainTrace tr = interruptible([&](Stop* stop) {
            MetaOptions run = opt;
            MetaTrainConfig loop = cfg;
            run.stop = loop.stop = stop;
            return meta_train_loop(loop, [&](double eta) {
              if (exact) return exact_outcome(*sp, S(eta), run);
              StepSizes<S> st;
              st.eta = S(eta);
              return run_mode(p, mode, st, run);
            });
          });
          return trace_dict(tr);
        },
        py::arg("problem"), py::arg("spectrum"), py::arg("mode"), py::arg("steps"), py::arg("objective"),
        py::arg("valid"), py::arg("checkpoints"), py::arg("config"));
  m.def(("unroll_" + sfx).c_str(), &do_unroll<Problem>, py::arg("problem"), py::arg("eta"),
        py::arg("schedule").noconvert(), py::arg("steps"));
  m.def(("metagrad_" + sfx).c_str(), &do_metagrad<Problem>, py::arg("problem"), py::arg("mode"),
        py::arg("etas").noconvert(), py::arg("schedule").noconvert(), py::arg("steps"), py::arg("objective"),
        py::arg("valid"), py::arg("checkpoints"), py::arg("threads") = 1);
  m.def(("spectrum_" + sfx).c_str(),
        [](const Problem& p) {
          py::gil_scoped_release release;
          return make_spectrum(p);
        },
        py::arg("problem"));
}

template <class S>
void bind_sgd(py::module_& m, const std::string& sfx) {
  m.def(("unroll_sgd_" + sfx).c_str(),
        [](const LeastSquares<S>& p, const I32Array& batches, double eta, const std::optional<F64Array>& schedule,
           Steps steps) { return do_unroll(minibatch(p, batches, steps), eta, schedule, steps); },
        py::arg("problem"), py::arg("batches").noconvert(), py::arg("eta"), py::arg("schedule").noconvert(),
        py::arg("steps"));
  m.def(("metagrad_sgd_" + sfx).c_str(),
        [](const LeastSquares<S>& p, const I32Array& batches, const std::string& mode, const F64Array& etas,
           const std::optional<F64Array>& schedule, Steps steps, const std::string& objective, bool valid,
           Index checkpoints, int threads) {
          return do_metagrad(minibatch(p, batches, steps), mode, etas, schedule, steps, objective, valid, checkpoints,
                             threads);
        },
        py::arg("problem"), py::arg("batches").noconvert(), py::arg("mode"), py::arg("etas").noconvert(),
        py::arg("schedule").noconvert(), py::arg("steps"), py::arg("objective"), py::arg("valid"),
        py::arg("checkpoints"), py::arg("threads") = 1);
}

template <class S>
void register_precision_impl(py::module_& m, const std::string& sfx) {
  py::class_<Quadratic<S>>(m, ("Quadratic_" + sfx).c_str())
      .def(py::init([](const F64Array& H, const F64Array& w0, const F64Array& ws) {
             return Quadratic<S>(to_mat<S>(H, "H"), to_vec<S>(w0, "w0"), to_vec<S>(ws, "w_star"));
           }),
           py::arg("H").noconvert(), py::arg("w0").noconvert(), py::arg("w_star").noconvert())
      .def_property_readonly("dim", &Quadratic<S>::dim);

  py::class_<LeastSquares<S>>(m, ("LeastSquares_" + sfx).c_str())
      .def(py::init([](const F64Array& X, const F64Array& y, std::optional<F64Array> Xv, std::optional<F64Array> yv,
                       const F64Array& w0) {
             Mat<S> xv;
             Vec<S> yvv;
             if (Xv.has_value() != yv.has_value())
               throw std::invalid_argument("X_valid and y_valid must be given together");
             if (Xv) {
               xv = to_mat<S>(*Xv, "X_valid");
               yvv = to_vec<S>(*yv, "y_valid");
               if (xv.rows() < 1) throw std::invalid_argument("X_valid must have at least one row");
             }
             return LeastSquares<S>(to_mat<S>(X, "X"), to_vec<S>(y, "y"), std::move(xv), std::move(yvv),
                                    to_vec<S>(w0, "w0"));
           }),
           py::arg("X").noconvert(), py::arg("y").noconvert(), py::arg("X_valid").noconvert(),
           py::arg("y_valid").noconvert(), py::arg("w0").noconvert())
      .def_property_readonly("dim", &LeastSquares<S>::dim)
      .def_property_readonly("has_valid", &LeastSquares<S>::has_valid);

  py::class_<Spectrum<S>>(m, ("Spectrum_" + sfx).c_str())
      .def_property_readonly("L", [](const Spectrum<S>& s) { return sm::to_double(s.L); })
      .def_property_readonly("alpha", [](const Spectrum<S>& s) { return sm::to_double(s.alpha); })
      .def_property_readonly("has_valid", [](const Spectrum<S>& s) { return s.has_valid; })
      .def_property_readonly("eigenvalues", [](const Spectrum<S>& s) { return doubles(s.lam); });

  bind_runs<Quadratic<S>>(m, sfx);
  bind_runs<LeastSquares<S>>(m, sfx);
  bind_sgd<S>(m, sfx);

  if constexpr (kernels::simd_scalar<S>) {
    m.def(("fast_spectrum_" + sfx).c_str(),
          [](const Quadratic<S>& p) {
            py::gil_scoped_release release;
            return make_fast_spectrum(p);
          },
          py::arg("problem"));
  }

  m.def(("exact_" + sfx).c_str(),
        [](const Spectrum<S>& sp, F64Array etas, Steps steps, const std::string& objective, bool valid, int threads) {
          MetaOptions opt;
          opt.objective = parse_objective(objective);
          opt.valid = valid;
          opt.steps = steps;
          std::vector<S> es = to_std<S>(etas, "eta");
          const std::vector<Outcome> outs = interruptible([&](Stop* stop) {
            MetaOptions run = opt;
            run.stop = stop;
            return exact_batch(sp, es, run, threads);
          });
          return outcomes_dict(outs);
        },
        py::arg("spectrum"), py::arg("etas").noconvert(), py::arg("steps"), py::arg("objective"), py::arg("valid"),
        py::arg("threads") = 1);
}

}  // namespace metastep::bind

#define METASTEP_REGISTER(S, NAME)                                                       \
  namespace metastep::bind {                                                             \
  template <>                                                                            \
  void register_precision<S>(py::module_ & m, const std::string& sfx) {                  \
    register_precision_impl<S>(m, sfx);                                                  \
  }                                                                                      \
  }
