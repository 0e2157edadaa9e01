// PYBIND11_MODULE(_core): version, build facts, and one registration per precision.
#include <Eigen/Core>

#include "common.hpp"

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
  m.attr("cuda_compiled") = false;
  m.def("cuda_device_count", []() { return py::make_tuple(0, "the CUDA path is not compiled in this build"); });
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
  metastep::bind::register_precision<float>(m, "float32");
  metastep::bind::register_precision<double>(m, "float64");
  metastep::bind::register_precision<long double>(m, "longdouble");
#ifdef METASTEP_HAVE_FLOAT128
  metastep::bind::register_precision<metastep::quad>(m, "quad");
#endif
  metastep::bind::register_precision<metastep::mp_t>(m, "mp");
  metastep::bind::register_nn(m);
}
