#include "common/cpu_cache.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <iterator>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace pynotes {
namespace cpu_cache {
namespace {

class BlockCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!enabled_ || n < min_block_) {
      c10::Allocator* inner = inner_;
      lock.unlock();
      return pass_through(inner->allocate(n));
    }
    // The smallest free block that fits, if it is at most 1/8 larger than asked for.
    auto it = free_.lower_bound(n);
    c10::DataPtr block;
    size_t capacity = n;
    if (it != free_.end() && it->first <= n + n / 8) {
      capacity = it->first;
      block = std::move(it->second);
      free_.erase(it);
      cached_bytes_ -= capacity;
      ++hits_;
    } else {
      ++misses_;
      c10::Allocator* inner = inner_;
      lock.unlock();  // the allocation may fault in pages: not under the lock
      block = inner->allocate(n);
      lock.lock();
    }
    void* ptr = block.get();
    live_.emplace(ptr, Live{capacity, std::move(block)});
    // context == data: a "simple" DataPtr, as torch's own CPU allocator makes.
    return {ptr, ptr, &release, c10::Device(c10::DeviceType::CPU)};
  }

  // Every block this allocator hands out is freed through release (raw_allocate /
  // raw_deallocate work, as oneDNN's RNN uses them), when the allocator underneath has a raw
  // deleter for the blocks it passes through.
  c10::DeleterFnPtr raw_deleter() const override { return inner_raw_ ? &release : nullptr; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void enable(int64_t limit_bytes, int64_t min_block_bytes) {
    TORCH_CHECK(limit_bytes >= 0, "pynotes.memory: limit_bytes must be >= 0, got ", limit_bytes);
    TORCH_CHECK(min_block_bytes >= 1, "pynotes.memory: min_block_bytes must be >= 1, got ",
                min_block_bytes);
    std::unique_lock<std::mutex> lock(mutex_);
    limit_ = static_cast<size_t>(limit_bytes);
    min_block_ = static_cast<size_t>(min_block_bytes);
    if (!enabled_) {
      c10::Allocator* current = c10::GetCPUAllocator();
      c10::SetCPUAllocator(this, /*priority=*/0);  // the default allocator's priority
      TORCH_CHECK(c10::GetCPUAllocator() == this,
                  "pynotes.memory: another CPU allocator of higher priority is installed");
      inner_ = current;
      inner_raw_ = current->raw_deleter();
      enabled_ = true;
    }
    evict_to(limit_, lock);
  }

  void disable() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!enabled_) return;
    c10::SetCPUAllocator(inner_, /*priority=*/0);
    enabled_ = false;
    evict_to(0, lock);
  }

  void empty() {
    std::unique_lock<std::mutex> lock(mutex_);
    evict_to(0, lock);
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {enabled_,
            static_cast<int64_t>(limit_),
            static_cast<int64_t>(min_block_),
            static_cast<int64_t>(cached_bytes_),
            static_cast<int64_t>(free_.size()),
            static_cast<int64_t>(live_.size()),
            hits_,
            misses_};
  }

  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();  // never destroyed: blocks outlive exit order
    return *cache;
  }

 private:
  struct Live {
    size_t capacity;
    c10::DataPtr block;  // from inner_, freed through it
  };

  // A block too small to cache: from the allocator underneath, handed out with release as
  // its deleter (see raw_deleter), which frees it through that allocator's raw deleter.
  c10::DataPtr pass_through(c10::DataPtr block) {
    if (inner_raw_ == nullptr || block.get() != block.get_context()) return block;
    void* ptr = block.release_context();
    return {ptr, ptr, &release, c10::Device(c10::DeviceType::CPU)};
  }

  static void release(void* ptr) { instance().put_back(ptr); }

  void put_back(void* ptr) {
    std::unique_lock<std::mutex> lock(mutex_);
    auto it = live_.find(ptr);
    if (it == live_.end()) {  // passed through
      c10::DeleterFnPtr inner_raw = inner_raw_;
      lock.unlock();
      inner_raw(ptr);
      return;
    }
    Live live = std::move(it->second);
    live_.erase(it);
    if (enabled_ && live.capacity <= limit_) {
      free_.emplace(live.capacity, std::move(live.block));
      cached_bytes_ += live.capacity;
      evict_to(limit_, lock);
    } else {
      lock.unlock();
      live.block.clear();  // back to the allocator underneath
    }
  }

  // Frees the largest cached blocks until at most `bytes` stay cached; the blocks are freed
  // after the lock is released.
  void evict_to(size_t bytes, std::unique_lock<std::mutex>& lock) {
    std::vector<c10::DataPtr> dropped;
    while (cached_bytes_ > bytes) {
      auto last = std::prev(free_.end());
      cached_bytes_ -= last->first;
      dropped.push_back(std::move(last->second));
      free_.erase(last);
    }
    lock.unlock();
    dropped.clear();
  }

  std::mutex mutex_;
  bool enabled_ = false;
  c10::Allocator* inner_ = nullptr;
  c10::DeleterFnPtr inner_raw_ = nullptr;  // inner_'s raw deleter, if it has one
  size_t limit_ = 0;
  size_t min_block_ = 0;
  size_t cached_bytes_ = 0;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
  std::multimap<size_t, c10::DataPtr> free_;  // by capacity
  std::unordered_map<void*, Live> live_;
};

}  // namespace

void enable(int64_t limit_bytes, int64_t min_block_bytes) {
  BlockCache::instance().enable(limit_bytes, min_block_bytes);
}
void disable() { BlockCache::instance().disable(); }
void empty() { BlockCache::instance().empty(); }
Stats stats() { return BlockCache::instance().stats(); }

}  // namespace cpu_cache
}  // namespace pynotes
