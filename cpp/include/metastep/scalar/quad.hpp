// IEEE binary128 ("quad") through GCC's __float128: arithmetic from libgcc, and the few
// elementary functions the core needs written here (no libquadmath), plus what Eigen needs
// to treat it as a first-class scalar (NumTraits with every limit overridden: libstdc++ has
// no numeric_limits<__float128>, whose defaults would silently be 0).
#pragma once
#include <Eigen/Core>
#include <cmath>
#include <cstring>

#include "traits.hpp"

#if defined(__SIZEOF_FLOAT128__) && !defined(METASTEP_NO_FLOAT128)
#define METASTEP_HAVE_FLOAT128 1

namespace metastep {

using quad = __float128;

namespace qm {

using u128 = unsigned __int128;
constexpr int BIAS = 16383;

inline u128 bits(quad x) {
  u128 u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline quad from_bits(u128 u) {
  quad x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
inline int biased_exponent(quad x) { return static_cast<int>((bits(x) >> 112) & 0x7fff); }
// 2^k for a normal power of two, -16382 <= k <= 16383.
inline quad pow2(int k) { return from_bits(static_cast<u128>(k + BIAS) << 112); }
inline bool isnan(quad x) { return x != x; }
inline quad abs(quad x) { return x < 0 ? -x : x; }
inline quad infinity() { return __builtin_infq(); }
inline quad quiet_nan() { return __builtin_nanq(""); }
inline quad highest() { return from_bits((static_cast<u128>(0x7ffe) << 112) | ((static_cast<u128>(1) << 112) - 1)); }
inline quad min_normal() { return pow2(-16382); }
inline quad epsilon() { return pow2(-112); }
inline bool isfinite(quad x) { return !isnan(x) && abs(x) <= highest(); }

// ln 2 split so that k * LN2_HI is exact for |k| < 2^17 (LN2_HI has 96 significant bits).
inline quad ln2_hi() { return 0x1.62e42fefa39ef35793c76730p-1Q; }
inline quad ln2_lo() { return 0x1.f97b57a079a193394c5b16c5068cp-103Q; }
inline quad inv_ln2() { return 0x1.71547652b82fe1777d0ffda0d23ap+0Q; }
inline quad sqrt_half() { return 0x1.6a09e667f3bcc908b2fb1366ea95p-1Q; }

inline quad ldexp(quad x, int e) {
  if (x == 0 || !isfinite(x)) return x;
  while (e > 16000) {
    x *= pow2(16000);
    e -= 16000;
    if (!isfinite(x)) return x;
  }
  while (e < -16000) {
    x *= pow2(-16000);
    e += 16000;
    if (x == 0) return x;
  }
  return x * pow2(e);
}

// x = f 2^e with 1/2 <= |f| < 1.
inline quad frexp(quad x, int* e) {
  *e = 0;
  if (x == 0 || !isfinite(x)) return x;
  int adj = 0;
  if (biased_exponent(x) == 0) {  // subnormal: make it normal first
    x *= pow2(113);
    adj = -113;
  }
  *e = biased_exponent(x) - (BIAS - 1) + adj;
  u128 u = bits(x);
  u &= ~(static_cast<u128>(0x7fff) << 112);
  u |= static_cast<u128>(BIAS - 1) << 112;
  return from_bits(u);
}

inline quad floor(quad x) {
  if (!isfinite(x) || abs(x) >= pow2(112)) return x;
  const quad r = static_cast<quad>(static_cast<__int128>(x));
  return r > x ? r - 1 : r;
}

inline quad sqrt(quad x) {
  if (isnan(x) || x < 0) return quiet_nan();
  if (x == 0 || !isfinite(x)) return x;
  int e;
  quad f = frexp(x, &e);
  if (e % 2 != 0) {
    f *= 2;
    e -= 1;
  }
  quad y = static_cast<quad>(std::sqrt(static_cast<long double>(f)));  // 64 good bits
  y = 0.5Q * (y + f / y);                                             // one Newton step: > 113
  return ldexp(y, e / 2);
}

// exp: x = k ln2 + r, |r| <= ln2/2; e^r from expm1 of r/256 by Taylor, squared 8 times in
// the form u <- u (2 + u), which keeps the relative accuracy of e^r - 1.
inline quad exp(quad x) {
  if (isnan(x)) return x;
  if (x > 11357) return infinity();
  if (x < -11500) return 0;
  const quad kq = floor(x * inv_ln2() + 0.5Q);
  const int k = static_cast<int>(kq);
  const quad r = (x - kq * ln2_hi()) - kq * ln2_lo();
  const quad s = ldexp(r, -8);
  quad term = s, u = s;
  for (int n = 2; n < 40; ++n) {
    term *= s / n;
    u += term;
    if (abs(term) <= 1e-40Q * abs(u)) break;
  }
  for (int i = 0; i < 8; ++i) u = u * (2 + u);
  return ldexp(1 + u, k);
}

// log: x = f 2^e with f in [sqrt(1/2), sqrt(2)); log f = 2 atanh((f - 1)/(f + 1)).
inline quad log(quad x) {
  if (isnan(x) || x < 0) return quiet_nan();
  if (x == 0) return -infinity();
  if (!isfinite(x)) return x;
  int e;
  quad f = frexp(x, &e);
  if (f < sqrt_half()) {
    f *= 2;
    e -= 1;
  }
  const quad s = (f - 1) / (f + 1), s2 = s * s;
  quad term = s, sum = s;
  for (int n = 3; n < 400; n += 2) {
    term *= s2;
    const quad add = term / n;
    sum += add;
    if (abs(add) <= 1e-40Q * abs(sum)) break;
  }
  const quad eq = e;
  return eq * ln2_hi() + (eq * ln2_lo() + 2 * sum);
}

inline quad log1p(quad x) {
  if (isnan(x)) return x;
  const quad z = 1 + x;
  if (z == 1) return x;
  if (abs(x) >= 0.5Q) return log(z);
  return log(z) * x / (z - 1);  // cancels the rounding of 1 + x
}

}  // namespace qm

template <>
struct ScalarTraits<quad> {
  static constexpr const char* name = "quad";
  using Wide = quad;
  static constexpr int digits = 36;
};

template <>
struct Ops<quad> {
  static quad log(quad x) { return qm::log(x); }
  static quad exp(quad x) { return qm::exp(x); }
  static quad log1p(quad x) { return qm::log1p(x); }
  static quad sqrt(quad x) { return qm::sqrt(x); }
  static quad abs(quad x) { return qm::abs(x); }
  static quad floor(quad x) { return qm::floor(x); }
  static bool isfinite(quad x) { return qm::isfinite(x); }
  static bool isnan(quad x) { return qm::isnan(x); }
  static quad ldexp(quad x, int e) { return qm::ldexp(x, e); }
  static quad frexp(quad x, int* e) { return qm::frexp(x, e); }
  static quad epsilon() { return qm::epsilon(); }
  static quad min_normal() { return qm::min_normal(); }
  static quad highest() { return qm::highest(); }
  static quad infinity() { return qm::infinity(); }
  static quad quiet_nan() { return qm::quiet_nan(); }
  static double to_double(quad x) { return static_cast<double>(x); }
  static long double to_longdouble(quad x) { return static_cast<long double>(x); }
  static quad from_longdouble(long double x) { return static_cast<quad>(x); }
};

}  // namespace metastep

// Eigen's Givens rotations call sqrt unqualified after `using std::sqrt`, which only finds
// overloads in std; libstdc++ provides std::abs(__float128) but no sqrt. This one overload
// (our own, no libquadmath) makes the Jacobi/eigen-solver code compile for quad.
namespace std {
inline __float128 sqrt(__float128 x) { return metastep::qm::sqrt(x); }
}  // namespace std

namespace Eigen {
template <>
struct NumTraits<__float128> : GenericNumTraits<__float128> {
  using Real = __float128;
  using NonInteger = __float128;
  using Literal = __float128;
  using Nested = __float128;
  enum {
    IsComplex = 0,
    IsInteger = 0,
    IsSigned = 1,
    RequireInitialization = 0,
    ReadCost = 1,
    AddCost = 8,
    MulCost = 8
  };
  static inline Real epsilon() { return metastep::qm::epsilon(); }
  static inline Real dummy_precision() { return metastep::qm::pow2(-100); }
  static inline Real highest() { return metastep::qm::highest(); }
  static inline Real lowest() { return -metastep::qm::highest(); }
  static inline Real infinity() { return metastep::qm::infinity(); }
  static inline Real quiet_NaN() { return metastep::qm::quiet_nan(); }
  static inline int digits10() { return 33; }
  static inline int digits() { return 113; }
  static inline int min_exponent() { return -16381; }
  static inline int max_exponent() { return 16384; }
};
namespace numext {
template <>
EIGEN_ALWAYS_INLINE __float128 sqrt(const __float128& x) { return metastep::qm::sqrt(x); }
template <>
EIGEN_ALWAYS_INLINE bool(isfinite)(const __float128& x) { return metastep::qm::isfinite(x); }
template <>
EIGEN_ALWAYS_INLINE bool(isnan)(const __float128& x) { return metastep::qm::isnan(x); }
template <>
EIGEN_ALWAYS_INLINE bool(isinf)(const __float128& x) { return !metastep::qm::isnan(x) && !metastep::qm::isfinite(x); }
}  // namespace numext
namespace internal {
template <>
struct hypot_impl<__float128> {
  static inline __float128 run(const __float128& x, const __float128& y) {
    using metastep::qm::abs;
    const __float128 ax = abs(x), ay = abs(y);
    if (!metastep::qm::isfinite(ax) || !metastep::qm::isfinite(ay)) return ax + ay;
    const __float128 p = ax > ay ? ax : ay, q = ax > ay ? ay : ax;
    if (p == 0) return 0;
    const __float128 r = q / p;
    return p * metastep::qm::sqrt(1 + r * r);
  }
};
}  // namespace internal
}  // namespace Eigen

#endif
