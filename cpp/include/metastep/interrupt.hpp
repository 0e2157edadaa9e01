// Stopping a long computation early (Ctrl-C in Python). Every long loop of the core polls a
// per-call Stop object once per iteration; nothing here is global. The object is made by the
// caller: the thread that made it is its owner, and only there is the (possibly costly) check
// run, at most about every 50 ms of wall time; other threads of the same call only read the
// flag the owner sets. Once set, every poll throws Interrupted, so all threads of a parallel
// run leave within one iteration each and nothing is left running.
#pragma once
#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <thread>
#include <utility>

namespace metastep {

// Thrown by a poll after a stop was requested; the caller turns it back into its own error.
struct Interrupted : std::exception {
  const char* what() const noexcept override { return "computation interrupted"; }
};

class Stop {
 public:
  // check() is called on the owning thread only; true means: stop now.
  explicit Stop(std::function<bool()> check)
      : check_(std::move(check)), owner_(std::this_thread::get_id()), last_read_(Clock::now()), last_check_(last_read_) {}
  Stop(const Stop&) = delete;
  Stop& operator=(const Stop&) = delete;

  // Cheap enough to call once per step of any loop: an atomic load, a thread-id comparison and
  // a countdown. The clock is read every kClockEvery polls while polls come fast, at every poll
  // once they are more than a millisecond apart; the check runs at most every kPeriod.
  void poll() {
    if (requested_.load(std::memory_order_relaxed)) throw Interrupted();
    if (!check_ || std::this_thread::get_id() != owner_) return;
    if (--countdown_ > 0) return;
    const auto now = Clock::now();
    countdown_ = now - last_read_ > std::chrono::milliseconds(1) ? 1 : kClockEvery;
    check_due(now);
  }
  // The same without the countdown, for the owner's waits between pieces of work that do not
  // poll on its thread (waiting for the other threads of a parallel run).
  void poll_now() {
    if (requested_.load(std::memory_order_relaxed)) throw Interrupted();
    if (!check_ || std::this_thread::get_id() != owner_) return;
    check_due(Clock::now());
  }

 private:
  using Clock = std::chrono::steady_clock;
  // Owner only: run the check if kPeriod has passed since the last one; on true, set the flag
  // every thread reads and throw.
  void check_due(Clock::time_point now) {
    last_read_ = now;
    if (now - last_check_ < kPeriod) return;
    last_check_ = now;
    if (check_()) {
      requested_.store(true, std::memory_order_relaxed);
      throw Interrupted();
    }
  }

  static constexpr int kClockEvery = 16;
  static constexpr std::chrono::milliseconds kPeriod{50};
  std::function<bool()> check_;
  std::thread::id owner_;
  std::atomic<bool> requested_{false};
  int countdown_ = 1;  // the first poll reads the clock
  Clock::time_point last_read_, last_check_;
};

// The form the loops use: a null Stop (the default everywhere) costs one comparison.
inline void poll(Stop* stop) {
  if (stop) stop->poll();
}

}  // namespace metastep
