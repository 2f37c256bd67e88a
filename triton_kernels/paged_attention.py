"""Triton kernels: write new K/V into a paged cache, then ragged causal paged attention.

Cache layout (both K and V): ``[num_pages, num_kv_heads, page_size, head_dim]``,
contiguous, so one page of one KV head is a contiguous ``page_size x head_dim``
tile. All tensors are contiguous row-major; strides follow from the constexpr
dimensions. Argument order is inputs, then outputs, then constexprs, which is
what ``jax_triton.triton_call`` passes (outputs are appended after the inputs;
an aliased output points at the same buffer as its input).

``write_kv_kernel`` (grid ``(num_tokens,)``): token t's K/V rows ``[KV, hd]``
go to flat slot ``slot_mapping[t]`` = ``page * page_size + offset``.

``paged_attention_kernel`` (grid ``(num_query_blocks, num_kv_heads)``): the
ragged token axis is cut into blocks of BLOCK_Q tokens that never straddle two
sequences. Sequence s owns the blocks starting at ``cu_q_lens[s] // BLOCK_Q + s``,
at least as many as it needs, so ``num_tokens // BLOCK_Q + max_seqs`` blocks
cover any batch; a program finds its sequence by counting block starts <= its id.
The GROUP query heads that share one KV head are stacked into the rows of one
tile (row = token * GROUP_P + head-in-group), so each K/V page is read once for
all of them. The program walks the keys its rows can see in tiles of BLOCK_N
(gathering each key's page through the page table), with an online softmax in
float32. Masked keys are loaded as zeros and their scores set to -inf, so
whatever a free page holds (NaN in the tests) never reaches the output. Rows
with no visible key are written as zeros.
"""

import triton
import triton.language as tl


@triton.jit
def write_kv_kernel(
    k_new,  # [T, KV, HD]
    v_new,  # [T, KV, HD]
    slot_mapping,  # int32[T]
    k_cache_in,  # [N, KV, PS, HD], aliased with k_cache
    v_cache_in,  # [N, KV, PS, HD], aliased with v_cache
    k_cache,  # output
    v_cache,  # output
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    KV_HEADS_P: tl.constexpr,  # next power of two of NUM_KV_HEADS
    HEAD_DIM_P: tl.constexpr,  # next power of two of HEAD_DIM
):
    token = tl.program_id(0)
    heads = tl.arange(0, KV_HEADS_P)
    dims = tl.arange(0, HEAD_DIM_P)
    inside = (heads[:, None] < NUM_KV_HEADS) & (dims[None, :] < HEAD_DIM)

    slot = tl.load(slot_mapping + token).to(tl.int64)
    page = slot // PAGE_SIZE
    offset = slot % PAGE_SIZE

    src = token.to(tl.int64) * (NUM_KV_HEADS * HEAD_DIM) + heads[:, None] * HEAD_DIM + dims[None, :]
    dst = (page * (NUM_KV_HEADS * PAGE_SIZE * HEAD_DIM) + heads[:, None] * (PAGE_SIZE * HEAD_DIM)
           + offset * HEAD_DIM + dims[None, :])
    k_rows = tl.load(k_new + src, mask=inside)
    v_rows = tl.load(v_new + src, mask=inside)
    tl.store(k_cache + dst, k_rows.to(k_cache.dtype.element_ty), mask=inside)
    tl.store(v_cache + dst, v_rows.to(v_cache.dtype.element_ty), mask=inside)


@triton.jit
def paged_attention_kernel(
    q,  # [T, H, HD]
    k_cache,  # [N, KV, PS, HD]
    v_cache,  # [N, KV, PS, HD]
    page_table,  # int32[MAX_SEQS, PAGES_PER_SEQ]
    cu_q_lens,  # int32[MAX_SEQS + 1]
    kv_lens,  # int32[MAX_SEQS]
    positions,  # int32[T]
    num_seqs,  # int32[] (or [1])
    out,  # output [T, H, HD], zeroed before the call
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    PAGES_PER_SEQ: tl.constexpr,
    MAX_SEQS: tl.constexpr,
    SCALE: tl.constexpr,
    SOFT_CAP: tl.constexpr,  # 0.0: no soft cap
    WINDOW: tl.constexpr,  # 0: no sliding window
    CHUNK: tl.constexpr,  # 0: no attention chunk (else a token sees only keys of its own chunk)
    GROUP: tl.constexpr,  # NUM_HEADS // NUM_KV_HEADS
    GROUP_P: tl.constexpr,  # next power of two of GROUP
    HEAD_DIM_P: tl.constexpr,  # next power of two of HEAD_DIM
    SEQS_P: tl.constexpr,  # next power of two of MAX_SEQS
    BLOCK_Q: tl.constexpr,  # tokens per program
    BLOCK_N: tl.constexpr,  # keys per inner step
    DOT_PRECISION: tl.constexpr,  # "ieee" keeps float32 dots exact on GPUs; ignored for 16-bit inputs
):
    block = tl.program_id(0)
    kv_head = tl.program_id(1)

    # Which sequence owns this block: the last real one whose first block is <= block.
    seq_index = tl.arange(0, SEQS_P)
    num_real = tl.load(num_seqs)
    seq_q_begin = tl.load(cu_q_lens + seq_index, mask=seq_index < MAX_SEQS, other=0)
    first_block = seq_q_begin // BLOCK_Q + seq_index
    owns = (first_block <= block) & (seq_index < num_real)
    seq = tl.maximum(tl.sum(owns.to(tl.int32), axis=0) - 1, 0)
    seq_is_real = seq < num_real

    q_begin = tl.load(cu_q_lens + seq)
    q_end = tl.where(seq_is_real, tl.load(cu_q_lens + seq + 1), q_begin)
    q_start = q_begin + (block - (q_begin // BLOCK_Q + seq)) * BLOCK_Q
    kv_len = tl.load(kv_lens + seq)

    # Row r of the tile is token q_start + r // GROUP_P, query head kv_head * GROUP + r % GROUP_P.
    rows = tl.arange(0, BLOCK_Q * GROUP_P)
    token = q_start + rows // GROUP_P
    head = kv_head * GROUP + rows % GROUP_P
    row_ok = (token < q_end) & (rows % GROUP_P < GROUP)
    dims = tl.arange(0, HEAD_DIM_P)
    dim_ok = dims < HEAD_DIM

    row_offset = token.to(tl.int64) * (NUM_HEADS * HEAD_DIM) + head * HEAD_DIM
    q_tile = tl.load(q + row_offset[:, None] + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    q_tile = q_tile.to(k_cache.dtype.element_ty)
    query_pos = tl.load(positions + token, mask=row_ok, other=0)

    # Keys any row can see: [lowest window start, highest causal end).
    key_end = tl.minimum(kv_len, tl.max(tl.where(row_ok, query_pos, -1), axis=0) + 1)
    key_start = 0
    if WINDOW > 0:
        key_start = tl.maximum(tl.min(tl.where(row_ok, query_pos, key_end + WINDOW), axis=0) - WINDOW + 1, 0)
    if CHUNK > 0:
        lowest_pos = tl.min(tl.where(row_ok, query_pos, key_end), axis=0)
        key_start = tl.maximum(key_start, lowest_pos // CHUNK * CHUNK)

    row_max = tl.full([BLOCK_Q * GROUP_P], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_Q * GROUP_P], tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_P, HEAD_DIM_P], tl.float32)
    page_row = page_table + seq.to(tl.int64) * PAGES_PER_SEQ

    for tile_start in range(key_start, key_end, BLOCK_N):
        key_pos = tile_start + tl.arange(0, BLOCK_N)
        key_ok = key_pos < key_end
        page = tl.load(page_row + key_pos // PAGE_SIZE, mask=key_ok, other=0).to(tl.int64)
        key_offset = (page * (NUM_KV_HEADS * PAGE_SIZE * HEAD_DIM) + kv_head * (PAGE_SIZE * HEAD_DIM)
                      + (key_pos % PAGE_SIZE) * HEAD_DIM)
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        k_tile = tl.load(k_cache + key_offset[:, None] + dims[None, :], mask=kv_mask, other=0.0)

        scores = tl.dot(q_tile, tl.trans(k_tile), input_precision=DOT_PRECISION) * SCALE
        if SOFT_CAP > 0:
            # tanh through exp: saturates to +-1 cleanly when exp overflows.
            scores = SOFT_CAP * (1.0 - 2.0 / (tl.exp(2.0 * scores / SOFT_CAP) + 1.0))
        visible = row_ok[:, None] & key_ok[None, :] & (key_pos[None, :] <= query_pos[:, None])
        if WINDOW > 0:
            visible = visible & (key_pos[None, :] > query_pos[:, None] - WINDOW)
        if CHUNK > 0:
            visible = visible & (key_pos[None, :] >= query_pos[:, None] // CHUNK * CHUNK)
        scores = tl.where(visible, scores, float("-inf"))

        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        # A row that has seen no key yet keeps max -inf; shift by 0 so exp never sees -inf - -inf.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        probs = tl.exp(scores - shift[:, None])
        rescale = tl.exp(row_max - shift)
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)

        v_tile = tl.load(v_cache + key_offset[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v_tile.dtype), v_tile, input_precision=DOT_PRECISION)
        row_max = new_max

    result = tl.where(row_sum[:, None] > 0, acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None], 0.0)
    tl.store(out + row_offset[:, None] + dims[None, :], result.to(out.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])
