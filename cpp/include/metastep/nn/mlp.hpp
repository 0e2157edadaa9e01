// Inner model of the learned-optimizer experiments (SPEC §7): a fully connected ReLU network
// with a softmax cross-entropy loss, parameters in one flat vector (per layer: W (in x out,
// row-major), then b (out)). Forward, backward and the exact Hessian-vector product
// (Pearlmutter's R-operator: a forward tangent pass followed by the differentiated backward
// pass) on a minibatch. Header-only, no Python.
#pragma once
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../sgd.hpp"
#include "../types.hpp"

namespace metastep::nn {

template <class S>
using MatR = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Counter-free deterministic random numbers on top of the project's SplitMix64.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : g_(seed ^ 0x6a09e667f3bcc909ULL) {}
  double uniform() { return static_cast<double>(g_.next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double normal() {
    if (have_) {
      have_ = false;
      return spare_;
    }
    double u1;
    do u1 = uniform(); while (u1 <= 0.0);
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1)), th = 6.283185307179586 * u2;
    spare_ = r * std::sin(th);
    have_ = true;
    return r * std::cos(th);
  }
  double exponential(double mean) {
    double u;
    do u = uniform(); while (u <= 0.0);
    return -mean * std::log(u);
  }
  std::uint64_t below(std::uint64_t m) { return g_.below(m); }
  std::uint64_t next() { return g_.next(); }

 private:
  SplitMix64 g_;
  bool have_ = false;
  double spare_ = 0.0;
};

// Layer sizes (input, hidden..., classes) and where each tensor sits in the flat vector.
struct Layout {
  std::vector<Index> sizes;
  std::vector<Index> w_off, b_off;
  std::vector<std::pair<Index, Index>> tensors;  // (offset, length) of every W and b
  Index n_params = 0;

  explicit Layout(std::vector<Index> s) : sizes(std::move(s)) {
    if (sizes.size() < 2) throw std::invalid_argument("layer sizes need at least an input and an output size");
    for (auto v : sizes)
      if (v < 1) throw std::invalid_argument("every layer size must be at least 1");
    if (sizes.back() < 2) throw std::invalid_argument("the output layer needs at least 2 classes");
    Index o = 0;
    for (size_t l = 0; l + 1 < sizes.size(); ++l) {
      w_off.push_back(o);
      tensors.emplace_back(o, sizes[l] * sizes[l + 1]);
      o += sizes[l] * sizes[l + 1];
      b_off.push_back(o);
      tensors.emplace_back(o, sizes[l + 1]);
      o += sizes[l + 1];
    }
    n_params = o;
  }
  Index layers() const { return static_cast<Index>(sizes.size()) - 1; }
  Index inputs() const { return sizes.front(); }
  Index classes() const { return sizes.back(); }
};

// Initialization: W uniform in ±sqrt(6 / (fan_in + fan_out)) (Glorot), biases 0.
template <class S>
Vec<S> init_params(const Layout& lay, std::uint64_t seed) {
  Rng rng(seed);
  Vec<S> th = Vec<S>::Zero(lay.n_params);
  for (Index l = 0; l < lay.layers(); ++l) {
    const Index fi = lay.sizes[l], fo = lay.sizes[l + 1];
    const double a = std::sqrt(6.0 / static_cast<double>(fi + fo));
    for (Index k = 0; k < fi * fo; ++k) th[lay.w_off[l] + k] = S(a * (2.0 * rng.uniform() - 1.0));
  }
  return th;
}

// A labelled data set: rows of X are samples, y in [0, classes).
template <class S>
struct Dataset {
  MatR<S> X;
  std::vector<std::int32_t> y;
  Index n() const { return X.rows(); }
};

template <class S>
void check_dataset(const Dataset<S>& d, const Layout& lay, const char* name) {
  if (d.X.cols() != lay.inputs())
    throw std::invalid_argument(std::string(name) + ": X has " + std::to_string(d.X.cols()) +
                                " columns but the model has " + std::to_string(lay.inputs()) + " inputs");
  if (static_cast<Index>(d.y.size()) != d.X.rows())
    throw std::invalid_argument(std::string(name) + ": X and y have different numbers of samples");
  for (auto c : d.y)
    if (c < 0 || c >= lay.classes())
      throw std::invalid_argument(std::string(name) + ": label out of range [0, classes)");
}

// Network evaluation on one batch, with the intermediate values kept for backward/HVP.
template <class S>
class Net {
 public:
  explicit Net(const Layout& lay) : lay_(lay) {
    const Index L = lay_.layers();
    z_.resize(static_cast<size_t>(L));
    a_.resize(static_cast<size_t>(L + 1));
  }
  const Layout& layout() const { return lay_; }

  // Gather rows idx[0..B) of d into the batch.
  void gather(const Dataset<S>& d, const std::int32_t* idx, Index B) {
    a_[0].resize(B, lay_.inputs());
    yb_.resize(static_cast<size_t>(B));
    for (Index j = 0; j < B; ++j) {
      a_[0].row(j) = d.X.row(idx[j]);
      yb_[static_cast<size_t>(j)] = d.y[static_cast<size_t>(idx[j])];
    }
  }
  void set_batch(const MatR<S>& X, const std::vector<std::int32_t>& y) {
    a_[0] = X;
    yb_ = y;
  }

  // Mean cross-entropy of the current batch; keeps z, a, softmax for backward.
  S forward(const Vec<S>& th) {
    const Index L = lay_.layers(), B = a_[0].rows();
    for (Index l = 0; l < L; ++l) {
      auto W = wmap(th, l);
      auto b = bmap(th, l);
      auto& z = z_[static_cast<size_t>(l)];
      z.noalias() = a_[static_cast<size_t>(l)] * W;
      z.rowwise() += b.transpose();
      if (l + 1 < L) a_[static_cast<size_t>(l + 1)] = z.cwiseMax(S(0));
    }
    const auto& zl = z_[static_cast<size_t>(L - 1)];
    p_.resize(B, lay_.classes());
    S loss = 0;
    correct_ = 0;
    for (Index j = 0; j < B; ++j) {
      Index arg;
      const S mx = zl.row(j).maxCoeff(&arg);
      p_.row(j) = (zl.row(j).array() - mx).exp();
      const S s = p_.row(j).sum();
      p_.row(j) /= s;
      const auto c = yb_[static_cast<size_t>(j)];
      loss += std::log(s) + mx - zl(j, c);
      if (arg == c) ++correct_;
    }
    return loss / S(B);
  }
  Index correct() const { return correct_; }

  // Gradient of the last forward()'s loss.
  void backward(const Vec<S>& th, Vec<S>& g) {
    const Index L = lay_.layers(), B = a_[0].rows();
    g.resize(lay_.n_params);
    delta_ = p_;
    for (Index j = 0; j < B; ++j) delta_(j, yb_[static_cast<size_t>(j)]) -= S(1);
    delta_ /= S(B);
    for (Index l = L - 1; l >= 0; --l) {
      wmap(g, l).noalias() = a_[static_cast<size_t>(l)].transpose() * delta_;
      bmap(g, l) = delta_.colwise().sum().transpose();
      if (l > 0) {
        tmp_.noalias() = delta_ * wmap(th, l).transpose();
        delta_ = tmp_.cwiseProduct((z_[static_cast<size_t>(l - 1)].array() > S(0)).matrix().template cast<S>());
      }
    }
  }

  // Gradient g and Hessian-vector product hv = ∇²L(th)·v of the current batch (after forward()).
  void backward_hvp(const Vec<S>& th, const Vec<S>& v, Vec<S>& g, Vec<S>& hv) {
    const Index L = lay_.layers(), B = a_[0].rows();
    g.resize(lay_.n_params);
    hv.resize(lay_.n_params);
    // R-forward: tangents of z and a along v.
    std::vector<MatR<S>> rz(static_cast<size_t>(L)), ra(static_cast<size_t>(L + 1));
    ra[0] = MatR<S>::Zero(B, lay_.inputs());
    for (Index l = 0; l < L; ++l) {
      auto& r = rz[static_cast<size_t>(l)];
      r.noalias() = a_[static_cast<size_t>(l)] * wmap(v, l);
      if (l > 0) r.noalias() += ra[static_cast<size_t>(l)] * wmap(th, l);
      r.rowwise() += bmap(v, l).transpose();
      if (l + 1 < L) ra[static_cast<size_t>(l + 1)] = r.cwiseProduct(mask(l));
    }
    // softmax-CE: delta = (p - y)/B, R delta = (p ⊙ Rz - p (p·Rz))/B
    delta_ = p_;
    for (Index j = 0; j < B; ++j) delta_(j, yb_[static_cast<size_t>(j)]) -= S(1);
    delta_ /= S(B);
    const auto& rzl = rz[static_cast<size_t>(L - 1)];
    MatR<S> rdelta = p_.cwiseProduct(rzl);
    for (Index j = 0; j < B; ++j) rdelta.row(j) -= p_.row(j) * rdelta.row(j).sum();
    rdelta /= S(B);
    for (Index l = L - 1; l >= 0; --l) {
      const auto& al = a_[static_cast<size_t>(l)];
      wmap(g, l).noalias() = al.transpose() * delta_;
      bmap(g, l) = delta_.colwise().sum().transpose();
      wmap(hv, l).noalias() = al.transpose() * rdelta;
      if (l > 0) wmap(hv, l).noalias() += ra[static_cast<size_t>(l)].transpose() * delta_;
      bmap(hv, l) = rdelta.colwise().sum().transpose();
      if (l > 0) {
        const MatR<S> m = mask(l - 1);
        MatR<S> rd = rdelta * wmap(th, l).transpose();
        rd.noalias() += delta_ * wmap(v, l).transpose();
        tmp_.noalias() = delta_ * wmap(th, l).transpose();
        delta_ = tmp_.cwiseProduct(m);
        rdelta = rd.cwiseProduct(m);
      }
    }
  }

  Eigen::Map<const MatR<S>> wmap(const Vec<S>& th, Index l) const {
    const auto k = static_cast<size_t>(l);
    return Eigen::Map<const MatR<S>>(th.data() + lay_.w_off[k], lay_.sizes[k], lay_.sizes[k + 1]);
  }
  Eigen::Map<MatR<S>> wmap(Vec<S>& th, Index l) const {
    const auto k = static_cast<size_t>(l);
    return Eigen::Map<MatR<S>>(th.data() + lay_.w_off[k], lay_.sizes[k], lay_.sizes[k + 1]);
  }
  Eigen::Map<const Vec<S>> bmap(const Vec<S>& th, Index l) const {
    const auto k = static_cast<size_t>(l);
    return Eigen::Map<const Vec<S>>(th.data() + lay_.b_off[k], lay_.sizes[k + 1]);
  }
  Eigen::Map<Vec<S>> bmap(Vec<S>& th, Index l) const {
    const auto k = static_cast<size_t>(l);
    return Eigen::Map<Vec<S>>(th.data() + lay_.b_off[k], lay_.sizes[k + 1]);
  }

 private:
  MatR<S> mask(Index l) const { return (z_[static_cast<size_t>(l)].array() > S(0)).matrix().template cast<S>(); }
  Layout lay_;
  std::vector<MatR<S>> z_, a_;
  std::vector<std::int32_t> yb_;
  MatR<S> p_, delta_, tmp_;
  Index correct_ = 0;
};

// Loss and accuracy of th on a whole data set (in chunks).
template <class S>
std::pair<double, double> evaluate(Net<S>& net, const Vec<S>& th, const Dataset<S>& d, Index chunk = 512) {
  double loss = 0;
  Index correct = 0;
  std::vector<std::int32_t> idx;
  for (Index s = 0; s < d.n(); s += chunk) {
    const Index B = std::min(chunk, d.n() - s);
    idx.resize(static_cast<size_t>(B));
    for (Index j = 0; j < B; ++j) idx[static_cast<size_t>(j)] = static_cast<std::int32_t>(s + j);
    net.gather(d, idx.data(), B);
    loss += static_cast<double>(net.forward(th)) * static_cast<double>(B);
    correct += net.correct();
  }
  return {loss / static_cast<double>(d.n()), static_cast<double>(correct) / static_cast<double>(d.n())};
}

}  // namespace metastep::nn
