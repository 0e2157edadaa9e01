// What one core can do on issue 8's d = 100 case (forward mode: each step multiplies the
// packed H, 100 x 104 doubles = 83 KB, by two vectors: 4 d^2 = 40,000 flops, every entry of H
// loaded once and used by two fused multiply-adds).
//   1. read bandwidth from the cache level a buffer fits in;
//   2. the fused multiply-add peak with everything in registers (the FMA roofline);
//   3. the fused multiply-add rate when every loaded vector feeds two FMAs (16 independent
//      accumulators), from a working set of each size: the ceiling of any kernel that streams
//      H once per step for the iterate and the tangent.
//   g++ -O2 -march=native benchmarks/cache_stream.cpp -o /tmp/cache_stream && taskset -c 1 /tmp/cache_stream
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

#ifdef __AVX512F__
using V = __m512d;
constexpr size_t W = 8;
static inline V vzero() { return _mm512_setzero_pd(); }
static inline V vset(double x) { return _mm512_set1_pd(x); }
static inline V vload(const double* p) { return _mm512_load_pd(p); }
static inline V vadd(V a, V b) { return _mm512_add_pd(a, b); }
static inline V vfma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
static inline double vsum(V x) { return _mm512_reduce_add_pd(x); }
#else
using V = __m256d;
constexpr size_t W = 4;
static inline V vzero() { return _mm256_setzero_pd(); }
static inline V vset(double x) { return _mm256_set1_pd(x); }
static inline V vload(const double* p) { return _mm256_load_pd(p); }
static inline V vadd(V a, V b) { return _mm256_add_pd(a, b); }
static inline V vfma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
static inline double vsum(V x) {
  alignas(32) double t[4];
  _mm256_store_pd(t, x);
  return t[0] + t[1] + t[2] + t[3];
}
#endif

static double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int main() {
  std::printf("read bandwidth (four accumulators):\n");
  for (size_t kb : {24, 40, 83, 160, 400}) {
    const size_t n = kb * 1024 / 8;
    double* a = static_cast<double*>(std::aligned_alloc(64, n * 8));
    for (size_t i = 0; i < n; ++i) a[i] = 1e-9 * double(i);
    V s0 = vzero(), s1 = vzero(), s2 = vzero(), s3 = vzero();
    const size_t reps = 2000000000ull / (n * 8);
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t r = 0; r < reps; ++r)
      for (size_t i = 0; i + 4 * W <= n; i += 4 * W) {
        s0 = vadd(s0, vload(a + i));
        s1 = vadd(s1, vload(a + i + W));
        s2 = vadd(s2, vload(a + i + 2 * W));
        s3 = vadd(s3, vload(a + i + 3 * W));
      }
    const double dt = seconds_since(t0);
    std::printf("  %4zu KB: %6.1f GB/s  (checksum %g)\n", kb, double(reps * n * 8) / dt / 1e9,
                vsum(s0) + vsum(s1) + vsum(s2) + vsum(s3));
    std::free(a);
  }

  // twelve independent chains of register-only FMAs (latency 4, two units: 8 needed)
  {
    const V m = vset(0.999999), c = vset(1e-7);
    V a[12];
    for (int i = 0; i < 12; ++i) a[i] = vset(double(i));
    const long n = 100000000;
    const auto t0 = std::chrono::steady_clock::now();
    for (long k = 0; k < n; ++k) {
      a[0] = vfma(a[0], m, c); a[1] = vfma(a[1], m, c); a[2] = vfma(a[2], m, c);
      a[3] = vfma(a[3], m, c); a[4] = vfma(a[4], m, c); a[5] = vfma(a[5], m, c);
      a[6] = vfma(a[6], m, c); a[7] = vfma(a[7], m, c); a[8] = vfma(a[8], m, c);
      a[9] = vfma(a[9], m, c); a[10] = vfma(a[10], m, c); a[11] = vfma(a[11], m, c);
    }
    const double dt = seconds_since(t0);
    double s = 0;
    for (int i = 0; i < 12; ++i) s += vsum(a[i]);
    const double gf = double(n) * 12 * 2 * W / dt / 1e9;
    std::printf("FMA peak, registers only: %.1f GFLOP/s (checksum %g)\n", gf, s);
    std::printf("  d = 100, t = 1000 forward (4e7 flops) at this peak: %.3f ms\n", 4e7 / (gf * 1e9) * 1e3);
  }

  std::printf("FMA rate with every loaded vector feeding two FMAs (16 accumulators):\n");
  for (size_t kb : {16, 40, 83, 160}) {
    const size_t n = kb * 1024 / 8 / (8 * W) * (8 * W);
    double* a = static_cast<double*>(std::aligned_alloc(64, n * 8));
    for (size_t i = 0; i < n; ++i) a[i] = 1.0;
    const V m0 = vset(1e-9), m1 = vset(2e-9);
    V p[8], q[8];
    for (int i = 0; i < 8; ++i) p[i] = q[i] = vzero();
    const size_t reps = 400000000ull / n;
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t r = 0; r < reps; ++r)
      for (size_t i = 0; i < n; i += 8 * W) {
        const double* x = a + i;
        V h;
        h = vload(x);         p[0] = vfma(h, m0, p[0]); q[0] = vfma(h, m1, q[0]);
        h = vload(x + W);     p[1] = vfma(h, m0, p[1]); q[1] = vfma(h, m1, q[1]);
        h = vload(x + 2 * W); p[2] = vfma(h, m0, p[2]); q[2] = vfma(h, m1, q[2]);
        h = vload(x + 3 * W); p[3] = vfma(h, m0, p[3]); q[3] = vfma(h, m1, q[3]);
        h = vload(x + 4 * W); p[4] = vfma(h, m0, p[4]); q[4] = vfma(h, m1, q[4]);
        h = vload(x + 5 * W); p[5] = vfma(h, m0, p[5]); q[5] = vfma(h, m1, q[5]);
        h = vload(x + 6 * W); p[6] = vfma(h, m0, p[6]); q[6] = vfma(h, m1, q[6]);
        h = vload(x + 7 * W); p[7] = vfma(h, m0, p[7]); q[7] = vfma(h, m1, q[7]);
      }
    const double dt = seconds_since(t0);
    double s = 0;
    for (int i = 0; i < 8; ++i) s += vsum(p[i]) + vsum(q[i]);
    const double gf = double(reps) * double(n) * 4 / dt / 1e9;
    std::printf("  %4zu KB: %6.1f GFLOP/s; 4e7 flops at this rate: %.3f ms  (checksum %g)\n", kb, gf,
                4e7 / (gf * 1e9) * 1e3, s);
    std::free(a);
  }
}
