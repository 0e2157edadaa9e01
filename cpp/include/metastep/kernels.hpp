// Fused dense products for the inner loop (issue 8).
//
// A GD step needs H r (reverse mode), H r and H v together (forward mode), or H [R V] for a
// whole batch of step sizes. DenseOp keeps, for float and double, a copy of the matrix packed
// once into row panels, each stored column after column (panel p, column k: PR consecutive
// rows), so that every product streams the matrix contiguously and in full SIMD packets
// (Eigen's packet layer: AVX-512, AVX2 or SSE, whatever the build targets), with explicit fused
// multiply-adds and all accumulators in registers.
//
// Every output entry is the same chain o_i = fma(A_i,n-1 x_n-1, ... fma(A_i,0 x_0, 0)) with the
// column index ascending, whichever kernel computes it (one product, two, or a batch of any
// width) and however the work is split between threads: the iterates of forward, reverse and
// checkpoint mode are bit-identical, a batch gives the same bits as one step size at a time,
// and nothing depends on the thread count. Other scalar types (long double, quad, mp) use
// Eigen's products on the original matrix.
#pragma once
#include <Eigen/Core>
#include <algorithm>
#include <type_traits>
#include <vector>

#include "types.hpp"

namespace metastep {
namespace kernels {

// Column-major matrix (a batch of vectors, one per column).
template <class S>
using ColMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

template <class S>
inline constexpr bool simd_scalar = std::is_same_v<S, float> || std::is_same_v<S, double>;

namespace detail {

template <class S>
using Packet = typename Eigen::internal::packet_traits<S>::type;
template <class S>
inline constexpr int packet_size = Eigen::internal::unpacket_traits<Packet<S>>::size;
// packets per row panel
inline constexpr int kPanelPackets = 3;

template <class S, class P>
inline void store_lanes(S* dst, const P& p, Index count) {
  alignas(64) S tmp[packet_size<S>];
  Eigen::internal::pstoreu(tmp, p);
  for (Index q = 0; q < count; ++q) dst[q] = tmp[q];
}

// NP panels of RB packets each (panel q at A + q * pstride, rows row0 + q * prow) and, when
// RBX > 0, one narrower panel of RBX packets at AX (rows from rowx), against KC columns of x,
// packed so that the KC entries of row k are consecutive (xp[k * KC + c]: one stream, and no
// cache-set aliasing between columns a power-of-two distance apart); outputs out[c][i] for
// rows i < rows only. Keeping the narrow last panel in the
// same pass as full ones gives every pass enough independent accumulators to hide the latency
// of the fused multiply-add.
template <class S, int NP, int RB, int RBX, int KC>
EIGEN_DONT_INLINE void tile(const S* A, Index pstride, const S* AX, Index cols, const S* xp, S* const* out, Index row0,
                 Index prow, Index rowx, Index rows) {
  using P = Packet<S>;
  constexpr int PS = packet_size<S>;
  constexpr int NX = RBX > 0 ? RBX : 1;
  P acc[NP > 0 ? NP : 1][RB][KC];
  P accx[NX][KC];
  for (int q = 0; q < NP; ++q)
    for (int r = 0; r < RB; ++r)
      for (int c = 0; c < KC; ++c) acc[q][r][c] = Eigen::internal::pset1<P>(S(0));
  for (int r = 0; r < RBX; ++r)
    for (int c = 0; c < KC; ++c) accx[r][c] = Eigen::internal::pset1<P>(S(0));
  const S* a = A;
  const S* ax = AX;
  for (Index k = 0; k < cols; ++k, a += RB * PS, ax += RBX * PS, xp += KC) {
    P xb[KC];
    for (int c = 0; c < KC; ++c) xb[c] = Eigen::internal::pset1<P>(xp[c]);
    for (int q = 0; q < NP; ++q)
      for (int r = 0; r < RB; ++r) {
        const P h = Eigen::internal::ploadu<P>(a + q * pstride + r * PS);
        for (int c = 0; c < KC; ++c) acc[q][r][c] = Eigen::internal::pmadd(h, xb[c], acc[q][r][c]);
      }
    for (int r = 0; r < RBX; ++r) {
      const P h = Eigen::internal::ploadu<P>(ax + r * PS);
      for (int c = 0; c < KC; ++c) accx[r][c] = Eigen::internal::pmadd(h, xb[c], accx[r][c]);
    }
  }
  auto put = [&](const P& v, Index at, int c) {
    if (at >= rows) return;
    if (at + PS <= rows) Eigen::internal::pstoreu(out[c] + at, v);
    else store_lanes(out[c] + at, v, rows - at);
  };
  for (int q = 0; q < NP; ++q)
    for (int r = 0; r < RB; ++r)
      for (int c = 0; c < KC; ++c) put(acc[q][r][c], row0 + q * prow + r * PS, c);
  for (int r = 0; r < RBX; ++r)
    for (int c = 0; c < KC; ++c) put(accx[r][c], rowx + r * PS, c);
}

}  // namespace detail

// A dense matrix prepared for repeated fused products.
template <class S>
class DenseOp {
 public:
  DenseOp() = default;
  explicit DenseOp(const Mat<S>& A) : rows_(A.rows()), cols_(A.cols()) {
    if constexpr (simd_scalar<S>) {
      constexpr Index PS = detail::packet_size<S>, PR = detail::kPanelPackets * PS;
      const Index padded = (rows_ + PS - 1) / PS * PS;
      full_panels_ = padded / PR;
      last_packets_ = (padded - full_panels_ * PR) / PS;  // 0 .. kPanelPackets - 1
      data_.assign(static_cast<size_t>(padded * cols_), S(0));
      // panel p occupies [p * PR * cols, (p + 1) * PR * cols); the last, narrower panel follows
      for (Index i = 0; i < rows_; ++i) {
        const Index p = i / PR, within = i % PR, width = p < full_panels_ ? PR : last_packets_ * PS;
        S* base = data_.data() + p * PR * cols_;
        for (Index j = 0; j < cols_; ++j) base[j * width + within] = A(i, j);
      }
    }
  }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }

  // out = A x (x of length cols, out of length rows). `A` is the matrix this operator was made
  // from (used directly by the types without a SIMD path, which keep no copy).
  void apply(const Mat<S>& A, const Vec<S>& x, Vec<S>& out) const {
    out.resize(rows_);
    if constexpr (simd_scalar<S>) {
      S* os[1] = {out.data()};
      run<1>(x.data(), os);
    } else {
      out.noalias() = A * x;
    }
  }
  // o0 = A x0 and o1 = A x1 in one pass over A.
  void apply2(const Mat<S>& A, const Vec<S>& x0, const Vec<S>& x1, Vec<S>& o0, Vec<S>& o1) const {
    o0.resize(rows_);
    o1.resize(rows_);
    if constexpr (simd_scalar<S>) {
      std::vector<S>& xp = pack_buffer(2 * cols_);
      for (Index k = 0; k < cols_; ++k) {
        xp[static_cast<size_t>(2 * k)] = x0[k];
        xp[static_cast<size_t>(2 * k + 1)] = x1[k];
      }
      S* os[2] = {o0.data(), o1.data()};
      run<2>(xp.data(), os);
    } else {
      Mat<S> in(cols_, 2);
      in.col(0) = x0;
      in.col(1) = x1;
      const Mat<S> out = A * in;
      o0 = out.col(0);
      o1 = out.col(1);
    }
  }
  // out.col(c) = A X.col(c) for every column of X (a batch): each row panel is read from memory
  // once and from cache for every group of six columns.
  void apply_many(const Mat<S>& A, const ColMat<S>& X, ColMat<S>& out) const {
    if (out.rows() != rows_ || out.cols() != X.cols()) out.resize(rows_, X.cols());
    if constexpr (simd_scalar<S>) {
      apply_many(X.data(), X.rows(), X.cols(), out.data(), out.rows());
    } else {
      out.noalias() = A * X;
    }
  }
  // The same on raw column-major storage: n columns of length cols() at X + c * ldx, results
  // (length rows()) at out + c * ldo. Only for float and double.
  void apply_many(const S* X, Index ldx, Index n, S* out, Index ldo) const {
    static_assert(simd_scalar<S>, "raw batched products exist for float and double only");
    constexpr Index KC = 6;  // 3 x 6 accumulators + 6 broadcasts + 3 loads fit the 32 registers
    // pack every column, group by group (KC columns per group, the KC entries of row k
    // consecutive): one stream per group, read again for every row panel from cache
    std::vector<S>& xp = pack_buffer(n * cols_);
    std::vector<S*>& os = out_buffer(n);  // no allocation per product once the batch size was seen
    for (Index c = 0; c < n; ++c) os[static_cast<size_t>(c)] = out + c * ldo;
    for (Index c = 0; c < n; c += KC) {
      const Index kc = std::min<Index>(KC, n - c);
      S* base = xp.data() + c * cols_;
      for (Index q = 0; q < kc; ++q) {
        const S* src = X + (c + q) * ldx;
        for (Index k = 0; k < cols_; ++k) base[k * kc + q] = src[k];
      }
    }
    // panels outside, column groups inside: a panel stays in cache for all the groups
    const Index npanels = last_packets_ > 0 && full_panels_ > 0 ? full_panels_ - 1 : full_panels_;
    for (Index p = 0; p <= npanels; ++p) {
      const bool final_group = p == npanels;
      if (p == full_panels_ && last_packets_ == 0) break;
      for (Index c = 0; c < n; c += KC) {
        const Index kc = std::min<Index>(KC, n - c);
        const S* xg = xp.data() + c * cols_;
        S* const* o = os.data() + c;
        switch (kc) {
          case 6: panel<6>(p, final_group, xg, o); break;
          case 5: panel<5>(p, final_group, xg, o); break;
          case 4: panel<4>(p, final_group, xg, o); break;
          case 3: panel<3>(p, final_group, xg, o); break;
          case 2: panel<2>(p, final_group, xg, o); break;
          default: panel<1>(p, final_group, xg, o); break;
        }
      }
    }
  }

 private:
  // K products, one full panel per pass (more panels per pass measured slower: the loads of
  // several streams and the register pressure outweigh the extra independent accumulators);
  // the narrow last panel joins the final pass.
  // Scratch for the packed right-hand sides: one per thread (the operator itself is shared).
  static std::vector<S>& pack_buffer(Index size) {
    thread_local std::vector<S> buf;
    if (buf.size() < static_cast<size_t>(size)) buf.resize(static_cast<size_t>(size));
    return buf;
  }
  static std::vector<S*>& out_buffer(Index size) {
    thread_local std::vector<S*> buf;
    if (buf.size() < static_cast<size_t>(size)) buf.resize(static_cast<size_t>(size));
    return buf;
  }

  // Full panel p against K packed columns, or (final) the last full panel together with the
  // narrow last one (or the narrow one alone when there is no full panel).
  template <int K>
  void panel(Index p, bool final, const S* xp, S* const* out) const {
    constexpr Index PR = detail::kPanelPackets * detail::packet_size<S>;
    constexpr int RBF = detail::kPanelPackets;
    const Index pstride = PR * cols_;
    const S* A = data_.data();
    const S* AX = A + full_panels_ * pstride;
    const Index rowx = full_panels_ * PR;
    if (!final || last_packets_ == 0) {
      detail::tile<S, 1, RBF, 0, K>(A + p * pstride, pstride, AX, cols_, xp, out, p * PR, PR, rowx, rows_);
    } else if (full_panels_ > 0) {
      if (last_packets_ == 1)
        detail::tile<S, 1, RBF, 1, K>(A + p * pstride, pstride, AX, cols_, xp, out, p * PR, PR, rowx, rows_);
      else
        detail::tile<S, 1, RBF, 2, K>(A + p * pstride, pstride, AX, cols_, xp, out, p * PR, PR, rowx, rows_);
    } else {
      if (last_packets_ == 1) detail::tile<S, 0, RBF, 1, K>(A, pstride, AX, cols_, xp, out, 0, PR, rowx, rows_);
      else detail::tile<S, 0, RBF, 2, K>(A, pstride, AX, cols_, xp, out, 0, PR, rowx, rows_);
    }
  }

  template <int K>
  void run(const S* xp, S* const* out) const {
    const Index npanels = last_packets_ > 0 && full_panels_ > 0 ? full_panels_ - 1 : full_panels_;
    for (Index p = 0; p <= npanels; ++p) {
      if (p == full_panels_ && last_packets_ == 0) break;
      panel<K>(p, p == npanels, xp, out);
    }
  }

  Index rows_ = 0, cols_ = 0;
  Index full_panels_ = 0, last_packets_ = 0;
  std::vector<S, Eigen::aligned_allocator<S>> data_;
};

}  // namespace kernels
}  // namespace metastep
