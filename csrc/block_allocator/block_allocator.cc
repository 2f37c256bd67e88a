// BlockAllocator implementation: free queue, reference counts, prefix-hash
// table and the integrity check. See block_allocator/block_allocator.h for the contract.
#include "block_allocator/block_allocator.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

namespace surge {
namespace {

// 64-bit multiply-rotate mixing in the style of xxHash64 (one lane).
constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kPrime3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kPrime5 = 0x27D4EB2F165667C5ULL;

uint64_t rotate_left(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

uint64_t mix_in(uint64_t acc, uint64_t value) {
  acc += value * kPrime2;
  acc = rotate_left(acc, 31);
  return acc * kPrime1;
}

uint64_t avalanche(uint64_t h) {
  h ^= h >> 33;
  h *= kPrime2;
  h ^= h >> 29;
  h *= kPrime3;
  h ^= h >> 32;
  return h;
}

std::string page_str(int64_t page) { return "page " + std::to_string(page); }

}  // namespace

BlockAllocator::BlockAllocator(int64_t num_pages, int64_t page_size, int64_t max_cached_pages)
    : num_pages_(num_pages), page_size_(page_size), max_cached_(max_cached_pages) {
  if (num_pages < 2 || num_pages >= std::numeric_limits<int32_t>::max()) {
    throw std::invalid_argument("num_pages=" + std::to_string(num_pages) +
                                " must be in [2, 2^31-1): page 0 is the reserved null page");
  }
  if (page_size < 1) {
    throw std::invalid_argument("page_size=" + std::to_string(page_size) + " must be >= 1");
  }
  if (max_cached_ < 0 || max_cached_ > num_pages - 1) max_cached_ = num_pages - 1;
  sentinel_ = static_cast<int32_t>(num_pages);
  prev_.assign(num_pages + 1, kUnlinked);
  next_.assign(num_pages + 1, kUnlinked);
  prev_[sentinel_] = next_[sentinel_] = sentinel_;
  cached_prev_.assign(num_pages + 1, kUnlinked);
  cached_next_.assign(num_pages + 1, kUnlinked);
  cached_prev_[sentinel_] = cached_next_[sentinel_] = sentinel_;
  ref_count_.assign(num_pages, 0);
  has_hash_.assign(num_pages, 0);
  hash_.assign(num_pages, 0);
  tokens_.assign(static_cast<size_t>(num_pages) * page_size, 0);
  for (int32_t page = 1; page < num_pages; ++page) push_back(page);
}

void BlockAllocator::check_page_id(int64_t page, const char* verb) const {
  if (page < 0 || page >= num_pages_) {
    throw std::out_of_range(std::string("cannot ") + verb + " " + page_str(page) +
                            ": page ids are in [0, " + std::to_string(num_pages_) + ")");
  }
  if (page == 0) {
    throw std::invalid_argument(std::string("cannot ") + verb +
                                " page 0: it is the reserved null page");
  }
}

void BlockAllocator::push_back(int32_t page) {
  int32_t last = prev_[sentinel_];
  prev_[page] = last;
  next_[page] = sentinel_;
  next_[last] = page;
  prev_[sentinel_] = page;
  ++num_free_;
}

void BlockAllocator::push_front(int32_t page) {
  int32_t first = next_[sentinel_];
  next_[page] = first;
  prev_[page] = sentinel_;
  prev_[first] = page;
  next_[sentinel_] = page;
  ++num_free_;
}

void BlockAllocator::cache_push_back(int32_t page) {
  int32_t last = cached_prev_[sentinel_];
  cached_prev_[page] = last;
  cached_next_[page] = sentinel_;
  cached_next_[last] = page;
  cached_prev_[sentinel_] = page;
  ++num_cached_;
}

void BlockAllocator::cache_unlink(int32_t page) {
  cached_next_[cached_prev_[page]] = cached_next_[page];
  cached_prev_[cached_next_[page]] = cached_prev_[page];
  cached_prev_[page] = cached_next_[page] = kUnlinked;
  --num_cached_;
}

void BlockAllocator::evict_over_capacity() {
  while (num_cached_ > max_cached_) {
    int32_t oldest = cached_next_[sentinel_];
    cache_unlink(oldest);
    drop_registration(oldest);
    ++num_capacity_evictions_;
    // Now a plain free page: reuse it before any page that still caches a prefix.
    unlink(oldest);
    push_front(oldest);
  }
}

int32_t BlockAllocator::pop_front() {
  int32_t page = next_[sentinel_];
  unlink(page);
  return page;
}

void BlockAllocator::unlink(int32_t page) {
  next_[prev_[page]] = next_[page];
  prev_[next_[page]] = prev_[page];
  prev_[page] = next_[page] = kUnlinked;
  --num_free_;
}

void BlockAllocator::drop_registration(int32_t page) {
  page_by_hash_.erase(hash_[page]);
  has_hash_[page] = 0;
  hash_[page] = 0;
}

std::vector<int32_t> BlockAllocator::allocate(int64_t n) {
  if (n < 0) throw std::invalid_argument("cannot allocate n=" + std::to_string(n) + " pages: n must be >= 0");
  if (n > num_free_) {
    throw std::invalid_argument("cannot allocate n=" + std::to_string(n) + " pages: only " +
                                std::to_string(num_free_) + " are free");
  }
  std::vector<int32_t> pages;
  pages.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    int32_t page = pop_front();
    if (has_hash_[page]) {
      cache_unlink(page);
      drop_registration(page);
      ++num_evictions_;
    }
    ref_count_[page] = 1;
    pages.push_back(page);
  }
  return pages;
}

void BlockAllocator::free(const std::vector<int64_t>& pages) {
  // Count the references this call drops per page first, so that a page listed
  // more often than it is held is refused before anything changes.
  std::unordered_map<int64_t, int64_t> num_drops;
  for (int64_t page : pages) {
    check_page_id(page, "free");
    int64_t drops = ++num_drops[page];
    if (drops > ref_count_[page]) {
      throw std::invalid_argument("cannot free " + page_str(page) + ": its ref count is " +
                                  std::to_string(ref_count_[page]) +
                                  (ref_count_[page] == 0 ? " (double free)" : " and it is listed more often"));
    }
  }
  for (int64_t page : pages) {
    if (--ref_count_[page] == 0) {
      push_back(static_cast<int32_t>(page));
      if (has_hash_[page]) cache_push_back(static_cast<int32_t>(page));
    }
  }
  evict_over_capacity();
}

void BlockAllocator::touch(const std::vector<int64_t>& pages) {
  for (int64_t page : pages) {
    check_page_id(page, "touch");
    if (ref_count_[page] == 0 && !has_hash_[page]) {
      throw std::invalid_argument("cannot touch " + page_str(page) +
                                  ": it is free and holds no cached content");
    }
  }
  for (int64_t page : pages) {
    if (ref_count_[page]++ == 0) {
      unlink(static_cast<int32_t>(page));
      cache_unlink(static_cast<int32_t>(page));
    }
  }
}

uint64_t BlockAllocator::hash_page(uint64_t parent_hash, const std::vector<int32_t>& token_ids,
                                   uint64_t extra_key) {
  uint64_t h = kPrime5 ^ (static_cast<uint64_t>(token_ids.size()) * kPrime1);
  h = mix_in(h, parent_hash);
  h = mix_in(h, extra_key);
  for (int32_t token : token_ids) h = mix_in(h, static_cast<uint32_t>(token));
  return avalanche(h);
}

bool BlockAllocator::register_page(int64_t page, uint64_t hash, const std::vector<int32_t>& token_ids) {
  check_page_id(page, "register");
  if (static_cast<int64_t>(token_ids.size()) != page_size_) {
    throw std::invalid_argument("cannot register " + page_str(page) + " with " +
                                std::to_string(token_ids.size()) + " token ids: a full page holds " +
                                std::to_string(page_size_));
  }
  if (ref_count_[page] == 0) {
    throw std::invalid_argument("cannot register " + page_str(page) + ": it is free, not in use");
  }
  if (has_hash_[page]) {
    if (hash_[page] == hash) return true;
    throw std::invalid_argument("cannot register " + page_str(page) + " under hash " + std::to_string(hash) +
                                ": it already holds hash " + std::to_string(hash_[page]));
  }
  if (page_by_hash_.count(hash)) return false;
  page_by_hash_.emplace(hash, static_cast<int32_t>(page));
  has_hash_[page] = 1;
  hash_[page] = hash;
  std::copy(token_ids.begin(), token_ids.end(), tokens_.begin() + page * page_size_);
  return true;
}

std::vector<int32_t> BlockAllocator::find_prefix(const std::vector<int32_t>& token_ids, uint64_t extra_key,
                                                 std::optional<int64_t> max_pages) {
  if (max_pages && *max_pages < 0) {
    throw std::invalid_argument("find_prefix max_pages=" + std::to_string(*max_pages) + " must be >= 0");
  }
  int64_t num_full = static_cast<int64_t>(token_ids.size()) / page_size_;
  int64_t num_queried = max_pages ? std::min(num_full, *max_pages) : num_full;
  num_queried_ += num_queried;

  std::vector<int32_t> pages;
  uint64_t parent = 0;
  std::vector<int32_t> page_tokens(page_size_);
  for (int64_t i = 0; i < num_queried; ++i) {
    auto first = token_ids.begin() + i * page_size_;
    std::copy(first, first + page_size_, page_tokens.begin());
    uint64_t hash = hash_page(parent, page_tokens, i == 0 ? extra_key : 0);
    auto found = page_by_hash_.find(hash);
    if (found == page_by_hash_.end()) break;
    int32_t page = found->second;
    if (!std::equal(page_tokens.begin(), page_tokens.end(), tokens_.begin() + int64_t{page} * page_size_)) break;
    pages.push_back(page);
    parent = hash;
  }
  num_hits_ += static_cast<int64_t>(pages.size());
  return pages;
}

bool BlockAllocator::reset_prefix_cache() {
  if (num_free_ != num_pages_ - 1) return false;
  page_by_hash_.clear();
  std::fill(has_hash_.begin(), has_hash_.end(), 0);
  std::fill(hash_.begin(), hash_.end(), 0);
  std::fill(cached_prev_.begin(), cached_prev_.end(), kUnlinked);
  std::fill(cached_next_.begin(), cached_next_.end(), kUnlinked);
  cached_prev_[sentinel_] = cached_next_[sentinel_] = sentinel_;
  num_cached_ = 0;
  return true;
}

void BlockAllocator::check_integrity() const {
  auto fail = [](const std::string& what) { throw std::runtime_error("BlockAllocator integrity: " + what); };

  if (ref_count_[0] != 0 || in_queue(0) || has_hash_[0]) fail("the null page 0 is in use, queued or hashed");

  // Walk the queue both ways; a step bound catches cycles that skip the sentinel.
  std::vector<uint8_t> seen(num_pages_, 0);
  int64_t num_forward = 0;
  for (int32_t page = next_[sentinel_]; page != sentinel_; page = next_[page]) {
    if (page <= 0 || page >= num_pages_) fail("free queue links to invalid page " + std::to_string(page));
    if (seen[page]) fail("free queue visits " + page_str(page) + " twice");
    if (prev_[next_[page]] != page) fail("free queue: next of " + page_str(page) + " does not link back to it");
    seen[page] = 1;
    ++num_forward;
  }
  int64_t num_backward = 0;
  for (int32_t page = prev_[sentinel_]; page != sentinel_; page = prev_[page]) {
    if (page <= 0 || page >= num_pages_ || !seen[page] || ++num_backward > num_forward) {
      fail("free queue walked backwards differs from forwards at " + page_str(page));
    }
  }
  if (num_forward != num_backward || num_forward != num_free_) {
    fail("free queue holds " + std::to_string(num_forward) + " pages forwards, " + std::to_string(num_backward) +
         " backwards, but num_free is " + std::to_string(num_free_));
  }

  int64_t num_cached = 0;
  for (int32_t page = 1; page < num_pages_; ++page) {
    if (ref_count_[page] < 0) fail(page_str(page) + " has negative ref count " + std::to_string(ref_count_[page]));
    bool is_free = ref_count_[page] == 0;
    if (is_free != bool(seen[page])) {
      fail(page_str(page) + " has ref count " + std::to_string(ref_count_[page]) +
           (seen[page] ? " but sits in the free queue" : " but is not in the free queue"));
    }
    if (in_queue(page) != bool(seen[page])) fail(page_str(page) + " has stale queue links");
    if (has_hash_[page]) {
      auto found = page_by_hash_.find(hash_[page]);
      if (found == page_by_hash_.end() || found->second != page) {
        fail(page_str(page) + " holds hash " + std::to_string(hash_[page]) + " that the table does not map to it");
      }
      if (is_free) ++num_cached;
    }
  }
  for (const auto& [hash, page] : page_by_hash_) {
    if (page <= 0 || page >= num_pages_ || !has_hash_[page] || hash_[page] != hash) {
      fail("hash " + std::to_string(hash) + " maps to " + page_str(page) + " which does not hold it");
    }
  }
  if (num_cached != num_cached_) {
    fail(std::to_string(num_cached) + " free pages hold a hash but num_cached is " + std::to_string(num_cached_));
  }
  if (num_cached_ > max_cached_) {
    fail(std::to_string(num_cached_) + " cached pages exceed the capacity of " + std::to_string(max_cached_));
  }
  // The cached list holds exactly the free pages with a hash, each once, linked both ways.
  int64_t num_listed = 0;
  for (int32_t page = cached_next_[sentinel_]; page != sentinel_; page = cached_next_[page]) {
    if (page <= 0 || page >= num_pages_) fail("cached list links to invalid page " + std::to_string(page));
    if (++num_listed > num_cached_) fail("cached list is longer than num_cached or has a cycle");
    if (!has_hash_[page] || ref_count_[page] != 0) fail(page_str(page) + " is on the cached list but not cached");
    if (cached_prev_[cached_next_[page]] != page) fail("cached list: next of " + page_str(page) + " does not link back");
  }
  if (num_listed != num_cached_) {
    fail("cached list holds " + std::to_string(num_listed) + " pages but num_cached is " + std::to_string(num_cached_));
  }
}

BlockAllocatorStats BlockAllocator::stats() const {
  return BlockAllocatorStats{num_pages_ - 1, num_free_, num_cached_, num_pages_ - 1 - num_free_, num_queried_,
                             num_hits_, num_evictions_, max_cached_, num_capacity_evictions_};
}

int32_t BlockAllocator::ref_count(int64_t page) const {
  if (page < 0 || page >= num_pages_) {
    throw std::out_of_range(page_str(page) + " is out of range [0, " + std::to_string(num_pages_) + ")");
  }
  return ref_count_[page];
}

std::optional<uint64_t> BlockAllocator::page_hash(int64_t page) const {
  if (page < 0 || page >= num_pages_) {
    throw std::out_of_range(page_str(page) + " is out of range [0, " + std::to_string(num_pages_) + ")");
  }
  if (!has_hash_[page]) return std::nullopt;
  return hash_[page];
}

std::vector<int32_t> BlockAllocator::ref_counts() const { return ref_count_; }

std::vector<int32_t> BlockAllocator::free_queue() const {
  std::vector<int32_t> pages;
  pages.reserve(num_free_);
  for (int32_t page = next_[sentinel_]; page != sentinel_; page = next_[page]) pages.push_back(page);
  return pages;
}

}  // namespace surge
