// The learned optimizer of SPEC §7 (paper §5, after Metz et al. 2019): one small MLP applied
// to every coordinate of the inner model's parameters.
//
// Per coordinate, for β in {0.5, 0.9, 0.99, 0.999, 0.9999}: m_β ← βm_β + (1−β)g,
// v_β ← βv_β + (1−β)g² (no bias correction). The 22 per-coordinate features
//   g | m_β/√(v_β+1e−6) (5) | θ | m_β (5) | v_β (5) | 1/√(v_β+1e−6) (5)
// are each divided by √(1e−5 + mean over the tensor of feature²) (a tensor is one W or b of
// the inner network), then 9 time features tanh(s/τ − 1) are appended: 31 inputs. The MLP
// 31 → 32 (ReLU) → 2 gives (a, b) and the update is θ ← θ − 0.001·a·exp(0.001·b).
//
// step_forward() computes one update and keeps what step_backward() needs to propagate
// adjoints of (θ_{s+1}, m', v') back to (θ_s, g_s, m_s, v_s) and to the optimizer weights φ.
#pragma once
#include <array>
#include <cmath>

#include "kernels.hpp"
#include "mlp.hpp"

namespace metastep::nn {

constexpr int kBetas = 5;
constexpr int kCoordFeatures = 22;
constexpr int kTimeFeatures = 9;
constexpr int kFeatures = kCoordFeatures + kTimeFeatures;  // 31
constexpr int kHidden = 32;
constexpr Index kOptParams = kFeatures * kHidden + kHidden + kHidden * 2 + 2;  // 1090
constexpr std::array<double, kBetas> kBeta = {0.5, 0.9, 0.99, 0.999, 0.9999};
constexpr std::array<double, kTimeFeatures> kTau = {3, 10, 30, 100, 300, 1000, 3000, 10000, 300000};
constexpr double kOutScale = 0.001;  // update = kOutScale·a·exp(kOutScale·b)
// offsets of the optimizer weights in φ
constexpr Index kW1 = 0, kB1 = kFeatures * kHidden, kW2 = kB1 + kHidden, kB2 = kW2 + kHidden * 2;

// Glorot-uniform weights, zero biases.
template <class S>
Vec<S> init_opt_params(std::uint64_t seed) {
  Rng rng(seed ^ 0x3c6ef372fe94f82bULL);
  Vec<S> phi = Vec<S>::Zero(kOptParams);
  const double a1 = std::sqrt(6.0 / (kFeatures + kHidden)), a2 = std::sqrt(6.0 / (kHidden + 2));
  for (Index k = 0; k < kFeatures * kHidden; ++k) phi[kW1 + k] = S(a1 * (2 * rng.uniform() - 1));
  for (Index k = 0; k < kHidden * 2; ++k) phi[kW2 + k] = S(a2 * (2 * rng.uniform() - 1));
  return phi;
}

// Per-coordinate optimizer state of the inner model.
// Column-major: the algorithms work feature by feature (one column at a time).
template <class S>
using MatC = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

template <class S>
struct InnerState {
  Vec<S> theta;
  MatC<S> M, V;  // P x 5 moments
  std::int64_t step = 0;
};

template <class S>
InnerState<S> init_state(const Layout& lay, std::uint64_t seed) {
  InnerState<S> st;
  st.theta = init_params<S>(lay, seed);
  st.M = MatC<S>::Zero(lay.n_params, kBetas);
  st.V = MatC<S>::Zero(lay.n_params, kBetas);
  return st;
}

template <class S>
class LearnedOpt {
 public:
  explicit LearnedOpt(const Layout& lay) : lay_(lay) {}
  // Everything but the layout is scratch filled by step_forward() (and hp_/op_ may point into a
  // caller's tape): a copy starts empty rather than sharing the source's pointers.
  LearnedOpt(const LearnedOpt& o) : lay_(o.lay_) {}
  LearnedOpt& operator=(const LearnedOpt& o) {
    if (this != &o) {
      lay_ = o.lay_;
      hp_ = &Hpre_;
      op_ = &Out_;
    }
    return *this;
  }

  // One update from state (θ, M, V, s) with gradient g: fills Mp, Vp (the new moments) and u
  // (θ_{s+1} = θ − u). Keeps the intermediates for step_backward(). hidden, out: optional
  // caller-owned homes of this step's first-layer pre-activations (P × 32) and MLP outputs
  // (P × 2), e.g. a tape reused across calls. With cached = false they are computed into them
  // (no copy); with cached = true they hold the values of an earlier call on the very same
  // inputs and are read instead of recomputed (the P×22×32 product and the 32 → 2 layer are
  // skipped; the results are bitwise the same). They must outlive step_backward().
  void step_forward(const Vec<S>& phi, const Vec<S>& theta, const Vec<S>& g, const MatC<S>& M, const MatC<S>& V,
                    std::int64_t s, MatC<S>& Mp, MatC<S>& Vp, Vec<S>& u, MatR<S>* hidden = nullptr,
                    MatC<S>* out = nullptr, bool cached = false) {
    const Index P = lay_.n_params;
    Mp.resize(P, kBetas);
    Vp.resize(P, kBetas);
    R_.resize(P, kCoordFeatures);
    R_.col(0) = g;
    R_.col(6) = theta;
    for (int j = 0; j < kBetas; ++j) {
      const S b = S(kBeta[static_cast<size_t>(j)]), ob = S(1) - b;
      Mp.col(j) = b * M.col(j) + ob * g;
      Vp.col(j) = b * V.col(j) + ob * g.cwiseAbs2();
      R_.col(17 + j) = (Vp.col(j).array() + S(1e-6)).rsqrt();
      R_.col(1 + j) = Mp.col(j).cwiseProduct(R_.col(17 + j));
      R_.col(7 + j) = Mp.col(j);
      R_.col(12 + j) = Vp.col(j);
    }
    const Index nt = static_cast<Index>(lay_.tensors.size());
    inv_norm_.resize(nt, kCoordFeatures);
    F_.resize(P, kCoordFeatures);
    for (Index k = 0; k < nt; ++k) {
      const auto [o, n] = lay_.tensors[static_cast<size_t>(k)];
      auto blk = R_.middleRows(o, n);
      for (int c = 0; c < kCoordFeatures; ++c) {
        const S ms = blk.col(c).squaredNorm() / S(n);
        inv_norm_(k, c) = S(1) / std::sqrt(S(1e-5) + ms);
      }
      F_.middleRows(o, n) = blk * inv_norm_.row(k).asDiagonal();
    }
    // time features enter as a shared row added to the first-layer bias
    Eigen::Matrix<S, 1, kTimeFeatures> tf;
    for (int k = 0; k < kTimeFeatures; ++k)
      tf[k] = S(std::tanh(static_cast<double>(s) / kTau[static_cast<size_t>(k)] - 1.0));
    tf_ = tf;
    auto W1t = w1(phi).bottomRows(kTimeFeatures);
    Eigen::Matrix<S, 1, kHidden> bias = Eigen::Map<const Eigen::Matrix<S, 1, kHidden>>(phi.data() + kB1);
    bias.noalias() += tf * W1t;
    hp_ = hidden ? hidden : &Hpre_;
    op_ = out ? out : &Out_;
    const bool reuse = cached && hidden && out;
    if (!reuse) {
      hp_->resize(P, kHidden);
      // rows 0..21 of the row-major 31×32 W1 are the coordinate-feature weights
      kernel::hidden_forward<S>(F_.data(), F_.outerStride(), P, phi.data() + kW1, bias.data(), hp_->data());
      H_ = hp_->cwiseMax(S(0));
      op_->noalias() = H_ * w2(phi);
      op_->col(0).array() += phi[kB2];
      op_->col(1).array() += phi[kB2 + 1];
    }
    const MatC<S>& Out = *op_;
    E_ = (S(kOutScale) * Out.col(1)).array().exp();
    u = S(kOutScale) * Out.col(0).cwiseProduct(E_);
  }

  // Adjoints: given ubar = dJ/du (so dJ/dθ_{s+1} = −ubar) and the adjoints Mpb, Vpb of the new
  // moments (updated in place with the feature paths), accumulate into phib and return
  // thb (the feature path to θ_s, identity path not included) and gb (dJ/dg_s through features
  // and moments); Mb, Vb are the adjoints of the old moments.
  void step_backward(const Vec<S>& phi, const Vec<S>& g, const MatC<S>& Mp, const MatC<S>& Vp, const Vec<S>& ubar,
                     MatC<S>& Mpb, MatC<S>& Vpb, Vec<S>& phib, Vec<S>& thb, Vec<S>& gb, MatC<S>& Mb, MatC<S>& Vb) {
    const Index P = lay_.n_params;
    Ob_.resize(P, 2);
    Ob_.col(0) = S(kOutScale) * ubar.cwiseProduct(E_);
    Ob_.col(1) = S(kOutScale * kOutScale) * ubar.cwiseProduct(op_->col(0)).cwiseProduct(E_);
    phib[kB2] += Ob_.col(0).sum();
    phib[kB2 + 1] += Ob_.col(1).sum();
    Hb_.resize(P, kHidden);
    Eigen::Matrix<S, 1, kHidden> hsum = Eigen::Matrix<S, 1, kHidden>::Zero();
    kernel::output_backward<S>(hp_->data(), Ob_.data(), Ob_.data() + Ob_.outerStride(), P, phi.data() + kW2,
                               Hb_.data(), phib.data() + kW2, hsum.data());
    Eigen::Map<Eigen::Matrix<S, kFeatures, kHidden, Eigen::RowMajor>> W1b(phib.data() + kW1);
    kernel::weight_grad<S>(F_.data(), F_.outerStride(), P, Hb_.data(), phib.data() + kW1);
    W1b.bottomRows(kTimeFeatures).noalias() += tf_.transpose() * hsum;
    Eigen::Map<Eigen::Matrix<S, 1, kHidden>>(phib.data() + kB1) += hsum;
    Wt_.assign(static_cast<size_t>(kHidden) * 24, S(0));
    for (int c = 0; c < kCoordFeatures; ++c)
      for (int j = 0; j < kHidden; ++j) Wt_[static_cast<size_t>(j * 24 + c)] = phi[kW1 + c * kHidden + j];
    Fb_.resize(P, kCoordFeatures);
    kernel::hidden_backward<S>(Hb_.data(), P, Wt_.data(), Fb_.data(), Fb_.outerStride());
    // per-tensor normalisation f = r·q, q = (1e−5 + mean r²)^(−1/2):
    // rbar = q·fbar − r·q³·(Σ fbar·r)/n
    Rb_.resize(P, kCoordFeatures);
    for (Index k = 0; k < static_cast<Index>(lay_.tensors.size()); ++k) {
      const auto [o, n] = lay_.tensors[static_cast<size_t>(k)];
      for (int c = 0; c < kCoordFeatures; ++c) {
        const S q = inv_norm_(k, c);
        auto r = R_.col(c).segment(o, n);
        auto fb = Fb_.col(c).segment(o, n);
        const S dot = fb.dot(r);
        Rb_.col(c).segment(o, n) = q * fb - (q * q * q * dot / S(n)) * r;
      }
    }
    gb = Rb_.col(0);
    thb = Rb_.col(6);
    Mb.resize(P, kBetas);
    Vb.resize(P, kBetas);
    for (int j = 0; j < kBetas; ++j) {
      const S b = S(kBeta[static_cast<size_t>(j)]), ob = S(1) - b;
      const auto rs = R_.col(17 + j).array();  // (v + 1e−6)^(−1/2)
      Mpb.col(j).array() += Rb_.col(1 + j).array() * rs + Rb_.col(7 + j).array();
      Vpb.col(j).array() += Rb_.col(12 + j).array() -
                            S(0.5) * rs.cube() * (Rb_.col(1 + j).array() * Mp.col(j).array() + Rb_.col(17 + j).array());
      gb.array() += ob * (Mpb.col(j).array() + S(2) * g.array() * Vpb.col(j).array());
      Mb.col(j) = b * Mpb.col(j);
      Vb.col(j) = b * Vpb.col(j);
    }
    (void)Vp;
  }

  const MatC<S>& features() const { return F_; }
  const Eigen::Matrix<S, 1, kTimeFeatures>& time_features() const { return tf_; }
  const MatC<S>& outputs() const { return *op_; }

 private:
  static Eigen::Map<const Eigen::Matrix<S, kFeatures, kHidden, Eigen::RowMajor>> w1(const Vec<S>& phi) {
    return Eigen::Map<const Eigen::Matrix<S, kFeatures, kHidden, Eigen::RowMajor>>(phi.data() + kW1);
  }
  static Eigen::Map<const Eigen::Matrix<S, kHidden, 2, Eigen::RowMajor>> w2(const Vec<S>& phi) {
    return Eigen::Map<const Eigen::Matrix<S, kHidden, 2, Eigen::RowMajor>>(phi.data() + kW2);
  }
  Layout lay_;
  MatC<S> R_, F_, Out_, Ob_, Fb_, Rb_;
  MatR<S> inv_norm_, Hpre_, H_, Hb_;  // P × 32, row-major for the per-coordinate kernels
  std::vector<S> Wt_;
  MatR<S>* hp_ = &Hpre_;  // pre-activations of the last step_forward (Hpre_ or the caller's)
  MatC<S>* op_ = &Out_;   // its MLP outputs
  Vec<S> E_;
  Eigen::Matrix<S, 1, kTimeFeatures> tf_;
};

}  // namespace metastep::nn
