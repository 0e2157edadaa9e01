// Minibatch SGD on a least-squares task (SPEC §2): step tau uses the rows batches(tau, :)
// of the training set. The batch sequence is drawn once from a seed by a fixed integer
// generator (splitmix64, partial Fisher-Yates), independent of the precision, so every mode
// and every precision sees the same minibatches on every machine.
#pragma once
#include <cstdint>
#include <climits>
#include <stdexcept>
#include <string>
#include <vector>

#include "problems.hpp"

namespace metastep {

class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : x_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (x_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform integer in [0, m) without modulo bias (rejection).
  std::uint64_t below(std::uint64_t m) {
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % m;
    std::uint64_t r;
    do r = next(); while (r >= limit);
    return r % m;
  }

 private:
  std::uint64_t x_;
};

// Entries of a rows x cols index table, refused (std::length_error, a Python ValueError) when the
// count overflows or exceeds what a vector may hold: never a wrapped-around size.
inline std::size_t index_table_size(std::int64_t rows, std::int64_t cols, const char* what) {
  if (rows < 0 || cols < 0) throw std::invalid_argument(std::string(what) + ": negative size");
  const std::int64_t cap = static_cast<std::int64_t>(std::vector<std::int32_t>().max_size() / 2);
  if (cols != 0 && rows > cap / cols)
    throw std::length_error(std::string(what) + " of " + std::to_string(rows) + " x " + std::to_string(cols) +
                            " row indices is too large");
  return static_cast<std::size_t>(rows * cols);
}

// t minibatches of B distinct row indices out of n (row-major t x B).
inline std::vector<std::int32_t> make_batches(Index n, Index B, Steps t, std::uint64_t seed) {
  if (B < 1 || B > n) throw std::invalid_argument("batch_size must be between 1 and the number of samples");
  if (t < 1) throw std::invalid_argument("steps must be at least 1");
  if (n > Index(INT32_MAX)) throw std::invalid_argument("at most 2**31 - 1 samples (row indices are 32-bit)");
  const std::size_t total = index_table_size(t, B, "the minibatch sequence");
  SplitMix64 rng(seed);
  std::vector<std::int32_t> perm(static_cast<size_t>(n)), out(total);
  for (Index i = 0; i < n; ++i) perm[static_cast<size_t>(i)] = static_cast<std::int32_t>(i);
  for (Steps s = 0; s < t; ++s) {
    for (Index j = 0; j < B; ++j) {
      const Index k = j + static_cast<Index>(rng.below(static_cast<std::uint64_t>(n - j)));
      std::swap(perm[static_cast<size_t>(j)], perm[static_cast<size_t>(k)]);
      out[static_cast<size_t>(s * B + j)] = perm[static_cast<size_t>(j)];
    }
  }
  return out;
}

template <class Scalar>
class MinibatchLeastSquares {
 public:
  using S = Scalar;
  MinibatchLeastSquares(const LeastSquares<S>& full, std::vector<std::int32_t> batches, Index B)
      : full_(full), batches_(std::move(batches)), B_(B) {
    if (B_ < 1 || batches_.size() % static_cast<size_t>(B_) != 0)
      throw std::invalid_argument("batches must have shape (steps, batch_size)");
    for (auto i : batches_)
      if (i < 0 || i >= full_.n()) throw std::invalid_argument("batch index out of range");
    t_ = static_cast<Steps>(batches_.size() / static_cast<size_t>(B_));
  }
  Index dim() const { return full_.dim(); }
  const Vec<S>& w0() const { return full_.w0(); }
  bool has_valid() const { return full_.has_valid(); }
  bool has_offset() const { return full_.has_offset(); }
  Steps steps() const { return t_; }
  Index batch_size() const { return B_; }
  const LeastSquares<S>& full() const { return full_; }

  S value_grad(const Vec<S>& w, Vec<S>& g, Workspace<S>& ws, S off = S(1)) const {
    gather(ws);
    return batch_value_grad(w, &g, ws, off);
  }
  S value_grad_hvp(const Vec<S>& w, const Vec<S>& v, Vec<S>& g, Vec<S>& hv, Workspace<S>& ws,
                   S off = S(1)) const {
    gather(ws);
    const S f = batch_value_grad(w, &g, ws, off);
    const Vec<S> xv = ws.xb * v;  // minibatch Hessian action X_B^T X_B v / B
    hv.noalias() = (ws.xb.transpose() * xv) / S(B_);
    return f;
  }
  S meta(bool valid, const Vec<S>& w, Vec<S>* gM, Workspace<S>& ws, S off = S(1)) const {
    return full_.meta(valid, w, gM, ws, off);
  }

 private:
  // The minibatch rows are gathered into the run's own workspace: the wrapper itself is
  // immutable and may be shared between threads.
  void gather(Workspace<S>& ws) const {
    if (ws.tau < 0 || ws.tau >= t_) throw std::invalid_argument("SGD step beyond the batch sequence");
    ws.xb.resize(B_, dim());
    ws.yb.resize(B_);
    const std::int32_t* idx = &batches_[static_cast<size_t>(ws.tau * B_)];
    for (Index j = 0; j < B_; ++j) {
      ws.xb.row(j) = full_.X().row(idx[j]);
      ws.yb[j] = full_.y()[idx[j]];
    }
  }
  S batch_value_grad(const Vec<S>& w, Vec<S>* g, Workspace<S>& ws, S off) const {
    ws.r.noalias() = ws.xb * w;
    const S scale = maxabs(ws.r) + off * maxabs(ws.yb);
    ws.r -= off * ws.yb;
    if (g) g->noalias() = (ws.xb.transpose() * ws.r) / S(B_);
    ws.residual_maxabs = maxabs(ws.r);
    ws.cancellation = scale > S(0) && ws.residual_maxabs < sm::sqrt(sm::epsilon<S>()) * scale;
    S cn = 0;
    for (Index j = 0; j < ws.xb.cols(); ++j) cn = std::max(cn, S(ws.xb.col(j).norm()));
    ws.grad_err = sm::epsilon<S>() * cn * (ws.r.norm() + sm::sqrt(S(B_)) * scale) / S(B_);
    return ws.r.squaredNorm() / (S(2) * S(B_));
  }
  const LeastSquares<S>& full_;
  std::vector<std::int32_t> batches_;
  Index B_;
  Steps t_ = 0;
};

}  // namespace metastep
