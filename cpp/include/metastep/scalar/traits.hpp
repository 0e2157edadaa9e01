// Per-precision facts and the scalar math the algorithms use.
//
// Algorithms never call std::log & co. directly: they call metastep::sm::log etc., which
// forward to Ops<Scalar>. A precision without std overloads (GCC __float128, Boost
// multiprecision) slots in by specialising ScalarTraits and Ops in its own header under
// scalar/ (quad.hpp, mp.hpp); nothing in the algorithms changes.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

namespace metastep {

// name: the dtype string; Wide: a type at least as precise, used where a little extra
// precision is cheap (eigenvalue refinement, exact-mode logs); digits: significant decimal
// digits that identify a value of the type.
template <class Scalar>
struct ScalarTraits;

template <>
struct ScalarTraits<float> {
  static constexpr const char* name = "float32";
  using Wide = double;
  static constexpr int digits = 9;
};
template <>
struct ScalarTraits<double> {
  static constexpr const char* name = "float64";
  using Wide = long double;
  static constexpr int digits = 17;
};
template <>
struct ScalarTraits<long double> {
  static constexpr const char* name = "longdouble";
  using Wide = long double;
  static constexpr int digits = std::numeric_limits<long double>::max_digits10;
};

// Math of one scalar type; the primary template serves the built-in floating types.
template <class S, class Enable = void>
struct Ops {
  static S log(S x) { return std::log(x); }
  static S exp(S x) { return std::exp(x); }
  static S log1p(S x) { return std::log1p(x); }
  static S sqrt(S x) { return std::sqrt(x); }
  static S abs(S x) { return std::fabs(x); }
  static S floor(S x) { return std::floor(x); }
  static bool isfinite(S x) { return std::isfinite(x); }
  static bool isnan(S x) { return std::isnan(x); }
  static S ldexp(S x, int e) { return std::ldexp(x, e); }
  static S frexp(S x, int* e) { return std::frexp(x, e); }
  static S epsilon() { return std::numeric_limits<S>::epsilon(); }
  static S min_normal() { return std::numeric_limits<S>::min(); }
  static S highest() { return std::numeric_limits<S>::max(); }
  static S infinity() { return std::numeric_limits<S>::infinity(); }
  static S quiet_nan() { return std::numeric_limits<S>::quiet_NaN(); }
  static double to_double(S x) { return static_cast<double>(x); }
  static long double to_longdouble(S x) { return static_cast<long double>(x); }
  static S from_longdouble(long double x) { return static_cast<S>(x); }
};

namespace sm {

template <class S> inline S log(S x) { return Ops<S>::log(x); }
template <class S> inline S exp(S x) { return Ops<S>::exp(x); }
template <class S> inline S log1p(S x) { return Ops<S>::log1p(x); }
template <class S> inline S sqrt(S x) { return Ops<S>::sqrt(x); }
template <class S> inline S abs(S x) { return Ops<S>::abs(x); }
template <class S> inline S floor(S x) { return Ops<S>::floor(x); }
template <class S> inline bool isfinite(S x) { return Ops<S>::isfinite(x); }
template <class S> inline bool isnan(S x) { return Ops<S>::isnan(x); }
template <class S> inline S ldexp(S x, int e) { return Ops<S>::ldexp(x, e); }
template <class S> inline S frexp(S x, int* e) { return Ops<S>::frexp(x, e); }
template <class S> inline S epsilon() { return Ops<S>::epsilon(); }
template <class S> inline S min_normal() { return Ops<S>::min_normal(); }
template <class S> inline S highest() { return Ops<S>::highest(); }
template <class S> inline S infinity() { return Ops<S>::infinity(); }
template <class S> inline S quiet_nan() { return Ops<S>::quiet_nan(); }
template <class S> inline double to_double(S x) { return Ops<S>::to_double(x); }
template <class S> inline long double to_longdouble(S x) { return Ops<S>::to_longdouble(x); }
template <class S> inline S from_longdouble(long double x) { return Ops<S>::from_longdouble(x); }

// log|x| computed in the scalar's own precision and range, then rounded to double: a value
// far outside float64's range (1e-400 in long double) keeps its exact magnitude here.
template <class S> inline double log_abs(S x) {
  if (x == S(0)) return -std::numeric_limits<double>::infinity();
  return to_double(log(abs(x)));
}
template <class S> inline int sign(S x) { return (x > S(0)) - (x < S(0)); }

}  // namespace sm
}  // namespace metastep
