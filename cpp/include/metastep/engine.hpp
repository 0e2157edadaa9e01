// One entry point per problem type: run the requested mode for each step size of a batch.
#pragma once
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "metagrad/checkpoint.hpp"
#include "metagrad/exact.hpp"
#include "metagrad/exact_fast.hpp"
#include "metagrad/fd.hpp"
#include "metagrad/forward.hpp"
#include "metagrad/reverse.hpp"
#include "metagrad/scaled.hpp"
#include "meta_train.hpp"
#include "sgd.hpp"
#include "trajectory.hpp"

namespace metastep {

enum class Mode { reverse, checkpoint, forward, fd, scaled_forward, scaled_reverse };
inline Mode parse_mode(const std::string& s) {
  if (s == "reverse") return Mode::reverse;
  if (s == "checkpoint") return Mode::checkpoint;
  if (s == "forward") return Mode::forward;
  if (s == "fd") return Mode::fd;
  if (s == "scaled" || s == "scaled_forward") return Mode::scaled_forward;
  if (s == "scaled_reverse") return Mode::scaled_reverse;
  throw std::invalid_argument("unknown iterative mode '" + s + "': expected reverse, checkpoint, forward, fd, scaled, scaled_forward or scaled_reverse");
}

// Problems and precisions served by the batched forward engine (forward_batch).
template <class Problem>
inline constexpr bool batched_forward = false;
template <class S>
inline constexpr bool batched_forward<Quadratic<S>> = kernels::simd_scalar<S>;

template <class Problem, class S = typename Problem::S>
Outcome run_mode(const Problem& p, Mode mode, const StepSizes<S>& eta, const MetaOptions& opt) {
  if (opt.steps < 1) throw std::invalid_argument("steps must be at least 1");
  if (opt.valid && !p.has_valid()) throw std::invalid_argument("on='valid' needs a task with a validation set");
  if constexpr (batched_forward<Problem>) {
    // a constant step size is a batch of one (the same bits as in any batch)
    if (mode == Mode::forward && !eta.schedule) return forward_batch(p, &eta.eta, 1, opt)[0];
    if (mode == Mode::scaled_forward && !eta.schedule) return scaled_forward_batch(p, &eta.eta, 1, opt)[0];
  }
  switch (mode) {
    case Mode::reverse: return reverse_mode(p, eta, opt);
    case Mode::checkpoint: return checkpoint_mode(p, eta, opt);
    case Mode::forward: return forward_mode(p, eta, opt);
    case Mode::fd: return fd_mode(p, eta, opt);
    case Mode::scaled_forward: return scaled_forward(p, eta, opt);
    case Mode::scaled_reverse: return scaled_reverse(p, eta, opt);
  }
  throw std::invalid_argument("unknown mode");
}

// Run fn(i) for i in [0, n) on up to `threads` threads, each taking a contiguous block. Every
// i is computed by the same code whatever the thread count, so results are bit-identical to a
// serial run. The calling thread takes the first block itself and, once done, waits for the
// others while polling `stop` (so that a stop it owns is still checked); a stop makes every
// block end at its next poll. Every thread is joined before the first exception (lowest
// index) is rethrown; if a thread cannot be started, the caller runs that block itself.
template <class Fn>
void parallel_for(size_t n, int threads, Fn&& fn, Stop* stop = nullptr) {
  const size_t nt = std::max<size_t>(1, std::min<size_t>(n, static_cast<size_t>(std::max(1, threads))));
  if (nt <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::vector<std::exception_ptr> errors(nt);
  auto block = [&](size_t k) {
    const size_t lo = n * k / nt, hi = n * (k + 1) / nt;
    try {
      for (size_t i = lo; i < hi; ++i) fn(i);
    } catch (...) {
      errors[k] = std::current_exception();
    }
  };
  std::mutex mu;
  std::condition_variable cv;
  size_t finished = 0;
  std::vector<std::thread> pool;
  pool.reserve(nt - 1);
  size_t k = 1;
  try {
    for (; k < nt; ++k)
      pool.emplace_back([&, k] {
        block(k);
        {
          std::lock_guard<std::mutex> lock(mu);
          ++finished;
        }
        cv.notify_one();
      });
  } catch (const std::system_error&) {
    for (; k < nt; ++k) block(k);  // no more threads to be had: the caller runs the rest
  }
  block(0);
  if (stop) {
    std::unique_lock<std::mutex> lock(mu);
    while (!cv.wait_for(lock, std::chrono::milliseconds(20), [&] { return finished == pool.size(); })) {
      lock.unlock();
      try {
        stop->poll_now();
      } catch (...) {
        if (!errors[0]) errors[0] = std::current_exception();
      }
      lock.lock();
    }
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// Largest number of step sizes the batched forward engine advances together.
inline constexpr size_t kForwardBlock = 64;

// A batch of constant step sizes: the loop lives here, not in Python, spread over threads.
template <class Problem, class S = typename Problem::S>
std::vector<Outcome> run_batch(const Problem& p, Mode mode, const std::vector<S>& etas, const MetaOptions& opt,
                               int threads = 1) {
  if (opt.steps < 1) throw std::invalid_argument("steps must be at least 1");
  std::vector<Outcome> out(etas.size());
  if constexpr (batched_forward<Problem>) {
    if (mode == Mode::forward || mode == Mode::scaled_forward) {
      // blocks of up to kForwardBlock step sizes advance together (one pass over H per step for
      // the whole block); the blocks are shared out between the threads
      const size_t nb = (etas.size() + kForwardBlock - 1) / kForwardBlock;
      const size_t per = nb == 0 ? 0 : (etas.size() + nb - 1) / nb;  // balanced block sizes
      const size_t nblocks = per == 0 ? 0 : (etas.size() + per - 1) / per;
      const size_t nthreads = static_cast<size_t>(std::max(1, threads));
      // with fewer blocks than threads, split further so that every thread has work
      const size_t chunks = std::max(nblocks, std::min(nthreads, etas.size()));
      parallel_for(chunks, threads, [&](size_t k) {
        const size_t lo = etas.size() * k / chunks, hi = etas.size() * (k + 1) / chunks;
        if (hi <= lo) return;
        if (opt.valid && !p.has_valid()) throw std::invalid_argument("on='valid' needs a task with a validation set");
        std::vector<Outcome> part = mode == Mode::forward
                                        ? forward_batch(p, etas.data() + lo, static_cast<Index>(hi - lo), opt)
                                        : scaled_forward_batch(p, etas.data() + lo, static_cast<Index>(hi - lo), opt);
        for (size_t i = lo; i < hi; ++i) out[i] = std::move(part[i - lo]);
      }, opt.stop);
      return out;
    }
  }
  parallel_for(etas.size(), threads, [&](size_t i) {
    StepSizes<S> st;
    st.eta = etas[i];
    out[i] = run_mode(p, mode, st, opt);
  }, opt.stop);
  return out;
}

template <class S>
std::vector<Outcome> exact_batch(const Spectrum<S>& sp, const std::vector<S>& etas, const MetaOptions& opt,
                                 int threads = 1) {
  if (opt.steps < 1) throw std::invalid_argument("steps must be at least 1");
  if (opt.valid && !sp.has_valid) throw std::invalid_argument("on='valid' needs a task with a validation set");
  std::vector<Outcome> out(etas.size());
  parallel_for(etas.size(), threads, [&](size_t i) {
    poll(opt.stop);
    out[i] = exact_outcome(sp, etas[i], opt);
  }, opt.stop);
  return out;
}

inline std::vector<Outcome> exact_fast_batch(const FastSpectrum& sp, const std::vector<double>& etas,
                                             const MetaOptions& opt, int threads = 1) {
  if (opt.steps < 1) throw std::invalid_argument("steps must be at least 1");
  if (opt.valid) throw std::invalid_argument("the unrefined exact mode covers the training loss of a quadratic only");
  std::vector<Outcome> out(etas.size());
  // contiguous blocks per thread, one scratch buffer each
  const size_t nt = std::max<size_t>(1, std::min<size_t>(etas.size(), static_cast<size_t>(std::max(1, threads))));
  parallel_for(nt, static_cast<int>(nt), [&](size_t k) {
    std::vector<double> buf;
    const size_t lo = etas.size() * k / nt, hi = etas.size() * (k + 1) / nt;
    for (size_t i = lo; i < hi; ++i) {
      poll(opt.stop);
      out[i] = exact_fast_outcome(sp, etas[i], opt, buf);
    }
  }, opt.stop);
  return out;
}

}  // namespace metastep
