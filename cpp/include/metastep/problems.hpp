// Inner problems (SPEC §1): the convex quadratic and the least-squares task.
//
// A problem offers, for an iterate w (and a second direction v):
//   value_grad(w, g, ws)            -> f(w), writes g = grad f(w)
//   value_grad_hvp(w, v, g, hv, ws) -> f(w), writes g and hv = H v in one pass over the data
//   meta(valid, w, gM, ws)          -> meta-loss M(w) on the training or validation set, and grad M
// Each takes an optional last argument `off` multiplying the constant term (w* or y): the
// scaled mode carries w = 2^E w^ together with off = 2^-E, so that f(w) = 4^E f^(w^, off).
// Problems are immutable after construction (safe to share between threads); all scratch
// space lives in a Workspace created per run.
#pragma once
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels.hpp"
#include "scalar/traits.hpp"
#include "types.hpp"

namespace metastep {

// Scratch space and per-call findings of a problem evaluation.
template <class Scalar>
struct Workspace {
  Pair<Scalar> in, rows, out;   // fused two-column products
  Vec<Scalar> r;                // residual / difference vector
  Scalar residual_maxabs = 0;   // max |w - w*| or max |Xw - y| of the last evaluation
  bool cancellation = false;    // residual at the level of rounding noise (precision lost)
  Scalar grad_err = 0;          // estimated absolute rounding error of each gradient entry
  Steps tau = 0;                // inner step being evaluated (selects the minibatch of SGD)
  Mat<Scalar> xb;               // minibatch rows (SGD)
  Vec<Scalar> yb;
  Vec<Scalar> xv;               // X v (least squares)
  std::vector<Scalar> scratch;  // accumulators of the fused products
};

template <class Derived, class Scalar = typename Derived::Scalar>
inline Scalar maxabs(const Eigen::MatrixBase<Derived>& v) {
  if constexpr (kernels::simd_scalar<Scalar>) {
    // vectorised; a NaN anywhere makes the result NaN
    if (v.size() == 0) return Scalar(0);
    return v.cwiseAbs().template maxCoeff<Eigen::PropagateNaN>();
  } else {
    Scalar m = 0;
    for (Index i = 0; i < v.size(); ++i) {
      const Scalar a = sm::abs(v[i]);
      if (!(a <= m)) m = a;  // propagates NaN
    }
    return m;
  }
}

// Euclidean norm that cannot overflow or underflow (scaled by the largest entry). Where the
// largest entry m is far enough from both ends of the range (d m^2 finite, m^2 eps^2 normal)
// the plain sum of squares is already safe and is used.
template <class Derived, class Scalar = typename Derived::Scalar>
inline Scalar safe_norm(const Eigen::MatrixBase<Derived>& v) {
  const Scalar m = maxabs(v);
  if (!(m > Scalar(0)) || !sm::isfinite(m)) return m;
  if constexpr (kernels::simd_scalar<Scalar>) {
    const Scalar hi = std::sqrt(std::numeric_limits<Scalar>::max() / Scalar(v.size() + 1));
    const Scalar lo = std::sqrt(std::numeric_limits<Scalar>::min()) / std::numeric_limits<Scalar>::epsilon();
    if (m < hi && m > lo) return std::sqrt(v.squaredNorm());
  }
  Scalar s = 0;
  for (Index i = 0; i < v.size(); ++i) {
    const Scalar x = v[i] / m;
    s += x * x;
  }
  return m * sm::sqrt(s);
}

// f(w) = 1/2 (w - w*)^T H (w - w*)
template <class Scalar>
class Quadratic {
 public:
  using S = Scalar;
  Quadratic(Mat<S> H, Vec<S> w0, Vec<S> w_star) : H_(std::move(H)), w0_(std::move(w0)), ws_(std::move(w_star)) {
    if (H_.rows() != H_.cols()) throw std::invalid_argument("H must be square");
    if (w0_.size() != H_.rows() || ws_.size() != H_.rows())
      throw std::invalid_argument("w0 and w_star must have length d = H.shape[0]");
    if (H_.rows() < 1) throw std::invalid_argument("dimension must be at least 1");
    op_ = kernels::DenseOp<S>(H_);
    ws_scale_ = maxabs(ws_);
    row_norm_ = 0;
    for (Index i = 0; i < H_.rows(); ++i) row_norm_ = std::max(row_norm_, S(H_.row(i).norm()));
  }
  Index dim() const { return H_.rows(); }
  const Vec<S>& w0() const { return w0_; }
  const Mat<S>& H() const { return H_; }
  const Vec<S>& w_star() const { return ws_; }
  bool has_valid() const { return false; }

  bool has_offset() const { return ws_scale_ > S(0); }
  // For engines that form the residual r = w - off w* themselves (in ws.r) and multiply by H
  // with op(): the same bookkeeping as an evaluation here (residual size, rounding error).
  void note(Workspace<S>& ws, S off = S(1)) const { note_residual(ws, off); }
  const kernels::DenseOp<S>& op() const { return op_; }
  S value_grad(const Vec<S>& w, Vec<S>& g, Workspace<S>& ws, S off = S(1)) const {
    if (off == S(1)) ws.r = w - ws_;
    else ws.r = w - off * ws_;
    op_.apply(H_, ws.r, g);
    note_residual(ws, off);
    return S(0.5) * ws.r.dot(g);
  }
  S value_grad_hvp(const Vec<S>& w, const Vec<S>& v, Vec<S>& g, Vec<S>& hv, Workspace<S>& ws,
                   S off = S(1)) const {
    if (off == S(1)) ws.r = w - ws_;
    else ws.r = w - off * ws_;
    op_.apply2(H_, ws.r, v, g, hv);
    note_residual(ws, off);
    return S(0.5) * ws.r.dot(g);
  }
  S meta(bool valid, const Vec<S>& w, Vec<S>* gM, Workspace<S>& ws, S off = S(1)) const {
    if (valid) throw std::invalid_argument("a quadratic problem has no validation set");
    Vec<S> tmp;
    return value_grad(w, gM ? *gM : tmp, ws, off);
  }

 private:
  void note_residual(Workspace<S>& ws, S off) const { note_stats(ws, maxabs(ws.r), ws.r.norm(), off); }

 public:
  // The same from the residual's largest entry and norm, computed by the caller.
  void note_stats(Workspace<S>& ws, S rmax, S rnorm, S off = S(1)) const {
    ws.residual_maxabs = rmax;
    // (H e)_i = <H_i, e> computed with an error of about eps ||H_i|| ||e|| (plus the rounding
    // of e = w - w* itself, eps |w*| per entry).
    ws.grad_err = sm::epsilon<S>() * row_norm_ * (rnorm + sm::sqrt(S(dim())) * ws_scale_ * off);
    // w - w* cancels when w approaches a non-zero w*: its relative error is about
    // eps * max|w*| / max|w - w*|. Beyond sqrt(eps) the loss has lost half its digits.
    ws.cancellation = ws_scale_ > S(0) && ws.residual_maxabs < sm::sqrt(sm::epsilon<S>()) * ws_scale_ * off;
  }

 private:
  Mat<S> H_;
  kernels::DenseOp<S> op_;
  Vec<S> w0_, ws_;
  S ws_scale_, row_norm_;
};

// f(w) = 1/(2n) ||X w - y||^2, with an optional validation set (X', y').
template <class Scalar>
class LeastSquares {
 public:
  using S = Scalar;
  LeastSquares(Mat<S> X, Vec<S> y, Mat<S> Xv, Vec<S> yv, Vec<S> w0)
      : X_(std::move(X)), y_(std::move(y)), Xv_(std::move(Xv)), yv_(std::move(yv)), w0_(std::move(w0)) {
    if (X_.rows() < 1 || X_.cols() < 1) throw std::invalid_argument("X must have at least one row and column");
    if (y_.size() != X_.rows()) throw std::invalid_argument("y must have length n = X.shape[0]");
    if (w0_.size() != X_.cols()) throw std::invalid_argument("w0 must have length d = X.shape[1]");
    if (Xv_.size() > 0) {
      if (Xv_.cols() != X_.cols()) throw std::invalid_argument("X_valid must have d = X.shape[1] columns");
      if (yv_.size() != Xv_.rows()) throw std::invalid_argument("y_valid must have length X_valid.shape[0]");
    }
    y_scale_ = maxabs(y_);
    yv_scale_ = yv_.size() ? maxabs(yv_) : S(0);
    col_norm_ = max_col_norm(X_);
    col_norm_v_ = Xv_.size() ? max_col_norm(Xv_) : S(0);
  }
  Index dim() const { return X_.cols(); }
  Index n() const { return X_.rows(); }
  Index n_valid() const { return Xv_.rows(); }
  const Vec<S>& w0() const { return w0_; }
  const Mat<S>& X() const { return X_; }
  const Vec<S>& y() const { return y_; }
  const Mat<S>& X_valid() const { return Xv_; }
  const Vec<S>& y_valid() const { return yv_; }
  bool has_valid() const { return Xv_.rows() > 0; }

  bool has_offset() const { return y_scale_ > S(0) || yv_scale_ > S(0); }
  S value_grad(const Vec<S>& w, Vec<S>& g, Workspace<S>& ws, S off = S(1)) const {
    return residual_value_grad(X_, y_, y_scale_, w, &g, ws, off, col_norm_);
  }
  S value_grad_hvp(const Vec<S>& w, const Vec<S>& v, Vec<S>& g, Vec<S>& hv, Workspace<S>& ws,
                   S off = S(1)) const {
    ws.in.resize(dim(), 2);
    ws.in.col(0) = w;
    ws.in.col(1) = v;
    ws.rows.noalias() = X_ * ws.in;
    const S xw_scale = maxabs(Vec<S>(ws.rows.col(0)));
    if (off == S(1)) ws.rows.col(0) -= y_;
    else ws.rows.col(0) -= off * y_;
    ws.out.noalias() = X_.transpose() * ws.rows;
    const S inv_n = S(1) / S(n());
    g = ws.out.col(0) * inv_n;
    hv = ws.out.col(1) * inv_n;
    ws.r = ws.rows.col(0);
    note_residual(ws, xw_scale + off * y_scale_);
    ws.grad_err = grad_error(ws, col_norm_, n(), xw_scale + off * y_scale_);
    return ws.r.squaredNorm() * (S(0.5) * inv_n);
  }
  S meta(bool valid, const Vec<S>& w, Vec<S>* gM, Workspace<S>& ws, S off = S(1)) const {
    if (valid) {
      if (!has_valid()) throw std::invalid_argument("this least-squares task has no validation set");
      return residual_value_grad(Xv_, yv_, yv_scale_, w, gM, ws, off, col_norm_v_);
    }
    return residual_value_grad(X_, y_, y_scale_, w, gM, ws, off, col_norm_);
  }

 private:
  static void note_residual(Workspace<S>& ws, S scale) {
    ws.residual_maxabs = maxabs(ws.r);
    // Xw - y cancels as the fit becomes exact: relative error about eps * scale / max|r|.
    ws.cancellation = ws.residual_maxabs < sm::sqrt(sm::epsilon<S>()) * scale && scale > S(0);
  }
  static S max_col_norm(const Mat<S>& A) {
    S m = 0;
    for (Index j = 0; j < A.cols(); ++j) m = std::max(m, S(A.col(j).norm()));
    return m;
  }
  // (A^T r)_j / n has an error of about eps ||A_j|| (||r|| + sqrt(n) * scale of r's own rounding).
  static S grad_error(const Workspace<S>& ws, S col_norm, Index n, S scale) {
    return sm::epsilon<S>() * col_norm * (ws.r.norm() + sm::sqrt(S(n)) * scale) / S(n);
  }
  static S residual_value_grad(const Mat<S>& A, const Vec<S>& b, S b_scale, const Vec<S>& w, Vec<S>* g,
                               Workspace<S>& ws, S off, S col_norm) {
    ws.r.noalias() = A * w;
    const S aw_scale = maxabs(ws.r);
    if (off == S(1)) ws.r -= b;
    else ws.r -= off * b;
    const S inv_n = S(1) / S(A.rows());
    if (g) g->noalias() = (A.transpose() * ws.r) * inv_n;
    note_residual(ws, aw_scale + off * b_scale);
    ws.grad_err = grad_error(ws, col_norm, A.rows(), aw_scale + off * b_scale);
    return ws.r.squaredNorm() * (S(0.5) * inv_n);
  }
  Mat<S> X_;
  Vec<S> y_;
  Mat<S> Xv_;
  Vec<S> yv_;
  Vec<S> w0_;
  S y_scale_, yv_scale_, col_norm_ = 0, col_norm_v_ = 0;
};

// Step sizes of a run: one constant eta, or a schedule eta_0 .. eta_{t-1}.
template <class Scalar>
struct StepSizes {
  Scalar eta = 0;
  const Scalar* schedule = nullptr;  // length t when set
  Scalar at(Steps tau) const { return schedule ? schedule[tau] : eta; }
};

}  // namespace metastep
