// Basic linear-algebra types of the metastep core. Header-only, no Python.
#pragma once
#include <Eigen/Core>
#include <cstdint>

// Every precision's scalar glue, visible before any template is instantiated with it.
#include "scalar/mp.hpp"
#include "scalar/quad.hpp"

namespace metastep {

using Index = Eigen::Index;
using Steps = std::int64_t;   // number of inner steps t (may be huge in exact mode)

template <class Scalar>
using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

// Row-major to match numpy's default layout at the boundary.
template <class Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Two columns side by side (iterate and tangent/adjoint): one pass over H for both.
template <class Scalar>
using Pair = Eigen::Matrix<Scalar, Eigen::Dynamic, 2>;

}  // namespace metastep
