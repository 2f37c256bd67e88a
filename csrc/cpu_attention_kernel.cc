// Ragged paged attention on the CPU (see cpu_attention_kernel.h).
//
// One work item is (sequence s, KV head g, a block of s's query tokens). Its rows are
// every (token, query head of group g) pair, so each K/V row is loaded once for the
// whole GQA group and the whole token block. The item walks only the pages holding
// keys some row may see, scores a tile of whole pages (about 64 keys) at a time into a
// [rows, keys] buffer, masks each row to its own key range, and folds the tile into
// running (max, sum, accumulator) softmax state in float32. Keys outside every row's
// range are never loaded, so free pages and unwritten slots cannot leak into the math.
#include "cpu_attention_kernel.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_pool.h"
#include "cpu_attention_simd.h"

namespace surge::attention {
namespace {

// Keys scored per softmax step (rounded to whole pages, at least one).
constexpr int64_t kKeysPerTile = 64;

struct WorkItem {
  int32_t seq;
  int32_t kv_head;
  int32_t token_begin;
  int32_t token_end;
  int64_t cost;  // rows x visible keys, for largest-first ordering
};

// Per-thread buffers, grown on demand and reused across calls.
struct Scratch {
  std::vector<float> q;       // [rows, hd], scaled
  std::vector<float> acc;     // [rows, hd]
  std::vector<float> scores;  // [rows, keys of a tile]
  std::vector<float> k_rows;  // [keys of one page, hd]: float32 copy of bfloat16 keys
  std::vector<float> v_rows;  // same for values
  std::vector<float> row_max;
  std::vector<float> row_sum;
  std::vector<int64_t> key_lo;  // per token of the block: first visible key position
  std::vector<int64_t> key_hi;  // last visible key position (inclusive)
};

std::string describe(const char* name, int64_t index, int64_t value) {
  return std::string(name) + "[" + std::to_string(index) + "] = " + std::to_string(value);
}

// Query rows per work item: enough to reuse each K/V page many times, few enough that
// the item's q, accumulators and one K/V page stay in the L1/L2 caches.
int64_t tokens_per_block(int64_t group, int64_t head_dim) {
  int64_t target_rows = std::max<int64_t>(group, 2048 / std::max<int64_t>(head_dim, 1));
  return std::max<int64_t>(1, target_rows / group);
}

void load_rows(const void* src, Storage storage, int64_t offset, int64_t count, float* dst) {
  if (storage == Storage::kFloat32) {
    std::memcpy(dst, static_cast<const float*>(src) + offset, count * sizeof(float));
  } else {
    bf16_row_to_f32(static_cast<const uint16_t*>(src) + offset, dst, count);
  }
}

// Float32 view of `count` cache rows starting at element `offset`: the cache itself
// when it stores float32, else a converted copy in `buffer`.
const float* cache_rows(const void* cache, Storage storage, int64_t offset, int64_t count,
                        std::vector<float>& buffer) {
  if (storage == Storage::kFloat32) return static_cast<const float*>(cache) + offset;
  if (static_cast<int64_t>(buffer.size()) < count) buffer.resize(count);
  bf16_row_to_f32(static_cast<const uint16_t*>(cache) + offset, buffer.data(), count);
  return buffer.data();
}

void score_tile(const float* q, int64_t rows, const float* k, int64_t keys, int64_t hd, float* s,
                int64_t stride) {
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) {
    int64_t c = 0;
    for (; c + 4 <= keys; c += 4) dot_tile<2, 4>(q + r * hd, k + c * hd, hd, s + r * stride + c, stride);
    for (; c < keys; ++c) dot_tile<2, 1>(q + r * hd, k + c * hd, hd, s + r * stride + c, stride);
  }
  for (; r < rows; ++r) {
    int64_t c = 0;
    for (; c + 4 <= keys; c += 4) dot_tile<1, 4>(q + r * hd, k + c * hd, hd, s + r * stride + c, stride);
    for (; c < keys; ++c) dot_tile<1, 1>(q + r * hd, k + c * hd, hd, s + r * stride + c, stride);
  }
}

void accumulate_tile(const float* p, int64_t rows, int64_t stride, const float* v, int64_t keys, int64_t hd,
                     float* acc) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) weighted_sum_tile<4>(p + r * stride, stride, v, keys, hd, acc + r * hd, hd);
  switch (rows - r) {
    case 3: weighted_sum_tile<3>(p + r * stride, stride, v, keys, hd, acc + r * hd, hd); break;
    case 2: weighted_sum_tile<2>(p + r * stride, stride, v, keys, hd, acc + r * hd, hd); break;
    case 1: weighted_sum_tile<1>(p + r * stride, stride, v, keys, hd, acc + r * hd, hd); break;
    default: break;
  }
}

// Folds one tile of raw scores [rows, keys] (logical keys first_key ..) into each row's
// running softmax: masks the row to its visible keys, turns the tile into weights
// relative to the new running max, and rescales the row's sum and accumulator when
// the max moved. Rows with no visible key in the tile get all-zero weights.
void fold_scores(const PagedAttentionProblem& p, Scratch& w, int64_t rows, int64_t group, int64_t first_key,
                 int64_t keys, int64_t stride) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    float* s = w.scores.data() + r * stride;
    const int64_t token = r / group;
    const int64_t begin = std::clamp<int64_t>(w.key_lo[token] - first_key, 0, keys);
    const int64_t end = std::clamp<int64_t>(w.key_hi[token] + 1 - first_key, 0, keys);
    if (begin >= end) {
      std::fill(s, s + keys, 0.0f);
      continue;
    }
    if (p.soft_cap > 0.0f) soft_cap_row(s + begin, end - begin, p.soft_cap);
    const float old_max = w.row_max[r];
    const float new_max = std::max(old_max, max_of(s + begin, end - begin));
    const float tile_sum = exp_shifted_sum(s + begin, end - begin, new_max);
    std::fill(s, s + begin, 0.0f);
    std::fill(s + end, s + keys, 0.0f);
    if (old_max != neg_inf && old_max != new_max) {
      const float correction = exp_scalar(old_max - new_max);
      w.row_sum[r] *= correction;
      scale_row(w.acc.data() + r * p.head_dim, p.head_dim, correction);
    }
    w.row_sum[r] += tile_sum;
    w.row_max[r] = new_max;
  }
}

void run_item(const PagedAttentionProblem& p, const WorkItem& item, Scratch& w) {
  const int64_t hd = p.head_dim;
  const int64_t ps = p.page_size;
  const int64_t group = p.num_heads / p.num_kv_heads;
  const int64_t num_tokens = item.token_end - item.token_begin;
  const int64_t rows = num_tokens * group;
  const int64_t kv_len = p.kv_lens[item.seq];
  // Keys are scored a tile of whole pages at a time, so the softmax bookkeeping per row
  // is paid once per tile rather than once per (small) page.
  const int64_t tile_pages = std::max<int64_t>(1, kKeysPerTile / ps);
  const int64_t stride = tile_pages * ps;

  w.q.resize(rows * hd);
  w.acc.assign(rows * hd, 0.0f);
  w.scores.resize(rows * stride);
  w.row_max.assign(rows, -std::numeric_limits<float>::infinity());
  w.row_sum.assign(rows, 0.0f);
  w.key_lo.resize(num_tokens);
  w.key_hi.resize(num_tokens);

  int64_t union_lo = std::numeric_limits<int64_t>::max();
  int64_t union_hi = -1;
  for (int64_t i = 0; i < num_tokens; ++i) {
    const int64_t t = item.token_begin + i;
    // The heads of group g are contiguous in q[t]: one copy per token.
    load_rows(p.q, p.q_storage, (t * p.num_heads + item.kv_head * group) * hd, group * hd, w.q.data() + i * group * hd);
    const int64_t pos = p.positions[t];
    w.key_hi[i] = std::min(pos, kv_len - 1);
    w.key_lo[i] = p.sliding_window > 0 ? std::max<int64_t>(0, pos - p.sliding_window + 1) : 0;
    union_lo = std::min(union_lo, w.key_lo[i]);
    union_hi = std::max(union_hi, w.key_hi[i]);
  }
  scale_row(w.q.data(), rows * hd, p.scale);

  const int32_t* pages = p.page_table + static_cast<int64_t>(item.seq) * p.pages_per_seq;
  // Element offset of logical key `key` of this KV head (inside page number key / ps).
  auto row_offset = [&](int64_t key) {
    return ((pages[key / ps] * p.num_kv_heads + item.kv_head) * ps + key % ps) * hd;
  };
  // A sequence's pages lie anywhere in the cache and each (page, KV head) is one short run
  // of bytes, too short for the hardware prefetchers to pick up: the rows needed next are
  // requested by hand while the current ones are in use (the kernel waited on memory for
  // most of its time without this).
  const int64_t row_bytes = hd * storage_bytes(p.cache_storage);
  auto prefetch = [&](const void* cache, int64_t key) {
    if (key > union_hi) return;
    const int64_t count = std::min(union_hi + 1, (key / ps + 1) * ps) - key;
    const char* first = static_cast<const char*>(cache) + row_offset(key) / hd * row_bytes;
    for (int64_t b = 0; b < count * row_bytes; b += 64) __builtin_prefetch(first + b);
  };
  prefetch(p.k_cache, union_lo);
  prefetch(p.k_cache, (union_lo / ps + 1) * ps);
  for (int64_t tile_first = union_lo; tile_first <= union_hi;) {
    const int64_t tile_end = std::min(union_hi + 1, (tile_first / ps + tile_pages) * ps);
    const int64_t keys = tile_end - tile_first;
    for (int64_t key = tile_first; key < tile_end;) {
      const int64_t count = std::min(tile_end, (key / ps + 1) * ps) - key;
      prefetch(p.v_cache, key);
      prefetch(p.k_cache, key + count + ps);
      const float* k_rows = cache_rows(p.k_cache, p.cache_storage, row_offset(key), count * hd, w.k_rows);
      score_tile(w.q.data(), rows, k_rows, count, hd, w.scores.data() + (key - tile_first), stride);
      key += count;
    }
    fold_scores(p, w, rows, group, tile_first, keys, stride);
    for (int64_t key = tile_first; key < tile_end;) {
      const int64_t count = std::min(tile_end, (key / ps + 1) * ps) - key;
      const float* v_rows = cache_rows(p.v_cache, p.cache_storage, row_offset(key), count * hd, w.v_rows);
      accumulate_tile(w.scores.data() + (key - tile_first), rows, stride, v_rows, count, hd, w.acc.data());
      key += count;
    }
    tile_first = tile_end;
  }

  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = item.token_begin + r / group;
    const int64_t h = item.kv_head * group + r % group;
    const float* acc = w.acc.data() + r * hd;
    const float inv = w.row_sum[r] > 0.0f ? 1.0f / w.row_sum[r] : 0.0f;
    const int64_t out_offset = (t * p.num_heads + h) * hd;
    if (p.q_storage == Storage::kFloat32) {
      float* out = static_cast<float*>(p.out) + out_offset;
      for (int64_t d = 0; d < hd; ++d) out[d] = acc[d] * inv;
    } else {
      uint16_t* out = static_cast<uint16_t*>(p.out) + out_offset;
      for (int64_t d = 0; d < hd; ++d) out[d] = f32_to_bf16(acc[d] * inv);
    }
  }
}

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
      const int64_t visible = p.sliding_window > 0 ? std::min<int64_t>(last_pos + 1, p.sliding_window) : last_pos + 1;
      for (int64_t g = 0; g < p.num_kv_heads; ++g) {
        items.push_back({static_cast<int32_t>(s), static_cast<int32_t>(g), static_cast<int32_t>(t0),
                         static_cast<int32_t>(t1), (t1 - t0) * group * std::max<int64_t>(visible, 1)});
      }
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });
  return items;
}

void zero_tokens(const PagedAttentionProblem& p, int64_t begin, int64_t end) {
  if (end <= begin) return;
  const int64_t row = p.num_heads * p.head_dim * storage_bytes(p.q_storage);
  std::memset(static_cast<char*>(p.out) + begin * row, 0, (end - begin) * row);
}

}  // namespace

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
  const std::vector<WorkItem> items = plan_items(p);
  CpuPool::global().run(static_cast<int64_t>(items.size()), [&](int64_t i) {
    thread_local Scratch scratch;
    run_item(p, items[i], scratch);
  });
}

}  // namespace surge::attention
