// The one place pybind11 is included. Converters between numpy float64 arrays and core types.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "metastep/engine.hpp"

namespace py = pybind11;

namespace metastep::bind {

using F64Array = py::array_t<double, py::array::c_style>;

// Whether this call came from Python's main thread, the only one where signal handlers run.
inline bool on_main_thread() {
  const py::module_ threading = py::module_::import("threading");
  return threading.attr("main_thread")().is(threading.attr("current_thread")());
}

// Runs work(stop) with the GIL released. The core's long loops poll `stop`; on the calling
// thread, if it is Python's main thread, a poll runs Python's signal handlers about every 50 ms
// (taking the GIL for that moment). A handler that raises (Ctrl-C's KeyboardInterrupt, or a
// user's handler) ends the computation at the next step of every thread it uses, and its
// exception is raised here: no thread is left running and no partial result is returned.
template <class Work>
auto interruptible(Work&& work) -> decltype(work(static_cast<Stop*>(nullptr))) {
  std::function<bool()> check;
  if (on_main_thread())
    check = [] {
      py::gil_scoped_acquire gil;
      return PyErr_CheckSignals() != 0;  // the handler's exception stays set for the caller
    };
  Stop stop(std::move(check));
  try {
    py::gil_scoped_release release;
    return work(&stop);
  } catch (const Interrupted&) {
    if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
    throw py::error_already_set();
  } catch (...) {
    if (PyErr_Occurred()) throw py::error_already_set();  // a handler raised: that comes first
    throw;
  }
}

// Inputs arrive as C-contiguous float64 (checked by the Python layer; .noconvert() here
// turns anything else into a TypeError) and are converted exactly to the compute type.
template <class S>
Mat<S> to_mat(const F64Array& a, const char* name) {
  if (a.ndim() != 2) throw std::invalid_argument(std::string(name) + " must be a 2-D array");
  const auto r = a.shape(0), c = a.shape(1);
  Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> m(a.data(), r, c);
  return m.template cast<S>();
}
template <class S>
Vec<S> to_vec(const F64Array& a, const char* name) {
  if (a.ndim() != 1) throw std::invalid_argument(std::string(name) + " must be a 1-D array");
  Eigen::Map<const Eigen::VectorXd> m(a.data(), a.shape(0));
  return m.template cast<S>();
}
template <class S>
std::vector<S> to_std(const F64Array& a, const char* name) {
  if (a.ndim() != 1) throw std::invalid_argument(std::string(name) + " must be a 1-D array");
  std::vector<S> v(static_cast<size_t>(a.shape(0)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = S(a.data()[i]);
  return v;
}

inline py::dict range_dict(const Log2Range& r) {
  py::dict d;
  if (r.seen()) {
    d["min"] = r.lo();
    d["max"] = r.hi();
  } else {
    d["min"] = py::none();
    d["max"] = py::none();
  }
  return d;
}

inline py::dict diag_dict(const Diagnostics& g) {
  py::dict d;
  d["status"] = g.status();
  d["failed"] = g.failed;
  d["quantity"] = g.failed ? py::object(py::str(g.quantity)) : py::object(py::none());
  d["kind"] = g.failed ? py::object(py::str(g.kind)) : py::object(py::none());
  d["step"] = g.failed ? py::object(py::int_(g.step)) : py::object(py::none());
  py::dict ranges;
  ranges["iterate"] = range_dict(g.iterate);
  ranges["tangent"] = range_dict(g.tangent);
  ranges["adjoint"] = range_dict(g.adjoint);
  ranges["loss"] = range_dict(g.loss);
  d["log2_range"] = ranges;
  d["stored_states"] = g.stored_states;
  d["recomputed_steps"] = g.recomputed_steps;
  d["forward_steps"] = g.forward_steps;
  d["grad_condition"] = g.grad_condition;
  d["grad_rel_error"] = g.grad_rel_error;
  d["value_rel_error"] = g.value_rel_error;
  return d;
}

// Columns of Num values: float64 value, log|x|, sign, long double copy.
inline py::dict num_columns(const std::vector<const Num*>& xs, const std::string& prefix) {
  const auto n = static_cast<py::ssize_t>(xs.size());
  py::array_t<double> v(n), l(n);
  py::array_t<int> s(n);
  py::array_t<long double> e(n);
  for (py::ssize_t i = 0; i < n; ++i) {
    v.mutable_at(i) = xs[i]->value;
    l.mutable_at(i) = xs[i]->log_abs;
    s.mutable_at(i) = xs[i]->sign;
    e.mutable_at(i) = xs[i]->ext;
  }
  py::dict d;
  d[(prefix).c_str()] = v;
  d[("log_abs_" + prefix).c_str()] = l;
  d[("sign_" + prefix).c_str()] = s;
  d[(prefix + "_ext").c_str()] = e;
  if (!xs.empty() && !xs[0]->text.empty()) {  // extended precisions: exact decimal text
    py::list texts;
    for (const Num* x : xs) texts.append(x->text);
    d[(prefix + "_text").c_str()] = texts;
  }
  return d;
}

inline py::dict outcomes_dict(const std::vector<Outcome>& outs) {
  std::vector<const Num*> vals, grads;
  py::list status, diags;
  for (const auto& o : outs) {
    vals.push_back(&o.value);
    grads.push_back(&o.grad);
    status.append(o.diag.status());
    diags.append(diag_dict(o.diag));
  }
  py::dict d;
  for (auto item : num_columns(vals, "value")) d[item.first] = item.second;
  for (auto item : num_columns(grads, "grad")) d[item.first] = item.second;
  d["status"] = status;
  d["diagnostics"] = diags;
  if (outs.size() == 1 && !outs[0].grad_steps.empty()) {
    std::vector<const Num*> gs;
    for (const auto& g : outs[0].grad_steps) gs.push_back(&g);
    for (auto item : num_columns(gs, "grad_steps")) d[item.first] = item.second;
  }
  return d;
}

template <class S>
py::array_t<double> doubles(const std::vector<S>& xs) {
  py::array_t<double> a(static_cast<py::ssize_t>(xs.size()));
  for (size_t i = 0; i < xs.size(); ++i) a.mutable_at(static_cast<py::ssize_t>(i)) = sm::to_double(xs[i]);
  return a;
}
template <class S>
py::array_t<double> log_abs_doubles(const std::vector<S>& xs) {
  py::array_t<double> a(static_cast<py::ssize_t>(xs.size()));
  for (size_t i = 0; i < xs.size(); ++i) a.mutable_at(static_cast<py::ssize_t>(i)) = sm::log_abs(xs[i]);
  return a;
}
template <class S>
py::array_t<long double> ext(const std::vector<S>& xs) {
  py::array_t<long double> a(static_cast<py::ssize_t>(xs.size()));
  for (size_t i = 0; i < xs.size(); ++i) a.mutable_at(static_cast<py::ssize_t>(i)) = sm::to_longdouble(xs[i]);
  return a;
}

template <class S>
void register_precision(py::module_& m, const std::string& sfx);

}  // namespace metastep::bind
