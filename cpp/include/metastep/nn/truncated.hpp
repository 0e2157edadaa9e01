// Truncated unrolls of inner training with the learned optimizer, and the meta-gradient of
// the truncation's meta-loss J(φ) = (1/T) Σ_{s=1..T} ℓ_meta(θ_s) with respect to the
// optimizer weights φ (ℓ_meta: mean cross-entropy of a minibatch of the meta set — the
// training subset for train-by-train, the validation split for train-by-validation):
//   * first-order   — back-propagation with the inner gradients g_s treated as constants
//                     (the paper's estimator, after Metz et al.);
//   * second-order  — exact back-propagation: the adjoint of g_s flows back into θ_s through
//                     the Hessian-vector product H(θ_s)·ḡ_s of the inner minibatch loss;
//   * es            — antithetic evolution strategies on J (no back-propagation at all).
// The first-order estimator is the exact gradient of the "frozen" meta-loss in which each g_s
// is replaced by the recorded value; forward() accepts such a recorded sequence so that tests
// can check the estimator against finite differences of that function.
#pragma once
#include <algorithm>
#include <string>

#include "../interrupt.hpp"
#include "learned_opt.hpp"

namespace metastep::nn {

enum class Estimator { first_order, second_order, es };

inline Estimator parse_estimator(const std::string& s) {
  if (s == "first" || s == "first_order" || s == "first-order") return Estimator::first_order;
  if (s == "second" || s == "second_order" || s == "second-order") return Estimator::second_order;
  if (s == "es") return Estimator::es;
  throw std::invalid_argument("unknown estimator '" + s + "'; expected 'first', 'second' or 'es'");
}

// First non-finite quantity of a run: which one and at which inner step (absolute count).
struct NonFinite {
  bool failed = false;
  std::string quantity;
  std::int64_t step = -1;
  void mark(const char* q, std::int64_t s) {
    if (!failed) {
      failed = true;
      quantity = q;
      step = s;
    }
  }
};

template <class S>
struct Tape {
  std::vector<Vec<S>> theta, g;
  std::vector<MatC<S>> M, V;
  std::vector<Vec<S>> gmeta;    // ∇ℓ_meta(θ_{s+1}), computed in the forward pass
  std::vector<MatR<S>> hidden;  // optimizer-MLP pre-activations per step (when within the memory budget)
  std::vector<MatC<S>> out;     // optimizer-MLP outputs per step (with hidden)
};

//: memory the tape may spend on cached optimizer-MLP pre-activations (P × 32 per step); beyond
//: it the backward pass recomputes them (one P×22×32 product per step)
constexpr std::size_t kTapeCacheBytes = std::size_t(256) << 20;

// T minibatches of B rows out of n (B >= n: every row, every step).
inline std::vector<std::int32_t> batch_plan(Index n, Index B, Index T, std::uint64_t seed) {
  if (n < 1) throw std::invalid_argument("a data set is empty");
  if (B <= 0 || B >= n) {
    std::vector<std::int32_t> out(index_table_size(T, n, "the minibatch plan"));
    for (Index s = 0; s < T; ++s)
      for (Index j = 0; j < n; ++j) out[static_cast<size_t>(s * n + j)] = static_cast<std::int32_t>(j);
    return out;
  }
  return make_batches(n, B, T, seed);
}

template <class S>
struct Truncation {
  const Dataset<S>* train = nullptr;
  const Dataset<S>* meta = nullptr;
  Index T = 0, B = 0, MB = 0;  // steps, inner batch, meta batch (MB = meta set size when full)
  std::vector<std::int32_t> batches, mbatches;

  Truncation(const Dataset<S>& tr, const Dataset<S>& me, Index steps, Index batch, Index meta_batch,
             std::uint64_t seed)
      : train(&tr), meta(&me), T(steps) {
    if (steps < 1) throw std::invalid_argument("a truncation needs at least 1 step");
    if (batch < 1) throw std::invalid_argument("batch_size must be at least 1");
    B = std::min(batch, tr.n());
    MB = (meta_batch <= 0 || meta_batch >= me.n()) ? me.n() : meta_batch;
    batches = batch_plan(tr.n(), B, T, seed);
    mbatches = batch_plan(me.n(), MB, T, seed ^ 0x9b05688c2b3e6c1fULL);
  }
};

template <class S>
struct MetaGrad {
  double meta_loss = 0;
  Vec<S> grad;
  std::vector<double> train_losses, meta_losses;  // per step
  NonFinite nf;
  // ES only: directional finite differences (F(φ+σε)−F(φ−σε))/(2σ) per pair and the directions
  std::vector<double> es_dirderiv;
  MatR<S> es_dirs;
};

template <class S>
class Unroller {
 public:
  explicit Unroller(const Layout& lay) : lay_(lay), net_(lay), mnet_(lay), opt_(lay) {}
  const Layout& layout() const { return lay_; }
  Stop* stop = nullptr;  // polled once per inner step, forward and backward; may be null

  // Runs the truncation from st (advanced in place). tape: record (θ_s, g_s, M_s, V_s).
  // frozen_g: use these gradients instead of computing them. g_out: record the gradients.
  double forward(const Vec<S>& phi, const Truncation<S>& tr, InnerState<S>& st, Tape<S>* tape,
                 const std::vector<Vec<S>>* frozen_g, std::vector<Vec<S>>* g_out, MetaGrad<S>& res) {
    const Index T = tr.T;
    if (tape) {
      // resized, not reassigned: a tape reused across calls keeps its buffers (no reallocation,
      // no page faults); every entry used below is overwritten
      const auto Ts = static_cast<size_t>(T);
      tape->theta.resize(Ts);
      tape->g.resize(Ts);
      tape->M.resize(Ts);
      tape->V.resize(Ts);
      tape->gmeta.resize(Ts);
      const std::size_t need = static_cast<std::size_t>(T) * static_cast<std::size_t>(lay_.n_params) * kHidden * sizeof(S);
      const size_t nh = need <= kTapeCacheBytes ? Ts : 0;
      tape->hidden.resize(nh);
      tape->out.resize(nh);
    }
    if (g_out) g_out->assign(static_cast<size_t>(T), Vec<S>());
    res.train_losses.assign(static_cast<size_t>(T), 0.0);
    res.meta_losses.assign(static_cast<size_t>(T), 0.0);
    double J = 0;
    for (Index s = 0; s < T; ++s) {
      poll(stop);
      const std::int64_t abs_step = st.step;
      net_.gather(*tr.train, &tr.batches[static_cast<size_t>(s * tr.B)], tr.B);
      const S loss = net_.forward(st.theta);
      res.train_losses[static_cast<size_t>(s)] = static_cast<double>(loss);
      if (frozen_g) {
        g_ = (*frozen_g)[static_cast<size_t>(s)];
      } else {
        net_.backward(st.theta, g_);
      }
      if (!std::isfinite(static_cast<double>(loss))) res.nf.mark("inner loss", abs_step);
      if (!g_.allFinite()) res.nf.mark("inner gradient", abs_step);
      if (g_out) (*g_out)[static_cast<size_t>(s)] = g_;
      if (tape) {
        tape->theta[static_cast<size_t>(s)] = st.theta;
        tape->g[static_cast<size_t>(s)] = g_;
        tape->M[static_cast<size_t>(s)] = st.M;
        tape->V[static_cast<size_t>(s)] = st.V;
      }
      const bool keep = tape && !tape->hidden.empty();
      opt_.step_forward(phi, st.theta, g_, st.M, st.V, st.step, Mp_, Vp_, u_,
                        keep ? &tape->hidden[static_cast<size_t>(s)] : nullptr,
                        keep ? &tape->out[static_cast<size_t>(s)] : nullptr, false);
      if (!u_.allFinite()) res.nf.mark("update", abs_step);
      st.theta -= u_;
      st.M.swap(Mp_);
      st.V.swap(Vp_);
      ++st.step;
      mnet_.gather(*tr.meta, &tr.mbatches[static_cast<size_t>(s * tr.MB)], tr.MB);
      const double ml = static_cast<double>(mnet_.forward(st.theta));
      if (tape) mnet_.backward(st.theta, tape->gmeta[static_cast<size_t>(s)]);
      if (!std::isfinite(ml)) res.nf.mark("meta loss", abs_step + 1);
      res.meta_losses[static_cast<size_t>(s)] = ml;
      J += ml;
    }
    res.meta_loss = J / static_cast<double>(T);
    return res.meta_loss;
  }

  // Meta-loss and its gradient by back-propagation (first- or second-order).
  MetaGrad<S> backprop(const Vec<S>& phi, const Truncation<S>& tr, InnerState<S>& st, bool second_order) {
    MetaGrad<S> res;
    forward(phi, tr, st, &tape_, nullptr, nullptr, res);
    backward(phi, tr, tape_, st.theta, st.step - tr.T, second_order, res);
    return res;
  }

  // First-order estimator with the given recorded gradients (for the frozen-gradient oracle).
  MetaGrad<S> backprop_frozen(const Vec<S>& phi, const Truncation<S>& tr, InnerState<S>& st,
                              const std::vector<Vec<S>>& frozen) {
    MetaGrad<S> res;
    forward(phi, tr, st, &tape_, &frozen, nullptr, res);
    backward(phi, tr, tape_, st.theta, st.step - tr.T, false, res);
    return res;
  }

  // Antithetic ES: (1/N) Σ_i ε_i (J(φ+σε_i) − J(φ−σε_i))/(2σ), ε_i ~ N(0, I). The state is
  // advanced with the unperturbed φ.
  MetaGrad<S> es(const Vec<S>& phi, const Truncation<S>& tr, InnerState<S>& st, Index pairs, double sigma,
                 std::uint64_t seed) {
    if (pairs < 1) throw std::invalid_argument("es_pairs must be at least 1");
    if (!(sigma > 0) || !std::isfinite(sigma)) throw std::invalid_argument("es_sigma must be positive and finite");
    MetaGrad<S> res, tmp;
    Rng rng(seed ^ 0x510e527fade682d1ULL);
    res.grad = Vec<S>::Zero(kOptParams);
    res.es_dirs.resize(pairs, kOptParams);
    res.es_dirderiv.resize(static_cast<size_t>(pairs));
    Vec<S> eps(kOptParams), pp;
    for (Index i = 0; i < pairs; ++i) {
      for (Index k = 0; k < kOptParams; ++k) eps[k] = S(rng.normal());
      res.es_dirs.row(i) = eps.transpose();
      InnerState<S> a = st, b = st;
      pp = phi + S(sigma) * eps;
      const double fp = forward(pp, tr, a, nullptr, nullptr, nullptr, tmp);
      if (tmp.nf.failed) res.nf.mark(("ES +sigma run: " + tmp.nf.quantity).c_str(), tmp.nf.step);
      tmp.nf = NonFinite();
      pp = phi - S(sigma) * eps;
      const double fm = forward(pp, tr, b, nullptr, nullptr, nullptr, tmp);
      if (tmp.nf.failed) res.nf.mark(("ES -sigma run: " + tmp.nf.quantity).c_str(), tmp.nf.step);
      tmp.nf = NonFinite();
      const double d = (fp - fm) / (2.0 * sigma);
      res.es_dirderiv[static_cast<size_t>(i)] = d;
      res.grad += S(d / static_cast<double>(pairs)) * eps;
    }
    MetaGrad<S> base;
    forward(phi, tr, st, nullptr, nullptr, nullptr, base);
    res.meta_loss = base.meta_loss;
    res.train_losses = std::move(base.train_losses);
    res.meta_losses = std::move(base.meta_losses);
    if (base.nf.failed) res.nf.mark(base.nf.quantity.c_str(), base.nf.step);
    if (!res.grad.allFinite()) res.nf.mark("meta-gradient", st.step);
    return res;
  }

  MetaGrad<S> meta_gradient(Estimator e, const Vec<S>& phi, const Truncation<S>& tr, InnerState<S>& st,
                            Index es_pairs, double es_sigma, std::uint64_t es_seed) {
    if (phi.size() != kOptParams) throw std::invalid_argument("optimizer weights must have 1090 entries");
    if (st.theta.size() != lay_.n_params) throw std::invalid_argument("theta does not match the layer sizes");
    if (e == Estimator::es) return es(phi, tr, st, es_pairs, es_sigma, es_seed);
    return backprop(phi, tr, st, e == Estimator::second_order);
  }

 private:
  void backward(const Vec<S>& phi, const Truncation<S>& tr, Tape<S>& tape, const Vec<S>& /*theta_T*/,
                std::int64_t step0, bool second_order, MetaGrad<S>& res) {
    const Index T = tr.T, P = lay_.n_params;
    Vec<S> thb = Vec<S>::Zero(P), ubar, thf, gb, gdummy, hv;
    MatC<S> Mpb = MatC<S>::Zero(P, kBetas), Vpb = MatC<S>::Zero(P, kBetas), Mb, Vb;
    res.grad = Vec<S>::Zero(kOptParams);
    const S invT = S(1) / S(T);
    for (Index s = T - 1; s >= 0; --s) {
      poll(stop);
      thb += invT * tape.gmeta[static_cast<size_t>(s)];
      const auto k = static_cast<size_t>(s);
      const bool cached = !tape.hidden.empty();
      opt_.step_forward(phi, tape.theta[k], tape.g[k], tape.M[k], tape.V[k], step0 + s, Mp_, Vp_, u_,
                        cached ? &tape.hidden[k] : nullptr, cached ? &tape.out[k] : nullptr, cached);
      ubar = -thb;
      opt_.step_backward(phi, tape.g[k], Mp_, Vp_, ubar, Mpb, Vpb, res.grad, thf, gb, Mb, Vb);
      thb += thf;
      if (second_order) {
        net_.gather(*tr.train, &tr.batches[static_cast<size_t>(s * tr.B)], tr.B);
        net_.forward(tape.theta[k]);
        net_.backward_hvp(tape.theta[k], gb, gdummy, hv);
        thb += hv;
      }
      Mpb.swap(Mb);
      Vpb.swap(Vb);
      if (!res.nf.failed && !res.grad.allFinite()) res.nf.mark("meta-gradient (backward pass)", step0 + s);
      if (!res.nf.failed && !thb.allFinite()) res.nf.mark("adjoint of theta (backward pass)", step0 + s);
    }
  }

  Layout lay_;
  Net<S> net_, mnet_;
  LearnedOpt<S> opt_;
  Tape<S> tape_;  // reused by every back-propagated truncation of this unroller
  Vec<S> g_, u_;
  MatC<S> Mp_, Vp_;
};

}  // namespace metastep::nn
