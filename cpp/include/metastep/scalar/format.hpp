// Exact decimal text of extended-precision results (quad, mp): a value is converted exactly
// to the 256-bit type and printed there, so nothing is rounded through double.
#pragma once
#include <ios>
#include <string>

#include "mp.hpp"
#include "quad.hpp"
#include "traits.hpp"

namespace metastep {

template <class S>
struct IsExtended : std::false_type {};
#ifdef METASTEP_HAVE_FLOAT128
template <>
struct IsExtended<quad> : std::true_type {};
#endif
template <>
struct IsExtended<mp_t> : std::true_type {};

inline mp_t to_mp(const mp_t& x) { return x; }
inline mp_t to_mp(long double x) { return mp_t(x); }
inline mp_t to_mp(double x) { return mp_t(x); }
inline mp_t to_mp(float x) { return mp_t(x); }
#ifdef METASTEP_HAVE_FLOAT128
// x = f 2^e, and f (113 bits) is the exact sum of three doubles.
inline mp_t to_mp(quad x) {
  if (!qm::isfinite(x)) {
    if (qm::isnan(x)) return std::numeric_limits<mp_t>::quiet_NaN();
    return x > 0 ? std::numeric_limits<mp_t>::infinity() : -std::numeric_limits<mp_t>::infinity();
  }
  int e;
  quad f = qm::frexp(x, &e);
  const double a = static_cast<double>(f);
  f -= a;
  const double b = static_cast<double>(f);
  f -= b;
  const double c = static_cast<double>(f);
  return boost::multiprecision::ldexp(mp_t(a) + mp_t(b) + mp_t(c), e);
}
#endif

template <class S>
std::string decimal(const S& x, int digits = ScalarTraits<S>::digits) {
  return to_mp(x).str(digits, std::ios_base::scientific);
}

// sign * exp(log_abs) in decimal, computed at 256 bits (no range limit).
template <class W>
std::string decimal_from_log(const W& log_abs, int sign, int digits = ScalarTraits<W>::digits) {
  if (sign == 0) return "0";
  mp_t v = boost::multiprecision::exp(to_mp(log_abs));
  if (sign < 0) v = -v;
  return v.str(digits, std::ios_base::scientific);
}

}  // namespace metastep
