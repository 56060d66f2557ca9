// An opt-in cache of large CPU blocks in front of torch's CPU allocator (pynotes.memory).
//
// A freshly mapped block costs a page fault per 4 KiB page on its first write: for a tensor
// beyond the last-level cache that is most of an elementwise op's time (group norm at batch 1,
// an LSTM's per-call workspaces). glibc maps large blocks fresh and unmaps them on free. The
// cache keeps freed blocks of at least min_block_bytes, up to limit_bytes in all, and hands
// them out again for requests of the same size or up to 1/8 smaller, so a loop that allocates
// the same shapes every iteration faults its pages in once.
#pragma once

#include <cstdint>

namespace pynotes {
namespace cpu_cache {

struct Stats {
  bool enabled;
  int64_t limit_bytes;      // most bytes kept in freed blocks
  int64_t min_block_bytes;  // smaller requests go straight to the allocator underneath
  int64_t cached_bytes;     // bytes in freed blocks, ready for reuse
  int64_t cached_blocks;
  int64_t live_blocks;      // blocks handed out and not yet freed
  int64_t hits;             // requests served from the cache
  int64_t misses;           // requests of at least min_block_bytes the cache could not serve
};

// Installs the cache as torch's CPU allocator (or changes its limits when it already is).
// Raises when another allocator of higher priority is installed.
void enable(int64_t limit_bytes, int64_t min_block_bytes);
// Restores the allocator that was in place and frees the cached blocks; blocks still in use
// go back to that allocator when freed.
void disable();
// Frees the cached blocks (the cache stays installed).
void empty();
Stats stats();

}  // namespace cpu_cache
}  // namespace pynotes
