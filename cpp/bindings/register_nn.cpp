// Bindings of the learned-optimizer core (cpp/include/metastep/nn): float64 and float32.
#include "common.hpp"
#include "metastep/nn/train.hpp"

namespace metastep::bind {
namespace {

using I64Array = py::array_t<std::int64_t, py::array::c_style>;
using nn::Dataset;
using nn::Layout;
using nn::MatR;

Layout layout_of(const std::vector<Index>& sizes) { return Layout(sizes); }

template <class S>
Vec<S> vec_of(const F64Array& a, Index n, const char* name) {
  if (a.ndim() != 1 || a.shape(0) != n)
    throw std::invalid_argument(std::string(name) + " must be a 1-D array of length " + std::to_string(n));
  return Eigen::Map<const Eigen::VectorXd>(a.data(), n).template cast<S>();
}
template <class S>
MatR<S> mat_of(const F64Array& a, Index r, Index c, const char* name) {
  if (a.ndim() != 2 || (r >= 0 && a.shape(0) != r) || (c >= 0 && a.shape(1) != c))
    throw std::invalid_argument(std::string(name) + " has the wrong shape");
  Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> m(a.data(), a.shape(0),
                                                                                              a.shape(1));
  return m.template cast<S>();
}
template <class S>
Dataset<S> data_of(const Layout& lay, const F64Array& X, const I64Array& y, const char* name) {
  Dataset<S> d;
  d.X = mat_of<S>(X, -1, lay.inputs(), name);
  if (y.ndim() != 1 || y.shape(0) != X.shape(0))
    throw std::invalid_argument(std::string(name) + ": y must be 1-D with one label per row of X");
  d.y.resize(static_cast<size_t>(y.shape(0)));
  for (size_t i = 0; i < d.y.size(); ++i) {
    const auto v = y.data()[i];
    if (v < 0 || v >= lay.classes()) throw std::invalid_argument(std::string(name) + ": label out of range");
    d.y[i] = static_cast<std::int32_t>(v);
  }
  nn::check_dataset(d, lay, name);
  return d;
}
template <class S>
py::array_t<double> out_vec(const Vec<S>& v) {
  py::array_t<double> a(v.size());
  for (Index i = 0; i < v.size(); ++i) a.mutable_data()[i] = static_cast<double>(v[i]);
  return a;
}
template <class S, class Derived>
py::array_t<double> out_mat(const Eigen::MatrixBase<Derived>& m) {
  py::array_t<double> a({static_cast<py::ssize_t>(m.rows()), static_cast<py::ssize_t>(m.cols())});
  Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(a.mutable_data(), m.rows(),
                                                                                    m.cols()) = m.template cast<double>();
  return a;
}
py::dict nf_dict(const nn::NonFinite& nf) {
  py::dict d;
  d["failed"] = nf.failed;
  d["quantity"] = nf.failed ? py::object(py::str(nf.quantity)) : py::object(py::none());
  d["step"] = nf.failed ? py::object(py::int_(nf.step)) : py::object(py::none());
  return d;
}

template <class S>
void bind_nn(py::module_& m, const std::string& sfx) {
  m.def(("nn_loss_grad_" + sfx).c_str(),
        [](const std::vector<Index>& sizes, const F64Array& theta, const F64Array& X, const I64Array& y) {
          const Layout lay = layout_of(sizes);
          const Vec<S> th = vec_of<S>(theta, lay.n_params, "theta");
          const Dataset<S> d = data_of<S>(lay, X, y, "data");
          Vec<S> g;
          S loss;
          Index correct;
          {
            py::gil_scoped_release rel;
            nn::Net<S> net(lay);
            net.set_batch(d.X, d.y);
            loss = net.forward(th);
            net.backward(th, g);
            correct = net.correct();
          }
          return py::make_tuple(static_cast<double>(loss), out_vec<S>(g), correct);
        },
        py::arg("sizes"), py::arg("theta").noconvert(), py::arg("X").noconvert(), py::arg("y").noconvert());
  m.def(("nn_hvp_" + sfx).c_str(),
        [](const std::vector<Index>& sizes, const F64Array& theta, const F64Array& X, const I64Array& y,
           const F64Array& v) {
          const Layout lay = layout_of(sizes);
          const Vec<S> th = vec_of<S>(theta, lay.n_params, "theta");
          const Vec<S> vv = vec_of<S>(v, lay.n_params, "v");
          const Dataset<S> d = data_of<S>(lay, X, y, "data");
          Vec<S> g, hv;
          S loss;
          {
            py::gil_scoped_release rel;
            nn::Net<S> net(lay);
            net.set_batch(d.X, d.y);
            loss = net.forward(th);
            net.backward_hvp(th, vv, g, hv);
          }
          return py::make_tuple(static_cast<double>(loss), out_vec<S>(g), out_vec<S>(hv));
        },
        py::arg("sizes"), py::arg("theta").noconvert(), py::arg("X").noconvert(), py::arg("y").noconvert(),
        py::arg("v").noconvert());
  m.def(("lopt_step_" + sfx).c_str(),
        [](const std::vector<Index>& sizes, const F64Array& phi, const F64Array& theta, const F64Array& g,
           const F64Array& M, const F64Array& V, std::int64_t step) {
          const Layout lay = layout_of(sizes);
          const Index P = lay.n_params;
          const Vec<S> ph = vec_of<S>(phi, nn::kOptParams, "phi"), th = vec_of<S>(theta, P, "theta"),
                       gg = vec_of<S>(g, P, "g");
          const nn::MatC<S> MM = mat_of<S>(M, P, nn::kBetas, "M"), VV = mat_of<S>(V, P, nn::kBetas, "V");
          if (step < 0) throw std::invalid_argument("step must be non-negative");
          nn::LearnedOpt<S> opt(lay);
          nn::MatC<S> Mp, Vp;
          Vec<S> u;
          opt.step_forward(ph, th, gg, MM, VV, step, Mp, Vp, u);
          py::dict d;
          d["theta"] = out_vec<S>(Vec<S>(th - u));
          d["update"] = out_vec<S>(u);
          d["M"] = out_mat<S>(Mp);
          d["V"] = out_mat<S>(Vp);
          d["features"] = out_mat<S>(opt.features());
          d["time_features"] = out_vec<S>(Vec<S>(opt.time_features().transpose()));
          d["outputs"] = out_mat<S>(opt.outputs());
          return d;
        },
        py::arg("sizes"), py::arg("phi").noconvert(), py::arg("theta").noconvert(), py::arg("g").noconvert(),
        py::arg("M").noconvert(), py::arg("V").noconvert(), py::arg("step"));
  m.def(("lopt_run_steps_" + sfx).c_str(),
        [](const std::vector<Index>& sizes, const F64Array& phi, const F64Array& X, const I64Array& y,
           const F64Array& theta, const F64Array& M, const F64Array& V, std::int64_t step, Index steps, Index batch,
           std::uint64_t seed) {
          // `steps` inner training steps (minibatch forward, backward, learned update) and nothing else:
          // the unit timed by benchmarks/learned.py.
          const Layout lay = layout_of(sizes);
          const Index P = lay.n_params;
          const Vec<S> ph = vec_of<S>(phi, nn::kOptParams, "phi");
          nn::InnerState<S> st;
          st.theta = vec_of<S>(theta, P, "theta");
          st.M = mat_of<S>(M, P, nn::kBetas, "M");
          st.V = mat_of<S>(V, P, nn::kBetas, "V");
          if (step < 0 || steps < 1 || batch < 1) throw std::invalid_argument("step >= 0, steps >= 1, batch_size >= 1");
          st.step = step;
          const Dataset<S> d = data_of<S>(lay, X, y, "train");
          const Index B = std::min(batch, d.n());
          const auto plan = nn::batch_plan(d.n(), B, steps, seed);
          interruptible([&](Stop* stop) {
            nn::Net<S> net(lay);
            nn::LearnedOpt<S> opt(lay);
            Vec<S> g, u;
            nn::MatC<S> Mp, Vp;
            for (Index s = 0; s < steps; ++s) {
              poll(stop);
              net.gather(d, &plan[static_cast<size_t>(s * B)], B);
              net.forward(st.theta);
              net.backward(st.theta, g);
              opt.step_forward(ph, st.theta, g, st.M, st.V, st.step, Mp, Vp, u);
              st.theta -= u;
              st.M.swap(Mp);
              st.V.swap(Vp);
              ++st.step;
            }
          });
          py::dict out;
          out["theta"] = out_vec<S>(st.theta);
          out["M"] = out_mat<S>(st.M);
          out["V"] = out_mat<S>(st.V);
          out["step"] = st.step;
          return out;
        },
        py::arg("sizes"), py::arg("phi").noconvert(), py::arg("X").noconvert(), py::arg("y").noconvert(),
        py::arg("theta").noconvert(), py::arg("M").noconvert(), py::arg("V").noconvert(), py::arg("step"),
        py::arg("steps"), py::arg("batch_size"), py::arg("seed"));
  m.def(("truncation_" + sfx).c_str(),
        [](const std::vector<Index>& sizes, const F64Array& phi, const F64Array& Xtr, const I64Array& ytr,
           const F64Array& Xme, const I64Array& yme, const F64Array& theta, const F64Array& M, const F64Array& V,
           std::int64_t step, Index T, Index batch, Index meta_batch, std::uint64_t seed, const std::string& estimator,
           Index es_pairs, double es_sigma, std::uint64_t es_seed, const std::optional<F64Array>& frozen_g,
           bool forward_only, bool return_gradients) {
          const Layout lay = layout_of(sizes);
          const Index P = lay.n_params;
          const Vec<S> ph = vec_of<S>(phi, nn::kOptParams, "phi");
          nn::InnerState<S> st;
          st.theta = vec_of<S>(theta, P, "theta");
          st.M = mat_of<S>(M, P, nn::kBetas, "M");
          st.V = mat_of<S>(V, P, nn::kBetas, "V");
          if (step < 0) throw std::invalid_argument("step must be non-negative");
          st.step = step;
          const Dataset<S> tr = data_of<S>(lay, Xtr, ytr, "train"), me = data_of<S>(lay, Xme, yme, "meta");
          const nn::Estimator est = nn::parse_estimator(estimator);
          nn::Truncation<S> plan(tr, me, T, batch, meta_batch, seed);
          std::vector<Vec<S>> frozen, grads;
          if (frozen_g) {
            const MatR<S> fg = mat_of<S>(*frozen_g, T, P, "frozen_gradients");
            for (Index s = 0; s < T; ++s) frozen.emplace_back(fg.row(s).transpose());
          }
          if (frozen_g && !forward_only && est != nn::Estimator::first_order)
            throw std::invalid_argument("frozen gradients only define the first-order estimator");
          const nn::MetaGrad<S> res = interruptible([&](Stop* stop) {
            nn::MetaGrad<S> r;
            nn::Unroller<S> un(lay);
            un.stop = stop;
            if (forward_only) {
              un.forward(ph, plan, st, nullptr, frozen_g ? &frozen : nullptr, return_gradients ? &grads : nullptr, r);
            } else if (frozen_g) {
              r = un.backprop_frozen(ph, plan, st, frozen);
            } else {
              r = un.meta_gradient(est, ph, plan, st, es_pairs, es_sigma, es_seed);
            }
            return r;
          });
          py::dict d;
          d["meta_loss"] = res.meta_loss;
          d["grad"] = forward_only ? py::object(py::none()) : py::object(out_vec<S>(res.grad));
          d["train_losses"] = res.train_losses;
          d["meta_losses"] = res.meta_losses;
          d["nonfinite"] = nf_dict(res.nf);
          d["theta"] = out_vec<S>(st.theta);
          d["M"] = out_mat<S>(st.M);
          d["V"] = out_mat<S>(st.V);
          d["step"] = st.step;
          if (est == nn::Estimator::es && !forward_only) {
            d["es_dirderiv"] = res.es_dirderiv;
            d["es_dirs"] = out_mat<S>(res.es_dirs);
          }
          if (return_gradients) {
            MatR<S> G(T, P);
            for (Index s = 0; s < T; ++s) G.row(s) = grads[static_cast<size_t>(s)].transpose();
            d["gradients"] = out_mat<S>(G);
          }
          return d;
        },
        py::arg("sizes"), py::arg("phi").noconvert(), py::arg("X_train").noconvert(), py::arg("y_train").noconvert(),
        py::arg("X_meta").noconvert(), py::arg("y_meta").noconvert(), py::arg("theta").noconvert(),
        py::arg("M").noconvert(), py::arg("V").noconvert(), py::arg("step"), py::arg("length"), py::arg("batch_size"),
        py::arg("meta_batch"), py::arg("seed"), py::arg("estimator"), py::arg("es_pairs"), py::arg("es_sigma"),
        py::arg("es_seed"), py::arg("frozen_gradients"), py::arg("forward_only"), py::arg("return_gradients"));
  m.def(("train_curve_" + sfx).c_str(),
        [](const std::vector<Index>& sizes, const F64Array& phi, const F64Array& Xtr, const I64Array& ytr,
           const F64Array& Xte, const I64Array& yte, const std::string& opt, Index steps, Index batch, Index every,
           double lr, std::uint64_t init_seed, std::uint64_t batch_seed) {
          const Layout lay = layout_of(sizes);
          nn::CurveConfig cfg;
          cfg.opt = nn::parse_inner_opt(opt);
          cfg.steps = steps;
          cfg.batch = batch;
          cfg.every = every;
          cfg.lr = lr;
          cfg.init_seed = init_seed;
          cfg.batch_seed = batch_seed;
          const Vec<S> ph = cfg.opt == nn::InnerOpt::learned ? vec_of<S>(phi, nn::kOptParams, "phi") : Vec<S>();
          const Dataset<S> tr = data_of<S>(lay, Xtr, ytr, "train"), te = data_of<S>(lay, Xte, yte, "test");
          const nn::Curve<S> c = interruptible([&](Stop* stop) {
            nn::CurveConfig run = cfg;
            run.stop = stop;
            return nn::train_curve<S>(lay, ph, tr, te, run);
          });
          py::dict d;
          d["steps"] = c.steps;
          d["train_loss"] = c.train_loss;
          d["train_acc"] = c.train_acc;
          d["test_loss"] = c.test_loss;
          d["test_acc"] = c.test_acc;
          d["nonfinite"] = nf_dict(c.nf);
          d["theta"] = out_vec<S>(c.theta);
          return d;
        },
        py::arg("sizes"), py::arg("phi").noconvert(), py::arg("X_train").noconvert(), py::arg("y_train").noconvert(),
        py::arg("X_test").noconvert(), py::arg("y_test").noconvert(), py::arg("optimizer"), py::arg("steps"),
        py::arg("batch_size"), py::arg("record_every"), py::arg("lr"), py::arg("init_seed"), py::arg("batch_seed"));

  using Trainer = nn::MetaTrainer<S>;
  py::class_<Trainer>(m, ("MetaTrainer_" + sfx).c_str())
      .def(py::init([](const std::vector<Index>& sizes, const F64Array& X, const I64Array& y, const F64Array& phi0,
                       const py::dict& c) {
             const Layout lay = layout_of(sizes);
             nn::MetaConfig cfg;
             cfg.estimator = nn::parse_estimator(c["estimator"].cast<std::string>());
             cfg.on_valid = c["on_valid"].cast<bool>();
             cfg.n_train = c["n_train"].cast<Index>();
             cfg.n_valid = c["n_valid"].cast<Index>();
             cfg.batch = c["batch_size"].cast<Index>();
             cfg.meta_batch = c["meta_batch"].cast<Index>();
             cfg.trunc_base = c["trunc_base"].cast<double>();
             cfg.trunc_mean = c["trunc_mean"].cast<double>();
             cfg.len_base = c["len_base"].cast<double>();
             cfg.len_mean = c["len_mean"].cast<double>();
             cfg.max_len = c["max_len"].cast<Index>();
             cfg.lr = c["lr"].cast<double>();
             cfg.rms_decay = c["rms_decay"].cast<double>();
             cfg.rms_bias_correction = c["rms_bias_correction"].cast<bool>();
             cfg.clip = c["clip"].cast<double>();
             cfg.es_pairs = c["es_pairs"].cast<Index>();
             cfg.es_sigma = c["es_sigma"].cast<double>();
             cfg.seed = c["seed"].cast<std::uint64_t>();
             return new Trainer(lay, data_of<S>(lay, X, y, "pool"), cfg,
                                vec_of<S>(phi0, nn::kOptParams, "phi0"));
           }),
           py::arg("sizes"), py::arg("X").noconvert(), py::arg("y").noconvert(), py::arg("phi0").noconvert(),
           py::arg("config"))
      .def("run",
           [](Trainer& t, Index k) {
             if (k < 0) throw std::invalid_argument("the number of meta-steps must be non-negative");
             std::vector<nn::MetaRecord> recs;
             {
               py::gil_scoped_release rel;
               recs = t.run(k);
             }
             py::list out;
             for (const auto& r : recs) {
               py::dict d;
               d["meta_step"] = r.meta_step;
               d["task"] = r.task;
               d["length"] = r.length;
               d["inner_step0"] = r.inner_step0;
               d["clipped"] = r.clipped;
               d["meta_loss"] = r.meta_loss;
               d["grad_norm"] = r.grad_norm;
               d["final_train_loss"] = r.final_train_loss;
               d["finite"] = r.finite;
               d["nonfinite_quantity"] = r.finite ? py::object(py::none()) : py::object(py::str(r.nonfinite_quantity));
               d["nonfinite_step"] = r.finite ? py::object(py::none()) : py::object(py::int_(r.nonfinite_step));
               out.append(d);
             }
             return out;
           },
           py::arg("meta_steps"))
      .def("restart_from",
           [](Trainer& t, const F64Array& phi) { t.restart_from(vec_of<S>(phi, nn::kOptParams, "phi")); },
           py::arg("phi").noconvert())
      .def_property_readonly("restarts", &Trainer::restarts)
      .def_property_readonly("phi", [](const Trainer& t) { return out_vec<S>(t.phi()); })
      .def_property_readonly("clipped_total", &Trainer::clipped_total)
      .def_property_readonly("nonfinite_total", &Trainer::nonfinite_total)
      .def_property_readonly("meta_steps", &Trainer::meta_steps)
      .def_property_readonly("tasks", &Trainer::tasks);
}

}  // namespace

void register_nn(py::module_& m) {
  m.def("nn_num_params", [](const std::vector<Index>& sizes) { return Layout(sizes).n_params; }, py::arg("sizes"));
  m.def("nn_init_params",
        [](const std::vector<Index>& sizes, std::uint64_t seed) {
          return out_vec<double>(nn::init_params<double>(Layout(sizes), seed));
        },
        py::arg("sizes"), py::arg("seed"));
  m.def("lopt_init_params", [](std::uint64_t seed) { return out_vec<double>(nn::init_opt_params<double>(seed)); },
        py::arg("seed"));
  m.attr("lopt_num_params") = nn::kOptParams;
  m.def(
      "nn_kernel_path",
      [](const std::string& path) {
        if (path == "portable") {
          nn::kernel::set_portable(true);
        } else if (path == "auto") {
          nn::kernel::set_portable(false);
        } else if (path == "avx2") {
          if (!nn::kernel::have_avx2()) throw std::invalid_argument("this CPU (or build) has no AVX2 kernel path");
          nn::kernel::set_portable(false);
        } else if (!path.empty()) {
          throw std::invalid_argument("path must be 'auto', 'avx2', 'portable' or '' (query), not '" + path + "'");
        }
        return std::string(nn::kernel::use_avx2() ? "avx2" : "portable");
      },
      py::arg("path") = std::string(),
      "Select the learned optimizer's kernel build ('auto', 'avx2' or 'portable'; '' only queries) and return "
      "the one in use. Also settable at start-up with METASTEP_NN_KERNELS=portable.");
  bind_nn<double>(m, "float64");
  bind_nn<float>(m, "float32");
}

}  // namespace metastep::bind
