// The CPU paged-attention kernel as an XLA FFI target (SurgeCpuPagedAttention).
//
// In (FFI operands, in order): q [T, H, hd], k [T, KV, hd], v [T, KV, hd],
// k_cache and v_cache [num_pages, KV, page_size, hd], slot_mapping [T], positions [T],
// cu_q_lens [S + 1], page_table [S, P], kv_lens [S], num_seqs [] (all int32);
// attributes scale (f32), sliding_window (s32, 0 = none), soft_cap (f32, 0 = none),
// attention_chunk (s32, 0 = none: chunked local attention, keys >= position / chunk * chunk).
// Out: attention [T, H, hd] in q's dtype, then both caches with this step's k, v
// written. The caches are meant to be aliased operand -> result (input_output_aliases),
// so XLA hands the same buffer in and out and the update happens in place.
// bindings/module.cc hands it to Python in surge._C.ffi_targets() (name -> PyCapsule).
#include <cstring>
#include <stdexcept>
#include <string>

#include "attention/kernel.h"
#include "common/pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace surge {
namespace {

using attention::PagedAttentionProblem;
using attention::Storage;

std::string shape_string(ffi::AnyBuffer::Dimensions dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

bool same_dims(ffi::AnyBuffer::Dimensions a, ffi::AnyBuffer::Dimensions b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return false;
  return true;
}

bool storage_of(ffi::DataType type, Storage* storage) {
  if (type == ffi::DataType::F32) *storage = Storage::kFloat32;
  else if (type == ffi::DataType::BF16) *storage = Storage::kBFloat16;
  else return false;
  return true;
}

// Shapes and dtypes of every operand, checked against each other; fills `p`.
ffi::Error describe_problem(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer k_cache,
                            ffi::AnyBuffer v_cache, ffi::Buffer<ffi::S32> slot_mapping,
                            ffi::Buffer<ffi::S32> positions, ffi::Buffer<ffi::S32> cu_q_lens,
                            ffi::Buffer<ffi::S32> page_table, ffi::Buffer<ffi::S32> kv_lens,
                            ffi::Buffer<ffi::S32> num_seqs, PagedAttentionProblem& p) {
  auto qd = q.dimensions();
  auto kd = k.dimensions();
  auto cd = k_cache.dimensions();
  if (qd.size() != 3) return ffi::Error::InvalidArgument("q must be [T, H, hd], got " + shape_string(qd));
  if (cd.size() != 4) {
    return ffi::Error::InvalidArgument("k_cache must be [num_pages, KV, page_size, hd], got " + shape_string(cd));
  }
  p.num_tokens = qd[0];
  p.num_heads = qd[1];
  p.head_dim = qd[2];
  p.num_pages = cd[0];
  p.num_kv_heads = cd[1];
  p.page_size = cd[2];
  if (kd.size() != 3 || kd[0] != p.num_tokens || kd[1] != p.num_kv_heads || kd[2] != p.head_dim ||
      !same_dims(v.dimensions(), kd)) {
    return ffi::Error::InvalidArgument("k and v must be [T, KV, hd] = [" + std::to_string(p.num_tokens) + ", " +
                                       std::to_string(p.num_kv_heads) + ", " + std::to_string(p.head_dim) +
                                       "], got " + shape_string(kd) + " and " + shape_string(v.dimensions()));
  }
  if (cd[3] != p.head_dim || !same_dims(v_cache.dimensions(), cd)) {
    return ffi::Error::InvalidArgument("k_cache and v_cache must both be [num_pages, KV, page_size, hd] with hd = " +
                                       std::to_string(p.head_dim) + ", got " + shape_string(cd) + " and " +
                                       shape_string(v_cache.dimensions()));
  }
  if (p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0 || p.page_size <= 0 || p.head_dim <= 0) {
    return ffi::Error::InvalidArgument("need H a multiple of KV and positive page_size, hd; got H = " +
                                       std::to_string(p.num_heads) + ", KV = " + std::to_string(p.num_kv_heads) +
                                       ", page_size = " + std::to_string(p.page_size) +
                                       ", hd = " + std::to_string(p.head_dim));
  }
  if (!storage_of(q.element_type(), &p.q_storage)) {
    return ffi::Error::InvalidArgument("q must be float32 or bfloat16");
  }
  if (!storage_of(k_cache.element_type(), &p.cache_storage) || v_cache.element_type() != k_cache.element_type() ||
      k.element_type() != k_cache.element_type() || v.element_type() != k_cache.element_type()) {
    return ffi::Error::InvalidArgument("k, v, k_cache and v_cache must share one dtype, float32 or bfloat16");
  }
  auto td = page_table.dimensions();
  if (td.size() != 2) return ffi::Error::InvalidArgument("page_table must be [S, P], got " + shape_string(td));
  p.max_num_seqs = td[0];
  p.pages_per_seq = td[1];
  if (static_cast<int64_t>(slot_mapping.element_count()) != p.num_tokens ||
      static_cast<int64_t>(positions.element_count()) != p.num_tokens) {
    return ffi::Error::InvalidArgument("slot_mapping and positions must have T = " + std::to_string(p.num_tokens) +
                                       " entries, got " + std::to_string(slot_mapping.element_count()) + " and " +
                                       std::to_string(positions.element_count()));
  }
  if (static_cast<int64_t>(cu_q_lens.element_count()) != p.max_num_seqs + 1 ||
      static_cast<int64_t>(kv_lens.element_count()) != p.max_num_seqs) {
    return ffi::Error::InvalidArgument("cu_q_lens must have S + 1 = " + std::to_string(p.max_num_seqs + 1) +
                                       " entries and kv_lens S, got " + std::to_string(cu_q_lens.element_count()) +
                                       " and " + std::to_string(kv_lens.element_count()));
  }
  if (num_seqs.element_count() != 1) {
    return ffi::Error::InvalidArgument("num_seqs must be a scalar, got " + shape_string(num_seqs.dimensions()));
  }
  p.q = q.untyped_data();
  p.k = k.untyped_data();
  p.v = v.untyped_data();
  p.slot_mapping = slot_mapping.typed_data();
  p.positions = positions.typed_data();
  p.cu_q_lens = cu_q_lens.typed_data();
  p.page_table = page_table.typed_data();
  p.kv_lens = kv_lens.typed_data();
  p.num_seqs = num_seqs.typed_data()[0];
  return ffi::Error::Success();
}

ffi::Error paged_attention(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer k_cache,
                           ffi::AnyBuffer v_cache, ffi::Buffer<ffi::S32> slot_mapping,
                           ffi::Buffer<ffi::S32> positions, ffi::Buffer<ffi::S32> cu_q_lens,
                           ffi::Buffer<ffi::S32> page_table, ffi::Buffer<ffi::S32> kv_lens,
                           ffi::Buffer<ffi::S32> num_seqs, float scale, int32_t sliding_window, float soft_cap,
                           int32_t attention_chunk, ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> k_cache_out,
                           ffi::Result<ffi::AnyBuffer> v_cache_out) {
  PagedAttentionProblem p;
  ffi::Error shapes = describe_problem(q, k, v, k_cache, v_cache, slot_mapping, positions, cu_q_lens, page_table,
                                       kv_lens, num_seqs, p);
  if (shapes.failure()) return shapes;
  if (sliding_window < 0 || soft_cap < 0.0f) {
    return ffi::Error::InvalidArgument("sliding_window and soft_cap must be >= 0 (0 = off), got " +
                                       std::to_string(sliding_window) + " and " + std::to_string(soft_cap));
  }
  if (attention_chunk < 0) {
    return ffi::Error::InvalidArgument("attention_chunk must be >= 0 (0 = off), got " +
                                       std::to_string(attention_chunk));
  }
  p.scale = scale;
  p.sliding_window = sliding_window;
  p.soft_cap = soft_cap;
  p.attention_chunk = attention_chunk;
  std::string problem = attention::validate_problem(p);
  if (!problem.empty()) return ffi::Error::InvalidArgument("surge cpu attention: " + problem);

  // Aliased results share the operand's buffer; should XLA ever hand a separate one,
  // start it from the operand so the result is still "cache + this step's writes".
  p.k_cache = k_cache_out->untyped_data();
  p.v_cache = v_cache_out->untyped_data();
  if (p.k_cache != k_cache.untyped_data()) std::memcpy(p.k_cache, k_cache.untyped_data(), k_cache.size_bytes());
  if (p.v_cache != v_cache.untyped_data()) std::memcpy(p.v_cache, v_cache.untyped_data(), v_cache.size_bytes());
  p.out = out->untyped_data();

  attention::write_new_kv(p);
  attention::attend(p);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SurgeCpuPagedAttention, paged_attention,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // q
                                  .Arg<ffi::AnyBuffer>()  // k
                                  .Arg<ffi::AnyBuffer>()  // v
                                  .Arg<ffi::AnyBuffer>()  // k_cache
                                  .Arg<ffi::AnyBuffer>()  // v_cache
                                  .Arg<ffi::Buffer<ffi::S32>>()  // slot_mapping
                                  .Arg<ffi::Buffer<ffi::S32>>()  // positions
                                  .Arg<ffi::Buffer<ffi::S32>>()  // cu_q_lens
                                  .Arg<ffi::Buffer<ffi::S32>>()  // page_table
                                  .Arg<ffi::Buffer<ffi::S32>>()  // kv_lens
                                  .Arg<ffi::Buffer<ffi::S32>>()  // num_seqs
                                  .Attr<float>("scale")
                                  .Attr<int32_t>("sliding_window")
                                  .Attr<float>("soft_cap")
                                  .Attr<int32_t>("attention_chunk")
                                  .Ret<ffi::AnyBuffer>()   // out
                                  .Ret<ffi::AnyBuffer>()   // k_cache
                                  .Ret<ffi::AnyBuffer>());  // v_cache

}  // namespace surge
