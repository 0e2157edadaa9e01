// PYBIND11_MODULE(_core): version, build facts, and one registration per precision.
#include <Eigen/Core>

#include <algorithm>

#include "common.hpp"
#ifdef METASTEP_HAVE_CUDA
#include "metastep_cuda.hpp"
#endif

namespace metastep::bind {

// Batched forward / scaled-forward on the GPU: H (C order, used exactly as given, so the GPU
// multiplies by the same matrix as the CPU even where H is symmetric only to a tolerance), w0,
// w*, step sizes; results in the same form as the CPU modes, plus "cuda": how it ran.
template <class S>
py::dict cuda_forward(const F64Array& H, const F64Array& w0, const F64Array& ws, const F64Array& etas, Steps steps,
                      bool scaled, const std::string& objective, int gemm, bool graph, const std::string& cublas) {
#ifdef METASTEP_HAVE_CUDA
  if (gemm < 0 || gemm > 4) throw std::invalid_argument("gemm must be 0 (automatic), 1, 2, 3 or 4 (cuBLAS)");
  metastep::cuda::Options copt;
  copt.gemm = gemm;
  copt.graph = graph;
  copt.cublas_path = cublas;
  metastep::cuda::RunInfo info;
  MetaOptions opt;
  opt.objective = parse_objective(objective);
  opt.steps = steps;
  if (steps < 1) throw std::invalid_argument("steps must be at least 1");
  if (H.ndim() != 2 || H.shape(0) != H.shape(1)) throw std::invalid_argument("H must be a square 2-D array");
  const Index d = H.shape(0);
  if (w0.ndim() != 1 || w0.shape(0) != d || ws.ndim() != 1 || ws.shape(0) != d)
    throw std::invalid_argument("w0 and w_star must have length d");
  if (etas.ndim() != 1 || etas.shape(0) < 1) throw std::invalid_argument("etas must be a non-empty 1-D array");
  std::vector<S> a(static_cast<size_t>(d)), b(static_cast<size_t>(d));
  for (Index i = 0; i < d; ++i) {
    a[static_cast<size_t>(i)] = S(w0.data()[i]);
    b[static_cast<size_t>(i)] = S(ws.data()[i]);
  }
  const int m = static_cast<int>(etas.shape(0));
  std::vector<metastep::cuda::ColumnResult> res(static_cast<size_t>(m));
  std::string error;
  bool ok;
  {
    py::gil_scoped_release release;
    ok = metastep::cuda::forward_batch<S>(H.data(), a.data(), b.data(), static_cast<int>(d), etas.data(), m, steps,
                                          scaled, res.data(), &error, copt, &info);
  }
  if (!ok) throw std::runtime_error("CUDA: " + error);
  static const Quantity quantities[] = {Quantity::loss,      Quantity::loss,     Quantity::iterate,
                                        Quantity::tangent,   Quantity::meta_loss, Quantity::meta_grad};
  std::vector<Outcome> outs(static_cast<size_t>(m));
  const double lt = std::log(static_cast<double>(steps));
  for (int j = 0; j < m; ++j) {
    const auto& r = res[static_cast<size_t>(j)];
    Outcome& o = outs[static_cast<size_t>(j)];
    if (r.fail_quantity > 0) o.diag.fail(quantities[r.fail_quantity], "non-finite", r.fail_step);
    o.diag.forward_steps = steps;
    if (opt.objective == Objective::final_loss) {
      o.value = r.sign_M > 0 ? Num::of_log(r.log_M, 1) : Num::of(std::isnan(r.log_M) ? r.log_M : 0.0);
      o.grad = Num::of_log(r.log_dM, r.sign_dM);
    } else if (!(r.sign_M > 0)) {
      o.diag.fail(Quantity::meta_loss, "zero (log undefined)", steps);
      o.value = Num::of(std::isnan(r.log_M) ? r.log_M : -std::numeric_limits<double>::infinity());
      o.grad = Num::of(std::numeric_limits<double>::quiet_NaN());
    } else {
      o.value = Num::of(r.log_M / static_cast<double>(steps));
      o.grad = Num::of_log(r.log_dM - lt - r.log_M, r.sign_dM);
    }
  }
  py::dict result = outcomes_dict(outs);
  static const char* kernels[] = {"auto", "simple tiles", "register-blocked tiles", "skinny split-k", "cuBLAS"};
  py::dict run;
  run["product"] = kernels[info.gemm];
  run["k_slices"] = info.slices;
  run["graph"] = info.graph;
  run["cublas_note"] = info.cublas_note;
  result["cuda"] = run;
  return result;
#else
  (void)H, (void)w0, (void)ws, (void)etas, (void)steps, (void)scaled, (void)objective, (void)gemm, (void)graph,
      (void)cublas;
  throw std::runtime_error("the CUDA path is not compiled in this build (install with a CUDA compiler on PATH, "
                           "or METASTEP_CUDA=ON)");
#endif
}

}  // namespace metastep::bind

#ifndef METASTEP_VERSION
#define METASTEP_VERSION "0.0.0"
#endif
#ifndef METASTEP_EIGEN_LOCATION
#define METASTEP_EIGEN_LOCATION "unknown"
#endif

namespace metastep::bind {
void register_nn(py::module_& m);  // register_nn.cpp: learned optimizers (float64, float32)
}

#define METASTEP_STR2(x) #x
#define METASTEP_STR(x) METASTEP_STR2(x)

PYBIND11_MODULE(_core, m) {
  m.doc() = "metastep compiled core (private: use the metastep package)";
  m.attr("__version__") = METASTEP_VERSION;
  m.attr("eigen_version") =
      METASTEP_STR(EIGEN_WORLD_VERSION) "." METASTEP_STR(EIGEN_MAJOR_VERSION) "." METASTEP_STR(EIGEN_MINOR_VERSION);
  m.attr("eigen_location") = METASTEP_EIGEN_LOCATION;
#ifdef METASTEP_HAVE_FLOAT128
  m.attr("precisions") = py::make_tuple("float32", "float64", "longdouble", "quad", "mp");
  m.attr("quad_backend") = "gcc __float128";
#else
  m.attr("precisions") = py::make_tuple("float32", "float64", "longdouble", "mp");
  m.attr("quad_backend") = "none";
#endif
  m.attr("mp_bits") = metastep::MP_BITS;
  py::dict sizes;
  sizes["float32"] = sizeof(float);
  sizes["float64"] = sizeof(double);
  sizes["longdouble"] = sizeof(long double);
#ifdef METASTEP_HAVE_FLOAT128
  sizes["quad"] = sizeof(metastep::quad);
#endif
  sizes["mp"] = sizeof(metastep::mp_t);
  m.attr("itemsize") = sizes;
#ifdef METASTEP_HAVE_CUDA
  m.attr("cuda_compiled") = true;
  m.def("cuda_device_count", []() {
    std::string why;
    const int n = metastep::cuda::device_count(&why);
    return py::make_tuple(n, why);
  });
#else
  m.attr("cuda_compiled") = false;
  m.def("cuda_device_count", []() { return py::make_tuple(0, "the CUDA path is not compiled in this build"); });
#endif
  m.def("cuda_forward_float32", &metastep::bind::cuda_forward<float>, py::arg("H").noconvert(),
        py::arg("w0").noconvert(), py::arg("w_star").noconvert(), py::arg("etas").noconvert(), py::arg("steps"),
        py::arg("scaled"), py::arg("objective"), py::arg("gemm") = 0, py::arg("graph") = true,
        py::arg("cublas") = "");
  m.def("cuda_forward_float64", &metastep::bind::cuda_forward<double>, py::arg("H").noconvert(),
        py::arg("w0").noconvert(), py::arg("w_star").noconvert(), py::arg("etas").noconvert(), py::arg("steps"),
        py::arg("scaled"), py::arg("objective"), py::arg("gemm") = 0, py::arg("graph") = true,
        py::arg("cublas") = "");
  m.attr("longdouble_mantissa_bits") = std::numeric_limits<long double>::digits;
  m.def(
      "sgd_batches",
      [](metastep::Index n, metastep::Index batch_size, metastep::Steps steps, std::uint64_t seed) {
        const auto b = metastep::make_batches(n, batch_size, steps, seed);
        py::array_t<std::int32_t> out({static_cast<py::ssize_t>(steps), static_cast<py::ssize_t>(batch_size)});
        std::copy(b.begin(), b.end(), out.mutable_data());
        return out;
      },
      py::arg("n"), py::arg("batch_size"), py::arg("steps"), py::arg("seed"));
  py::class_<metastep::FastSpectrum>(m, "FastSpectrum")
      .def_property_readonly("L", [](const metastep::FastSpectrum& s) { return s.L; })
      .def_property_readonly("alpha", [](const metastep::FastSpectrum& s) { return s.alpha; })
      .def_property_readonly("eigenvalues", [](const metastep::FastSpectrum& s) { return s.lam; });
  m.def(
      "exact_fast",
      [](const metastep::FastSpectrum& sp, const metastep::bind::F64Array& etas, metastep::Steps steps,
         const std::string& objective, int threads) {
        metastep::MetaOptions opt;
        opt.objective = metastep::parse_objective(objective);
        opt.steps = steps;
        if (etas.ndim() != 1) throw std::invalid_argument("eta must be a 1-D array");
        std::vector<double> es(etas.data(), etas.data() + etas.shape(0));
        const std::vector<metastep::Outcome> outs = metastep::bind::interruptible([&](metastep::Stop* stop) {
          metastep::MetaOptions run = opt;
          run.stop = stop;
          return metastep::exact_fast_batch(sp, es, run, threads);
        });
        return metastep::bind::outcomes_dict(outs);
      },
      py::arg("spectrum"), py::arg("etas").noconvert(), py::arg("steps"), py::arg("objective"), py::arg("threads") = 1);
  metastep::bind::register_precision<float>(m, "float32");
  metastep::bind::register_precision<double>(m, "float64");
  metastep::bind::register_precision<long double>(m, "longdouble");
#ifdef METASTEP_HAVE_FLOAT128
  metastep::bind::register_precision<metastep::quad>(m, "quad");
#endif
  metastep::bind::register_precision<metastep::mp_t>(m, "mp");
  metastep::bind::register_nn(m);
}
