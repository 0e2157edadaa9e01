// Fused dense products for the inner loop (issue 8).
//
// One GD step of forward mode needs H r and H v; reverse mode needs H r. DenseOp reads the
// matrix once per step for both columns, with explicit SIMD (Eigen's packet layer: AVX-512,
// AVX2 or SSE, whatever the build targets) and fused multiply-adds. For float and double the
// matrix is kept as a column-major copy whose leading dimension is padded to a whole number
// of packets, so that every load is a full packet.
//
// Every output entry is the same chain o_i = fma(A_i,n-1 x_n-1, ... fma(A_i,0 x_0, 0)) with j
// ascending, whichever loop order is used (register-blocked rows for matrices that stay in
// cache, column streaming for large ones) and whether one or two columns are computed: the
// iterates of forward, reverse and checkpoint mode are bit-identical, and results do not depend
// on the thread count. Other scalar types (long double, quad, mp) use Eigen's products.
#pragma once
#include <Eigen/Core>
#include <algorithm>
#include <type_traits>
#include <vector>

#include "types.hpp"

namespace metastep {
namespace kernels {

template <class S>
inline constexpr bool simd_scalar = std::is_same_v<S, float> || std::is_same_v<S, double>;

namespace detail {

template <class S>
using Packet = typename Eigen::internal::packet_traits<S>::type;
template <class S>
inline constexpr int packet_size = Eigen::internal::unpacket_traits<Packet<S>>::size;

// Store the first `count` lanes of p at dst.
template <class S, class P>
inline void store_lanes(S* dst, const P& p, Index count) {
  alignas(64) S tmp[packet_size<S>];
  Eigen::internal::pstoreu(tmp, p);
  for (Index q = 0; q < count; ++q) dst[q] = tmp[q];
}

// Rows [i, i + RB*PS) of K products, accumulators in registers, columns streamed.
template <class S, int K, int RB>
inline void row_block(const S* A, Index ld, Index rows, Index cols, Index i, const S* const* x, S* const* out) {
  using P = Packet<S>;
  constexpr int PS = packet_size<S>;
  P acc[K][RB];
  for (int k = 0; k < K; ++k)
    for (int r = 0; r < RB; ++r) acc[k][r] = Eigen::internal::pset1<P>(S(0));
  const S* col = A + i;
  for (Index j = 0; j < cols; ++j, col += ld) {
    P xb[K];
    for (int k = 0; k < K; ++k) xb[k] = Eigen::internal::pset1<P>(x[k][j]);
    for (int r = 0; r < RB; ++r) {
      const P h = Eigen::internal::ploadu<P>(col + r * PS);
      for (int k = 0; k < K; ++k) acc[k][r] = Eigen::internal::pmadd(h, xb[k], acc[k][r]);
    }
  }
  for (int r = 0; r < RB; ++r) {
    const Index at = i + r * PS;
    if (at >= rows) break;
    for (int k = 0; k < K; ++k) {
      if (at + PS <= rows) Eigen::internal::pstoreu(out[k] + at, acc[k][r]);
      else store_lanes(out[k] + at, acc[k][r], rows - at);
    }
  }
}

// Column streaming: accumulators in memory (scratch of length ld per product), four columns
// per pass over the accumulators. The order of the fused multiply-adds for each entry is the
// same as in row_block.
template <class S, int K>
inline void column_stream(const S* A, Index ld, Index rows, Index cols, const S* const* x, S* const* out,
                          S* scratch) {
  using P = Packet<S>;
  constexpr int PS = packet_size<S>;
  S* acc[K];
  for (int k = 0; k < K; ++k) {
    acc[k] = scratch + k * ld;
    std::fill(acc[k], acc[k] + ld, S(0));
  }
  Index j = 0;
  for (; j + 4 <= cols; j += 4) {
    const S* c = A + j * ld;
    P xb[K][4];
    for (int k = 0; k < K; ++k)
      for (int q = 0; q < 4; ++q) xb[k][q] = Eigen::internal::pset1<P>(x[k][j + q]);
    for (Index i = 0; i < ld; i += PS) {
      P s[K];
      for (int k = 0; k < K; ++k) s[k] = Eigen::internal::ploadu<P>(acc[k] + i);
      for (int q = 0; q < 4; ++q) {
        const P h = Eigen::internal::ploadu<P>(c + q * ld + i);
        for (int k = 0; k < K; ++k) s[k] = Eigen::internal::pmadd(h, xb[k][q], s[k]);
      }
      for (int k = 0; k < K; ++k) Eigen::internal::pstoreu(acc[k] + i, s[k]);
    }
  }
  for (; j < cols; ++j) {
    const S* c = A + j * ld;
    P xb[K];
    for (int k = 0; k < K; ++k) xb[k] = Eigen::internal::pset1<P>(x[k][j]);
    for (Index i = 0; i < ld; i += PS) {
      const P h = Eigen::internal::ploadu<P>(c + i);
      for (int k = 0; k < K; ++k)
        Eigen::internal::pstoreu(acc[k] + i, Eigen::internal::pmadd(h, xb[k], Eigen::internal::ploadu<P>(acc[k] + i)));
    }
  }
  for (int k = 0; k < K; ++k) std::copy(acc[k], acc[k] + rows, out[k]);
}

}  // namespace detail

// A dense matrix prepared for repeated fused products.
template <class S>
class DenseOp {
 public:
  DenseOp() = default;
  explicit DenseOp(const Mat<S>& A) : rows_(A.rows()), cols_(A.cols()) {
    if constexpr (simd_scalar<S>) {
      constexpr Index PS = detail::packet_size<S>;
      ld_ = (rows_ + PS - 1) / PS * PS;
      data_.assign(static_cast<size_t>(ld_ * cols_), S(0));
      for (Index j = 0; j < cols_; ++j)
        for (Index i = 0; i < rows_; ++i) data_[static_cast<size_t>(j * ld_ + i)] = A(i, j);
      // beyond about 1 MiB the matrix leaves the core's private cache: stream it by columns
      stream_ = static_cast<double>(ld_) * static_cast<double>(cols_) * sizeof(S) > 1024.0 * 1024.0;
    }
  }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  // Scratch the products need (per thread): put it in the caller's workspace.
  Index scratch_size(int k) const { return simd_scalar<S> && stream_ ? k * ld_ : 0; }

  // out = A x (x of length cols, out of length rows). `A` is the matrix this operator was made
  // from (used directly by the types without a SIMD path, which keep no copy).
  void apply(const Mat<S>& A, const Vec<S>& x, Vec<S>& out, std::vector<S>& scratch) const {
    out.resize(rows_);
    if constexpr (simd_scalar<S>) {
      const S* xs[1] = {x.data()};
      S* os[1] = {out.data()};
      run<1>(xs, os, scratch);
    } else {
      (void)scratch;
      out.noalias() = A * x;
    }
  }
  // o0 = A x0 and o1 = A x1 in one pass over A.
  void apply2(const Mat<S>& A, const Vec<S>& x0, const Vec<S>& x1, Vec<S>& o0, Vec<S>& o1,
              std::vector<S>& scratch) const {
    o0.resize(rows_);
    o1.resize(rows_);
    if constexpr (simd_scalar<S>) {
      const S* xs[2] = {x0.data(), x1.data()};
      S* os[2] = {o0.data(), o1.data()};
      run<2>(xs, os, scratch);
    } else {
      (void)scratch;
      Mat<S> in(cols_, 2);
      in.col(0) = x0;
      in.col(1) = x1;
      const Mat<S> out = A * in;
      o0 = out.col(0);
      o1 = out.col(1);
    }
  }

 private:
  template <int K>
  void run(const S* const* x, S* const* out, std::vector<S>& scratch) const {
    constexpr Index PS = detail::packet_size<S>;
    const S* A = data_.data();
    if (stream_) {
      if (scratch.size() < static_cast<size_t>(K * ld_)) scratch.resize(static_cast<size_t>(K * ld_));
      detail::column_stream<S, K>(A, ld_, rows_, cols_, x, out, scratch.data());
      return;
    }
    constexpr int RB = K == 1 ? 8 : 6;
    Index i = 0;
    for (; i + RB * PS <= ld_; i += RB * PS) detail::row_block<S, K, RB>(A, ld_, rows_, cols_, i, x, out);
    for (; i < ld_; i += PS) detail::row_block<S, K, 1>(A, ld_, rows_, cols_, i, x, out);
  }

  Index rows_ = 0, cols_ = 0, ld_ = 0;
  bool stream_ = false;
  std::vector<S, Eigen::aligned_allocator<S>> data_;
};

}  // namespace kernels
}  // namespace metastep
