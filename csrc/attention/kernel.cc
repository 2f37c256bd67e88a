// Ragged paged attention on the CPU (see attention/kernel.h): the parts every instruction
// set shares — checking the metadata, writing the new K/V, planning the work items — and
// attend(), which hands the items to the kernel variant cpu/isa.h picked at run time
// (cpu/kernels/attention.inc).
#include "attention/kernel.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/isa.h"

namespace surge::attention {
namespace {

std::string describe(const char* name, int64_t index, int64_t value) {
  return std::string(name) + "[" + std::to_string(index) + "] = " + std::to_string(value);
}

// Query rows per work item: enough to reuse each K/V page many times, few enough that
// the item's q, accumulators and one K/V page stay in the L1/L2 caches.
int64_t tokens_per_block(int64_t group, int64_t head_dim) {
  int64_t target_rows = std::max<int64_t>(group, 2048 / std::max<int64_t>(head_dim, 1));
  return std::max<int64_t>(1, target_rows / group);
}

void zero_tokens(const PagedAttentionProblem& p, int64_t begin, int64_t end) {
  if (end <= begin) return;
  const int64_t row = p.num_heads * p.head_dim * storage_bytes(p.q_storage);
  std::memset(static_cast<char*>(p.out) + begin * row, 0, (end - begin) * row);
}

}  // namespace

std::vector<WorkItem> plan_items(const PagedAttentionProblem& p) {
  const int64_t group = p.num_heads / p.num_kv_heads;
  const int64_t block = tokens_per_block(group, p.head_dim);
  std::vector<WorkItem> items;
  for (int64_t s = 0; s < p.num_seqs; ++s) {
    const int64_t begin = p.cu_q_lens[s];
    const int64_t end = p.cu_q_lens[s + 1];
    for (int64_t t0 = begin; t0 < end; t0 += block) {
      const int64_t t1 = std::min(end, t0 + block);
      const int64_t last_pos = p.positions[t1 - 1];
      int64_t visible = p.sliding_window > 0 ? std::min<int64_t>(last_pos + 1, p.sliding_window) : last_pos + 1;
      if (p.attention_chunk > 0) visible = std::min<int64_t>(visible, last_pos % p.attention_chunk + 1);
      for (int64_t g = 0; g < p.num_kv_heads; ++g) {
        items.push_back({static_cast<int32_t>(s), static_cast<int32_t>(g), static_cast<int32_t>(t0),
                         static_cast<int32_t>(t1), (t1 - t0) * group * std::max<int64_t>(visible, 1)});
      }
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });
  return items;
}

std::string validate_problem(const PagedAttentionProblem& p) {
  const int64_t num_slots = p.num_pages * p.page_size;
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t slot = p.slot_mapping[t];
    if (slot < 0 || slot >= num_slots) {
      return describe("slot_mapping", t, slot) + " is outside the cache's " + std::to_string(num_slots) +
             " slots (" + std::to_string(p.num_pages) + " pages x page_size " + std::to_string(p.page_size) + ")";
    }
  }
  if (p.num_seqs < 0 || p.num_seqs > p.max_num_seqs) {
    return "num_seqs = " + std::to_string(p.num_seqs) + " is outside [0, " + std::to_string(p.max_num_seqs) +
           "] (the page table has " + std::to_string(p.max_num_seqs) + " rows)";
  }
  const int64_t max_kv_len = p.pages_per_seq * p.page_size;
  for (int64_t s = 0; s < p.num_seqs; ++s) {
    const int64_t begin = p.cu_q_lens[s];
    const int64_t end = p.cu_q_lens[s + 1];
    if (begin < 0 || end < begin || end > p.num_tokens) {
      return "cu_q_lens[" + std::to_string(s) + ":" + std::to_string(s + 2) + "] = [" + std::to_string(begin) + ", " +
             std::to_string(end) + "] is not a non-decreasing range inside the " + std::to_string(p.num_tokens) +
             " tokens";
    }
    const int64_t kv_len = p.kv_lens[s];
    if (kv_len < end - begin || kv_len > max_kv_len) {
      return describe("kv_lens", s, kv_len) + " must cover the sequence's " + std::to_string(end - begin) +
             " new tokens and fit its " + std::to_string(p.pages_per_seq) + " pages of " +
             std::to_string(p.page_size);
    }
    for (int64_t t = begin; t < end; ++t) {
      if (p.positions[t] < 0 || p.positions[t] >= kv_len) {
        return describe("positions", t, p.positions[t]) + " is outside [0, kv_lens[" + std::to_string(s) +
               "] = " + std::to_string(kv_len) + ")";
      }
    }
    const int64_t used_pages = (kv_len + p.page_size - 1) / p.page_size;
    for (int64_t i = 0; i < used_pages; ++i) {
      const int64_t page = p.page_table[s * p.pages_per_seq + i];
      if (page < 0 || page >= p.num_pages) {
        return "page_table[" + std::to_string(s) + ", " + std::to_string(i) + "] = " + std::to_string(page) +
               " is not a page id (the cache has " + std::to_string(p.num_pages) + " pages)";
      }
    }
  }
  return {};
}

void write_new_kv(const PagedAttentionProblem& p) {
  const int64_t row_bytes = p.head_dim * storage_bytes(p.cache_storage);
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t page = p.slot_mapping[t] / p.page_size;
    const int64_t offset = p.slot_mapping[t] % p.page_size;
    for (int64_t g = 0; g < p.num_kv_heads; ++g) {
      const int64_t dst = ((page * p.num_kv_heads + g) * p.page_size + offset) * row_bytes;
      const int64_t src = (t * p.num_kv_heads + g) * row_bytes;
      std::memcpy(static_cast<char*>(p.k_cache) + dst, static_cast<const char*>(p.k) + src, row_bytes);
      std::memcpy(static_cast<char*>(p.v_cache) + dst, static_cast<const char*>(p.v) + src, row_bytes);
    }
  }
}

void attend(const PagedAttentionProblem& p) {
  if (p.num_seqs == 0) {
    zero_tokens(p, 0, p.num_tokens);
    return;
  }
  zero_tokens(p, 0, p.cu_q_lens[0]);
  zero_tokens(p, p.cu_q_lens[p.num_seqs], p.num_tokens);
  cpu::kernels().attend(p);
}

}  // namespace surge::attention
