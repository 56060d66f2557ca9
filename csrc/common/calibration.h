#pragma once
// What the choices measured on the user's machine share (common/matmul.cpp, lstm/lstm_ops.cpp,
// group_norm/group_norm_cpu.cpp): shape classes, the table of choices made, and the timing of
// a candidate.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

namespace pynotes {

// The shape-class bound of a size: the smallest power of two >= v (1 for v <= 1).
inline int64_t round_up_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

// The choices of one kind made so far in this process, by shape class; safe to share between
// threads (a measurement runs outside the lock: two threads may measure one class, and the
// first to insert wins).
template <typename Key, typename Choice>
class ChoiceTable {
 public:
  std::optional<Choice> find(const Key& key) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = table_.find(key);
    if (it == table_.end()) return std::nullopt;
    return it->second;
  }
  // The choice kept for key: `choice`, or the one another thread inserted first.
  Choice insert(const Key& key, const Choice& choice) {
    std::lock_guard<std::mutex> lock(mutex_);
    return table_.emplace(key, choice).first->second;
  }
  std::vector<Choice> all() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<Choice> out;
    for (const auto& kv : table_) out.push_back(kv.second);
    return out;
  }

 private:
  mutable std::mutex mutex_;
  std::map<Key, Choice> table_;
};

// Seconds one call of f takes.
template <typename F>
double seconds_of(const F& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Seconds of the fastest of `runs` calls of f.
template <typename F>
double fastest_of(int runs, const F& f) {
  double best = 1e300;
  for (int run = 0; run < runs; ++run) best = std::min(best, seconds_of(f));
  return best;
}

// Seconds of the fastest of `runs` calls of f, after one warm-up call.
template <typename F>
double best_seconds(int runs, const F& f) {
  f();
  return fastest_of(runs, f);
}

// The fastest of as many timed calls of f as budget_seconds allows (min_runs to max_runs),
// judged by a first, warm-up call: short candidates get more runs, which also carries them
// past a process's start-up state (fresh pages, threads not yet spinning) that lasts several
// calls.
template <typename F>
double best_seconds_within(double budget_seconds, int min_runs, int max_runs, const F& f) {
  const double first = seconds_of(f);
  const int runs = static_cast<int>(
      std::clamp(budget_seconds / std::max(first, 1e-9), double(min_runs), double(max_runs)));
  return fastest_of(runs, f);
}

}  // namespace pynotes
