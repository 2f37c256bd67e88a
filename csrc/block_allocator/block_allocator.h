// BlockAllocator: the pool of KV pages behind surge's paged cache.
//
// In: page counts (allocate), page ids (free, touch), full pages of token ids
// with their chained hashes (register, find_prefix).
// Out: page ids, reference counts, the pages that already hold a prefix, and
// counters (stats).
//
// Page 0 is the reserved null page: never handed out, never freed. Every other
// page is, at all times, exactly one of
//   in use  - ref count > 0, not in the free queue;
//   free    - ref count 0, in the free queue. A free page that still holds a
//             registered hash is "cached": a later request can take it back
//             (touch) until allocate() pops it and evicts the registration.
// At most max_cached_pages pages are cached at once (the prefix-cache capacity):
// freeing one more drops the registration of the page cached longest ago and
// moves it to the front of the free queue, a plain free page reused first.
// Cached pages are also kept, oldest first, on a second intrusive list so that
// this eviction is O(1).
// The free queue is an intrusive doubly linked list (prev/next arrays indexed
// by page id, circular through a sentinel slot), so push-back, pop-front and
// remove-from-the-middle are O(1) and allocate nothing.
//
// Every mutating call validates its whole input before changing anything, so
// a call that throws leaves the allocator as it was. std::invalid_argument
// (bad value) and std::out_of_range (bad page id) become Python ValueError and
// IndexError; check_integrity() throws std::runtime_error. Not thread-safe:
// one scheduler thread owns it.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

namespace surge {

struct BlockAllocatorStats {
  int64_t num_total_pages;   // usable pages (null page excluded)
  int64_t num_free_pages;    // pages in the free queue, cached ones included
  int64_t num_cached_pages;  // free pages that still hold a registered hash
  int64_t num_used_pages;    // pages with ref count > 0
  int64_t num_queried_pages; // full pages find_prefix was asked about
  int64_t num_hit_pages;     // of those, pages it found cached
  int64_t num_evictions;     // registrations dropped because allocate reused the page
  int64_t max_cached_pages;  // the prefix-cache capacity, in pages
  int64_t num_capacity_evictions;  // registrations dropped to keep num_cached_pages <= max_cached_pages
};

class BlockAllocator {
 public:
  // max_cached_pages < 0 means no bound beyond the pool itself.
  BlockAllocator(int64_t num_pages, int64_t page_size, int64_t max_cached_pages = -1);

  // Pops n pages from the front of the free queue (a fresh allocator hands out
  // 1, 2, 3, ...), each with ref count 1. A popped cached page loses its hash.
  std::vector<int32_t> allocate(int64_t n);
  // Drops one reference per listed page, in order; a page reaching 0 joins the
  // back of the free queue and keeps its hash (it becomes cached); then the
  // oldest cached pages lose their hash until the capacity holds.
  void free(const std::vector<int64_t>& pages);
  // Takes one more reference per listed page; a cached page leaves the queue.
  // Touching a free page that holds no hash is refused: its content is gone.
  void touch(const std::vector<int64_t>& pages);

  // Chained hash of one full page: parent is the previous page's hash (0 for
  // the first page), extra_key salts the first page. Deterministic across
  // processes and platforms.
  static uint64_t hash_page(uint64_t parent_hash, const std::vector<int32_t>& token_ids,
                            uint64_t extra_key);
  // Records an in-use page as holding `token_ids` (exactly page_size of them)
  // under `hash`. Returns false and changes nothing if another page already
  // holds that hash; true if registered (or already registered to this page).
  bool register_page(int64_t page, uint64_t hash, const std::vector<int32_t>& token_ids);
  // Walks the hash chain over the full pages of token_ids (at most max_pages
  // of them, all if unset) and returns the pages that hold that prefix,
  // stopping at the first miss. Stored token ids are compared, not just hashes.
  // Takes no references. Pages are the allocator's page_size tokens long.
  std::vector<int32_t> find_prefix(const std::vector<int32_t>& token_ids, uint64_t extra_key,
                                   std::optional<int64_t> max_pages);
  // Drops every hash registration. Refused (returns false, changes nothing)
  // while any page is in use, since live requests would keep hashing onto it.
  bool reset_prefix_cache();

  // Throws std::runtime_error naming the first broken invariant.
  void check_integrity() const;
  BlockAllocatorStats stats() const;

  int32_t ref_count(int64_t page) const;
  std::optional<uint64_t> page_hash(int64_t page) const;
  std::vector<int32_t> ref_counts() const;  // indexed by page id, null page included
  std::vector<int32_t> free_queue() const;  // page ids, front (next to evict) first
  int64_t num_pages() const { return num_pages_; }
  int64_t page_size() const { return page_size_; }
  int64_t num_free_pages() const { return num_free_; }
  int64_t max_cached_pages() const { return max_cached_; }

 private:
  static constexpr int32_t kUnlinked = -1;

  void check_page_id(int64_t page, const char* verb) const;
  bool in_queue(int32_t page) const { return next_[page] != kUnlinked; }
  void push_back(int32_t page);
  void push_front(int32_t page);
  // The list of cached pages, oldest first (links cached_prev_/cached_next_).
  void cache_push_back(int32_t page);
  void cache_unlink(int32_t page);
  void evict_over_capacity();
  int32_t pop_front();
  void unlink(int32_t page);
  void drop_registration(int32_t page);

  int64_t num_pages_;
  int64_t page_size_;
  int32_t sentinel_;  // index num_pages_: the list head/tail anchor
  std::vector<int32_t> prev_;
  std::vector<int32_t> next_;
  std::vector<int32_t> cached_prev_;
  std::vector<int32_t> cached_next_;
  std::vector<int32_t> ref_count_;
  std::vector<uint8_t> has_hash_;
  std::vector<uint64_t> hash_;
  std::vector<int32_t> tokens_;  // page_size_ token ids per page, valid while has_hash_
  std::unordered_map<uint64_t, int32_t> page_by_hash_;

  int64_t num_free_ = 0;
  int64_t num_cached_ = 0;
  int64_t num_queried_ = 0;
  int64_t num_hits_ = 0;
  int64_t num_evictions_ = 0;
  int64_t max_cached_;
  int64_t num_capacity_evictions_ = 0;
};

}  // namespace surge
