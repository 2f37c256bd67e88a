"""Time the cpu attention kernel against plain-JAX paged attention on two batch shapes.

In: nothing (SmolLM2's attention shape: H=9, KV=3, hd=64, page_size 16, float32).
Out: a table on stdout, median and best milliseconds per call (write + attend of one
layer; the contenders are timed in turn, call by call, so machine load hits all alike) of
- ``cpu``: surge's C++ FFI kernel (CpuBackend), cache donated, at 1 and all threads;
- ``jax-dense``: a straightforward pure-JAX version written here: gather each sequence's
  pages, scatter the ragged queries into a dense [S, max_q, H, hd] block, einsum, mask,
  softmax, einsum, gather back;
- ``reference``: surge.kernels.reference.ReferenceBackend, when importable.
Batches: decode-heavy (32 sequences x 512 context, one new token each) and
prefill-heavy (1 sequence, 512 new tokens). Outputs are checked to agree first.

Run: python benchmarks/attention_cpu_probe.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from surge.kernels.base import AttentionSpec
from surge.kernels.cpu import CpuBackend
from surge.kernels.metadata import AttentionMetadata
from surge.kernels.native import set_num_threads

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE = 9, 3, 64, 16
SCALE = HEAD_DIM ** -0.5


def make_batch(rng, num_seqs: int, context: int, new_tokens: int):
    """Metadata and logical data for num_seqs sequences of `context` tokens, the last `new_tokens` new."""
    pages_per_seq = -(-context // PAGE_SIZE)
    num_pages = num_seqs * pages_per_seq + 1
    page_ids = rng.permutation(np.arange(1, num_pages)).reshape(num_seqs, pages_per_seq).astype(np.int32)
    positions = np.tile(np.arange(context - new_tokens, context, dtype=np.int32), num_seqs)
    seq_ids = np.repeat(np.arange(num_seqs, dtype=np.int32), new_tokens)
    slots = page_ids[seq_ids, positions // PAGE_SIZE] * PAGE_SIZE + positions % PAGE_SIZE
    md = AttentionMetadata(
        positions=jnp.asarray(positions), slot_mapping=jnp.asarray(slots, jnp.int32),
        token_seq_ids=jnp.asarray(seq_ids), page_table=jnp.asarray(page_ids),
        cu_q_lens=jnp.asarray(np.arange(num_seqs + 1, dtype=np.int32) * new_tokens),
        kv_lens=jnp.full((num_seqs,), context, jnp.int32), num_seqs=jnp.asarray(num_seqs, jnp.int32))
    num_tokens = num_seqs * new_tokens
    q = jnp.asarray(rng.standard_normal((num_tokens, NUM_HEADS, HEAD_DIM)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((num_tokens, NUM_KV_HEADS, HEAD_DIM)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((num_tokens, NUM_KV_HEADS, HEAD_DIM)), jnp.float32)
    # Logical cache [num_pages, page_size, KV, hd] (reference layout); page 0 stays zero.
    k_logical = rng.standard_normal((num_pages, PAGE_SIZE, NUM_KV_HEADS, HEAD_DIM)).astype(np.float32)
    v_logical = rng.standard_normal((num_pages, PAGE_SIZE, NUM_KV_HEADS, HEAD_DIM)).astype(np.float32)
    k_logical[0] = v_logical[0] = 0.0
    return q, k, v, md, k_logical, v_logical, new_tokens


def jax_dense_attention(q, k, v, k_pages, v_pages, md, *, max_q_len: int):
    """Write then attend, in plain JAX, cache layout [num_pages, page_size, KV, hd]."""
    num_pages, page_size, num_kv, head_dim = k_pages.shape
    num_tokens, num_heads, _ = q.shape
    group = num_heads // num_kv
    k_pages = k_pages.reshape(-1, num_kv, head_dim).at[md.slot_mapping].set(k).reshape(k_pages.shape)
    v_pages = v_pages.reshape(-1, num_kv, head_dim).at[md.slot_mapping].set(v).reshape(v_pages.shape)
    num_seqs, pages_per_seq = md.page_table.shape
    context = pages_per_seq * page_size
    keys = k_pages[md.page_table].reshape(num_seqs, context, num_kv, head_dim)
    values = v_pages[md.page_table].reshape(num_seqs, context, num_kv, head_dim)
    seq = md.token_seq_ids
    row = jnp.arange(num_tokens, dtype=jnp.int32) - md.cu_q_lens[jnp.minimum(seq, num_seqs - 1)]
    q_dense = jnp.zeros((num_seqs + 1, max_q_len, num_heads, head_dim), q.dtype).at[seq, row].set(q)[:num_seqs]
    pos_dense = jnp.full((num_seqs + 1, max_q_len), -1, jnp.int32).at[seq, row].set(md.positions)[:num_seqs]
    q_dense = q_dense.reshape(num_seqs, max_q_len, num_kv, group, head_dim)
    scores = jnp.einsum("sqkgd,slkd->skgql", q_dense, keys) * SCALE
    key_pos = jnp.arange(context, dtype=jnp.int32)
    mask = (key_pos[None, None, :] <= pos_dense[:, :, None]) & (key_pos[None, None, :] < md.kv_lens[:, None, None])
    scores = jnp.where(mask[:, None, None], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(mask[:, None, None], probs, 0.0)
    out_dense = jnp.einsum("skgql,slkd->sqkgd", probs, values).reshape(num_seqs, max_q_len, num_heads, head_dim)
    out = out_dense[jnp.minimum(seq, num_seqs - 1), row]
    return out, (k_pages, v_pages)


class Contender:
    """One implementation under test: a jitted step that donates its cache, and that cache."""

    def __init__(self, name, step, caches, num_threads=None):
        self.name, self.step, self.caches, self.num_threads = name, step, caches, num_threads
        self.times = []
        self.first_out = None

    def call(self, q, k, v, md) -> float:
        if self.num_threads is not None:
            set_num_threads(self.num_threads)
        start = time.perf_counter()
        out, self.caches = self.step(q, k, v, *self.caches, md)
        jax.block_until_ready((out, self.caches))
        elapsed = (time.perf_counter() - start) * 1e3
        if self.first_out is None:
            self.first_out = np.asarray(out)
        return elapsed


def run_case(label, batch, repeats):
    q, k, v, md, k_logical, v_logical, max_q_len = batch
    cpu = CpuBackend()
    cpu_jit = jax.jit(lambda q, k, v, kp, vp, md: cpu.attention(q, k, v, (kp, vp), md, AttentionSpec(SCALE)), donate_argnums=(3, 4))
    dense_jit = jax.jit(lambda q, k, v, kp, vp, md: jax_dense_attention(q, k, v, kp, vp, md, max_q_len=max_q_len),
                        donate_argnums=(3, 4))

    def cpu_layout():
        return jnp.asarray(k_logical.transpose(0, 2, 1, 3)), jnp.asarray(v_logical.transpose(0, 2, 1, 3))

    def reference_layout():
        return jnp.asarray(k_logical), jnp.asarray(v_logical)

    contenders = [
        Contender("cpu (1 thread)", cpu_jit, cpu_layout(), num_threads=1),
        Contender("cpu (all threads)", cpu_jit, cpu_layout(), num_threads=0),
        Contender("jax-dense", dense_jit, reference_layout()),
    ]
    try:
        from surge.kernels.reference import ReferenceBackend
    except ImportError:
        ReferenceBackend = None
    if ReferenceBackend is not None:
        reference = ReferenceBackend()
        ref_jit = jax.jit(lambda q, k, v, kp, vp, md: reference.attention(q, k, v, (kp, vp), md, AttentionSpec(SCALE)),
                          donate_argnums=(3, 4))
        contenders.append(Contender("reference", ref_jit, reference_layout()))

    # Warm up (compile), then interleave the contenders so a change in machine load
    # during the run hits all of them alike.
    for contender in contenders:
        for _ in range(3):
            contender.call(q, k, v, md)
    for _ in range(repeats):
        for contender in contenders:
            contender.times.append(contender.call(q, k, v, md))
    set_num_threads(0)

    baseline = contenders[2].first_out
    for contender in contenders:
        np.testing.assert_allclose(contender.first_out, baseline, atol=1e-4, rtol=1e-4,
                                   err_msg=f"{contender.name} disagrees with jax-dense")
    dense_ms = statistics.median(contenders[2].times)
    print(f"\n{label}")
    for contender in contenders:
        ms = statistics.median(contender.times)
        print(f"  {contender.name:<20} median {ms:8.3f} ms  min {min(contender.times):8.3f} ms"
              f"   ({dense_ms / ms:5.2f}x vs jax-dense)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__} on {jax.default_backend()}; H={NUM_HEADS} KV={NUM_KV_HEADS} hd={HEAD_DIM} "
          f"page_size={PAGE_SIZE} float32; median of {args.repeats}")
    run_case("decode-heavy: 32 seqs x 512 context, 1 new token each", make_batch(rng, 32, 512, 1), args.repeats)
    run_case("prefill-heavy: 1 seq, 512 new tokens", make_batch(rng, 1, 512, 512), args.repeats)


if __name__ == "__main__":
    main()
