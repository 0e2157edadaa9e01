// Inner training runs with the learned optimizer or a baseline (SGD, Adam), recording
// train/test loss and accuracy curves; and meta-training of the learned optimizer by truncated
// unrolls with RMSProp (SPEC §7).
#pragma once
#include <cmath>

#include "../interrupt.hpp"
#include "truncated.hpp"

namespace metastep::nn {

enum class InnerOpt { learned, sgd, adam };

inline InnerOpt parse_inner_opt(const std::string& s) {
  if (s == "learned") return InnerOpt::learned;
  if (s == "sgd") return InnerOpt::sgd;
  if (s == "adam") return InnerOpt::adam;
  throw std::invalid_argument("unknown optimizer '" + s + "'; expected 'learned', 'sgd' or 'adam'");
}

template <class S>
struct Curve {
  std::vector<std::int64_t> steps;
  std::vector<double> train_loss, train_acc, test_loss, test_acc;
  NonFinite nf;
  Vec<S> theta;
};

struct CurveConfig {
  InnerOpt opt = InnerOpt::learned;
  Index steps = 1000, batch = 32, every = 50;
  double lr = 0.1;                     // SGD / Adam step size
  std::uint64_t init_seed = 0, batch_seed = 1;
  Stop* stop = nullptr;                // polled once per step; may be null
};

// Train from a fresh initialization for cfg.steps minibatch steps. Records at step 0, every
// cfg.every steps and at the end; stops at the first non-finite quantity (reported).
template <class S>
Curve<S> train_curve(const Layout& lay, const Vec<S>& phi, const Dataset<S>& train, const Dataset<S>& test,
                     const CurveConfig& cfg) {
  if (cfg.steps < 1) throw std::invalid_argument("steps must be at least 1");
  if (cfg.every < 1) throw std::invalid_argument("record_every must be at least 1");
  if (cfg.batch < 1) throw std::invalid_argument("batch_size must be at least 1");
  if (cfg.opt == InnerOpt::learned && phi.size() != kOptParams)
    throw std::invalid_argument("optimizer weights must have 1090 entries");
  if (cfg.opt != InnerOpt::learned && !(cfg.lr > 0 && std::isfinite(cfg.lr)))
    throw std::invalid_argument("lr must be positive and finite");
  check_dataset(train, lay, "train");
  check_dataset(test, lay, "test");
  Curve<S> c;
  InnerState<S> st = init_state<S>(lay, cfg.init_seed);
  Net<S> net(lay), enet(lay);
  LearnedOpt<S> opt(lay);
  const Index B = std::min(cfg.batch, train.n());
  const auto batches = batch_plan(train.n(), B, cfg.steps, cfg.batch_seed);
  Vec<S> g, u;
  MatC<S> Mp, Vp;
  Vec<S> m1 = Vec<S>::Zero(lay.n_params), m2 = Vec<S>::Zero(lay.n_params);
  auto record = [&](std::int64_t s) {
    const auto [trl, tra] = evaluate(enet, st.theta, train);
    const auto [tel, tea] = evaluate(enet, st.theta, test);
    c.steps.push_back(s);
    c.train_loss.push_back(trl);
    c.train_acc.push_back(tra);
    c.test_loss.push_back(tel);
    c.test_acc.push_back(tea);
    if (!std::isfinite(trl)) c.nf.mark("train loss", s);
    if (!std::isfinite(tel)) c.nf.mark("test loss", s);
  };
  record(0);
  for (Index s = 0; s < cfg.steps && !c.nf.failed; ++s) {
    poll(cfg.stop);
    net.gather(train, &batches[static_cast<size_t>(s * B)], B);
    const S loss = net.forward(st.theta);
    net.backward(st.theta, g);
    if (!std::isfinite(static_cast<double>(loss))) c.nf.mark("inner loss", s);
    if (!g.allFinite()) c.nf.mark("inner gradient", s);
    switch (cfg.opt) {
      case InnerOpt::learned:
        opt.step_forward(phi, st.theta, g, st.M, st.V, st.step, Mp, Vp, u);
        st.M.swap(Mp);
        st.V.swap(Vp);
        break;
      case InnerOpt::sgd:
        u = S(cfg.lr) * g;
        break;
      case InnerOpt::adam: {
        const double b1 = 0.9, b2 = 0.999, t = static_cast<double>(s + 1);
        m1 = S(b1) * m1 + S(1 - b1) * g;
        m2 = S(b2) * m2 + S(1 - b2) * g.cwiseAbs2();
        const S c1 = S(1.0 / (1.0 - std::pow(b1, t))), c2 = S(1.0 / (1.0 - std::pow(b2, t)));
        u = (S(cfg.lr) * c1 * m1.array() / ((c2 * m2.array()).sqrt() + S(1e-8))).matrix();
        break;
      }
    }
    if (!u.allFinite()) c.nf.mark("update", s);
    st.theta -= u;
    ++st.step;
    if ((s + 1) % cfg.every == 0 || s + 1 == cfg.steps) record(s + 1);
  }
  c.theta = st.theta;
  return c;
}

// ---------------------------------------------------------------- meta-training
struct MetaConfig {
  Estimator estimator = Estimator::first_order;
  bool on_valid = false;          // TbV (meta-loss on the validation split) or TbT
  Index n_train = 200, n_valid = 0;  // rows per task drawn from the pool
  Index batch = 32, meta_batch = 128;
  double trunc_base = 10, trunc_mean = 30;  // truncations per task: base + Exp(mean)
  double len_base = 50, len_mean = 100;     // steps per truncation: base + Exp(mean)
  Index max_len = 0;                        // cap on steps per truncation (0: none)
  double lr = 1e-2, rms_decay = 0.9, rms_eps = 1e-8, clip = 1e4;
  bool rms_bias_correction = true;
  Index es_pairs = 8;
  double es_sigma = 0.01;
  std::uint64_t seed = 0;
};

struct MetaRecord {
  std::int64_t meta_step, task, length, inner_step0, clipped;
  double meta_loss, grad_norm, final_train_loss;
  bool finite;
  std::string nonfinite_quantity;
  std::int64_t nonfinite_step;
};

// Meta-training state: the optimizer weights φ, RMSProp's accumulator, the current task (a
// random subset of the pool, with its own network initialization) and its inner state.
template <class S>
class MetaTrainer {
 public:
  MetaTrainer(const Layout& lay, Dataset<S> pool, const MetaConfig& cfg, Vec<S> phi0)
      : lay_(lay), pool_(std::move(pool)), cfg_(cfg), phi_(std::move(phi0)), unroller_(lay), rng_(cfg.seed) {
    check_dataset(pool_, lay_, "pool");
    if (phi_.size() != kOptParams) throw std::invalid_argument("optimizer weights must have 1090 entries");
    if (cfg_.n_train < 1) throw std::invalid_argument("n_train must be at least 1");
    if (cfg_.n_valid < 0) throw std::invalid_argument("n_valid must be non-negative");
    if (cfg_.on_valid && cfg_.n_valid < 1) throw std::invalid_argument("train-by-validation needs n_valid >= 1");
    if (cfg_.n_train + cfg_.n_valid > pool_.n())
      throw std::invalid_argument("n_train + n_valid exceeds the number of samples in the pool");
    if (!(cfg_.lr > 0) || !(cfg_.clip > 0) || !(cfg_.rms_decay >= 0 && cfg_.rms_decay < 1))
      throw std::invalid_argument("lr and clip must be positive, rms_decay in [0, 1)");
    if (cfg_.len_base < 1 || cfg_.trunc_base < 1 || cfg_.len_mean < 0 || cfg_.trunc_mean < 0)
      throw std::invalid_argument("truncation schedule: bases must be >= 1 and means >= 0");
    rms_ = Vec<S>::Zero(kOptParams);
  }

  // Run k meta-steps (one truncation each); returns their records.
  std::vector<MetaRecord> run(Index k) {
    std::vector<MetaRecord> out;
    for (Index i = 0; i < k; ++i) out.push_back(one());
    return out;
  }
  const Vec<S>& phi() const { return phi_; }
  // Restart from weights phi (e.g. a checkpoint): RMSProp's statistics are reset and the current
  // task is abandoned; the random streams go on (the next tasks are new ones).
  void restart_from(const Vec<S>& phi) {
    if (phi.size() != kOptParams) throw std::invalid_argument("optimizer weights must have 1090 entries");
    phi_ = phi;
    rms_.setZero();
    updates_ = 0;
    left_ = 0;
    ++restarts_;
  }
  std::int64_t restarts() const { return restarts_; }
  std::int64_t clipped_total() const { return clipped_total_; }
  std::int64_t nonfinite_total() const { return nonfinite_total_; }
  std::int64_t meta_steps() const { return meta_step_; }
  std::int64_t tasks() const { return task_; }

 private:
  void new_task() {
    ++task_;
    // a random subset of the pool: partial Fisher–Yates
    std::vector<std::int32_t> perm(static_cast<size_t>(pool_.n()));
    for (Index i = 0; i < pool_.n(); ++i) perm[static_cast<size_t>(i)] = static_cast<std::int32_t>(i);
    const Index need = cfg_.n_train + cfg_.n_valid;
    for (Index j = 0; j < need; ++j) {
      const Index r = j + static_cast<Index>(rng_.below(static_cast<std::uint64_t>(pool_.n() - j)));
      std::swap(perm[static_cast<size_t>(j)], perm[static_cast<size_t>(r)]);
    }
    auto take = [&](Index o, Index n, Dataset<S>& d) {
      d.X.resize(n, pool_.X.cols());
      d.y.resize(static_cast<size_t>(n));
      for (Index j = 0; j < n; ++j) {
        d.X.row(j) = pool_.X.row(perm[static_cast<size_t>(o + j)]);
        d.y[static_cast<size_t>(j)] = pool_.y[static_cast<size_t>(perm[static_cast<size_t>(o + j)])];
      }
    };
    take(0, cfg_.n_train, train_);
    if (cfg_.n_valid > 0) take(cfg_.n_train, cfg_.n_valid, valid_);
    state_ = init_state<S>(lay_, rng_.next());
    left_ = std::max<std::int64_t>(1, std::llround(cfg_.trunc_base + rng_.exponential(cfg_.trunc_mean)));
  }

  MetaRecord one() {
    if (left_ <= 0) new_task();
    --left_;
    Index T = static_cast<Index>(std::llround(cfg_.len_base + rng_.exponential(cfg_.len_mean)));
    if (cfg_.max_len > 0) T = std::min(T, cfg_.max_len);
    T = std::max<Index>(T, 1);
    const Dataset<S>& meta = cfg_.on_valid ? valid_ : train_;
    Truncation<S> tr(train_, meta, T, cfg_.batch, cfg_.meta_batch, rng_.next());
    MetaRecord rec{};
    rec.meta_step = ++meta_step_;
    rec.task = task_;
    rec.length = T;
    rec.inner_step0 = state_.step;
    MetaGrad<S> mg = unroller_.meta_gradient(cfg_.estimator, phi_, tr, state_, cfg_.es_pairs, cfg_.es_sigma,
                                             rng_.next());
    rec.meta_loss = mg.meta_loss;
    rec.final_train_loss = mg.train_losses.empty() ? NAN : mg.train_losses.back();
    rec.finite = !mg.nf.failed && mg.grad.allFinite();
    rec.nonfinite_step = -1;
    if (!rec.finite) {
      // reported and skipped (never replaced by zero); the broken inner run is abandoned
      ++nonfinite_total_;
      rec.nonfinite_quantity = mg.nf.failed ? mg.nf.quantity : "meta-gradient";
      rec.nonfinite_step = mg.nf.step;
      rec.grad_norm = NAN;
      rec.clipped = 0;
      left_ = 0;
      return rec;
    }
    rec.grad_norm = static_cast<double>(mg.grad.norm());
    std::int64_t clipped = 0;
    const S c = S(cfg_.clip);
    for (Index k = 0; k < kOptParams; ++k) {
      if (mg.grad[k] > c) { mg.grad[k] = c; ++clipped; }
      else if (mg.grad[k] < -c) { mg.grad[k] = -c; ++clipped; }
    }
    rec.clipped = clipped;
    clipped_total_ += clipped;
    const S rho = S(cfg_.rms_decay);
    rms_ = rho * rms_ + (S(1) - rho) * mg.grad.cwiseAbs2();
    ++updates_;
    // bias-corrected second-moment estimate (as in Adam): the first steps are lr·g/|g|, not
    // lr·g/(sqrt(1−ρ)|g|) ≈ 3.2·lr, which threw the first meta-steps into divergent inner runs
    const S corr = cfg_.rms_bias_correction
                       ? S(1) / (S(1) - S(std::pow(static_cast<double>(cfg_.rms_decay), static_cast<double>(updates_))))
                       : S(1);
    phi_.array() -= S(cfg_.lr) * mg.grad.array() / ((corr * rms_.array()).sqrt() + S(cfg_.rms_eps));
    if (!state_.theta.allFinite()) left_ = 0;
    return rec;
  }

  Layout lay_;
  Dataset<S> pool_, train_, valid_;
  MetaConfig cfg_;
  Vec<S> phi_, rms_;
  Unroller<S> unroller_;
  Rng rng_;
  InnerState<S> state_;
  std::int64_t left_ = 0, task_ = 0, meta_step_ = 0, clipped_total_ = 0, nonfinite_total_ = 0, updates_ = 0, restarts_ = 0;
};

}  // namespace metastep::nn
