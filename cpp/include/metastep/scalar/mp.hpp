// Arbitrary precision: Boost.Multiprecision cpp_bin_float with a 256-bit mantissa (header
// only) and a practically unbounded exponent (int exponent: about 10^(+-3e8)).
#pragma once
// Boost would route its own __float128 support through libquadmath (sqrtq, ...); our quad
// glue (quad.hpp) needs none of it, so keep Boost's float128 paths switched off.
#include <boost/config.hpp>
#undef BOOST_HAS_FLOAT128
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/eigen.hpp>
#include <limits>

#include "traits.hpp"

namespace metastep {

using mp_t = boost::multiprecision::number<
    boost::multiprecision::cpp_bin_float<256, boost::multiprecision::digit_base_2>, boost::multiprecision::et_off>;
constexpr int MP_BITS = 256;

template <>
struct ScalarTraits<mp_t> {
  static constexpr const char* name = "mp";
  using Wide = mp_t;
  static constexpr int digits = 78;
};

template <>
struct Ops<mp_t> {
  static mp_t log(const mp_t& x) { return boost::multiprecision::log(x); }
  static mp_t exp(const mp_t& x) { return boost::multiprecision::exp(x); }
  static mp_t log1p(const mp_t& x) { return boost::multiprecision::log1p(x); }
  static mp_t sqrt(const mp_t& x) { return boost::multiprecision::sqrt(x); }
  static mp_t abs(const mp_t& x) { return boost::multiprecision::abs(x); }
  static mp_t floor(const mp_t& x) { return boost::multiprecision::floor(x); }
  static bool isfinite(const mp_t& x) { return (boost::multiprecision::isfinite)(x); }
  static bool isnan(const mp_t& x) { return (boost::multiprecision::isnan)(x); }
  static mp_t ldexp(const mp_t& x, int e) { return boost::multiprecision::ldexp(x, e); }
  static mp_t frexp(const mp_t& x, int* e) { return boost::multiprecision::frexp(x, e); }
  static mp_t epsilon() { return std::numeric_limits<mp_t>::epsilon(); }
  static mp_t min_normal() { return (std::numeric_limits<mp_t>::min)(); }
  static mp_t highest() { return (std::numeric_limits<mp_t>::max)(); }
  static mp_t infinity() { return std::numeric_limits<mp_t>::infinity(); }
  static mp_t quiet_nan() { return std::numeric_limits<mp_t>::quiet_NaN(); }
  static double to_double(const mp_t& x) { return x.convert_to<double>(); }
  static long double to_longdouble(const mp_t& x) { return x.convert_to<long double>(); }
  static mp_t from_longdouble(long double x) { return mp_t(x); }
};

}  // namespace metastep
