// Read bandwidth of one core from the cache level a buffer fits in (issue 8's d = 100 argument:
// H packed for d = 100 is 83 KB, more than L1). Four independent AVX-512 (or AVX2) accumulators.
//   g++ -O2 -march=native benchmarks/cache_stream.cpp -o /tmp/cache_stream && taskset -c 1 /tmp/cache_stream
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

int main() {
  for (size_t kb : {24, 40, 83, 160, 400}) {
    const size_t n = kb * 1024 / 8;
    double* a = static_cast<double*>(std::aligned_alloc(64, n * 8));
    for (size_t i = 0; i < n; ++i) a[i] = 1e-9 * double(i);
#ifdef __AVX512F__
    using V = __m512d;
    constexpr size_t W = 8;
    auto zero = [] { return _mm512_setzero_pd(); };
    auto add = [](V x, const double* p) { return _mm512_add_pd(x, _mm512_load_pd(p)); };
    auto sum = [](V x) { return _mm512_reduce_add_pd(x); };
#else
    using V = __m256d;
    constexpr size_t W = 4;
    auto zero = [] { return _mm256_setzero_pd(); };
    auto add = [](V x, const double* p) { return _mm256_add_pd(x, _mm256_load_pd(p)); };
    auto sum = [](V x) {
      alignas(32) double t[4];
      _mm256_store_pd(t, x);
      return t[0] + t[1] + t[2] + t[3];
    };
#endif
    V s0 = zero(), s1 = zero(), s2 = zero(), s3 = zero();
    const size_t reps = 2000000000ull / (n * 8);
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t r = 0; r < reps; ++r)
      for (size_t i = 0; i + 4 * W <= n; i += 4 * W) {
        s0 = add(s0, a + i);
        s1 = add(s1, a + i + W);
        s2 = add(s2, a + i + 2 * W);
        s3 = add(s3, a + i + 3 * W);
      }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%4zu KB: %6.1f GB/s  (checksum %g)\n", kb, double(reps * n * 8) / dt / 1e9,
                sum(s0) + sum(s1) + sum(s2) + sum(s3));
    std::free(a);
  }
}
