// Ragged paged attention on the CPU, independent of XLA.
//
// In: a PagedAttentionProblem — raw pointers to the new tokens' q [T, H, hd] and
// k, v [T, KV, hd], the paged caches [num_pages, KV, page_size, hd] and the ragged
// metadata of surge/kernels/metadata.py (slot_mapping, positions, cu_q_lens,
// page_table, kv_lens, num_seqs).
// Out: validate_problem() says what is wrong with the metadata, if anything;
// write_new_kv() stores k, v at their slots; attend() fills out [T, H, hd]
// (zeros for padding tokens) reading only the keys each query may see.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace surge::attention {

enum class Storage { kFloat32, kBFloat16 };

inline int64_t storage_bytes(Storage s) { return s == Storage::kFloat32 ? 4 : 2; }

struct PagedAttentionProblem {
  int64_t num_tokens = 0;     // T, padding tokens included
  int64_t num_heads = 0;      // H
  int64_t num_kv_heads = 0;   // KV; H is a multiple of it
  int64_t head_dim = 0;       // hd
  int64_t num_pages = 0;      // pages in each cache, null page 0 included
  int64_t page_size = 0;
  int64_t max_num_seqs = 0;   // S, rows of page_table
  int64_t pages_per_seq = 0;  // P, columns of page_table

  Storage q_storage = Storage::kFloat32;  // q and out
  Storage cache_storage = Storage::kFloat32;  // k, v and both caches
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  void* out = nullptr;

  const int32_t* slot_mapping = nullptr;  // [T]
  const int32_t* positions = nullptr;     // [T]
  const int32_t* cu_q_lens = nullptr;     // [S + 1]
  const int32_t* page_table = nullptr;    // [S, P]
  const int32_t* kv_lens = nullptr;       // [S]
  int64_t num_seqs = 0;

  float scale = 1.0f;
  int64_t sliding_window = 0;  // 0: none
  int64_t attention_chunk = 0;  // 0: none; else a token at position p sees keys >= p / chunk * chunk
  float soft_cap = 0.0f;       // 0: none
};

// Empty when the metadata is consistent and every slot and page it names is in the
// cache; otherwise a message naming the offending input, index and value.
std::string validate_problem(const PagedAttentionProblem& p);

// Copies k, v of every token (padding included) into its slot of the caches.
void write_new_kv(const PagedAttentionProblem& p);

// One work item of attend(): (sequence, KV head, block of query tokens).
struct WorkItem {
  int32_t seq;
  int32_t kv_head;
  int32_t token_begin;
  int32_t token_end;
  int64_t cost;  // rows x visible keys, for largest-first ordering
};

// The items of p's sequences, largest first.
std::vector<WorkItem> plan_items(const PagedAttentionProblem& p);

// Fills p.out; the work is split into (sequence, KV head, block of query tokens)
// items that CpuPool::global() (shared with the matmul) runs on its threads,
// through the kernel variant of the instruction set picked at run time (cpu/isa.h).
void attend(const PagedAttentionProblem& p);

}  // namespace surge::attention
