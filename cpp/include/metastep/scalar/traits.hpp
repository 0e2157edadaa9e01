// Per-precision facts and the scalar math the algorithms use.
//
// Algorithms never call std::log & co. directly: they call metastep::sm::log etc., so a
// precision without std overloads (GCC __float128, Boost multiprecision) slots in by adding
// overloads and a ScalarTraits specialization in its own header under scalar/.
#pragma once
#include <cmath>
#include <limits>
#include <string>

namespace metastep {

template <class Scalar>
struct ScalarTraits;  // name, epsilon, range limits, wider type for refinement

template <>
struct ScalarTraits<float> {
  static constexpr const char* name = "float32";
  using Wide = double;  // used where a little extra precision is cheap (eigenvalue refinement)
};
template <>
struct ScalarTraits<double> {
  static constexpr const char* name = "float64";
  using Wide = long double;
};
template <>
struct ScalarTraits<long double> {
  static constexpr const char* name = "longdouble";
  using Wide = long double;
};

namespace sm {

// Built-in floating types: forward to the standard library.
template <class S> inline S log(S x) { return std::log(x); }
template <class S> inline S exp(S x) { return std::exp(x); }
template <class S> inline S log1p(S x) { return std::log1p(x); }
template <class S> inline S sqrt(S x) { return std::sqrt(x); }
template <class S> inline S abs(S x) { return std::fabs(x); }
template <class S> inline bool isfinite(S x) { return std::isfinite(x); }
template <class S> inline bool isnan(S x) { return std::isnan(x); }
template <class S> inline S epsilon() { return std::numeric_limits<S>::epsilon(); }
template <class S> inline S min_normal() { return std::numeric_limits<S>::min(); }
template <class S> inline S highest() { return std::numeric_limits<S>::max(); }
template <class S> inline S infinity() { return std::numeric_limits<S>::infinity(); }
template <class S> inline S quiet_nan() { return std::numeric_limits<S>::quiet_NaN(); }
template <class S> inline S ldexp(S x, int e) { return std::ldexp(x, e); }
template <class S> inline S frexp(S x, int* e) { return std::frexp(x, e); }
template <class S> inline double to_double(S x) { return static_cast<double>(x); }
template <class S> inline long double to_longdouble(S x) { return static_cast<long double>(x); }
template <class S> inline S from_double(double x) { return static_cast<S>(x); }

// log|x| computed in the scalar's own precision and range, then rounded to double: a value
// far outside float64's range (1e-400 in long double) keeps its exact magnitude here.
template <class S> inline double log_abs(S x) {
  if (x == S(0)) return -std::numeric_limits<double>::infinity();
  return to_double(log(abs(x)));
}
template <class S> inline int sign(S x) { return (x > S(0)) - (x < S(0)); }

}  // namespace sm
}  // namespace metastep
