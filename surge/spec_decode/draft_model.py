"""Draft-model proposals: a smaller model with the target's tokenizer proposes its greedy tokens.

In: the running requests that propose this step (each with all its tokens on the host) and the most
drafts each may have. Out: per request, up to k token ids: the draft's argmax continuation of the
request's tokens. The proposal is a point mass (q one-hot on the draft's argmax), so the accept rule of
`acceptance` keeps the target's distribution at any temperature.

The draft has its own paged KV cache (own page pool, engine.speculative.draft_num_pages, page size
cache.page_size, no prefix caching) and remembers per request how many positions of it are valid.
After a verification it keeps the positions whose fed tokens the target accepted and recomputes the
rest. One device call per step serves every proposing request: a catch-up of the tokens the draft
has not seen (a whole prompt the first time, then the last one or two tokens), the argmax at each
request's last token, then k - 1 batched decode steps inside the same compiled program, feeding each
argmax back. The program is compiled per token bucket (engine.token_buckets, else powers of two up to
engine.max_num_batched_tokens, each with S = min(T, engine.max_num_seqs) sequences), all at start-up.
A request's draft pages are allocated when it first proposes and freed when it finishes, is aborted
or is preempted (`release`). A request the draft pool or the step's token budget cannot take proposes
nothing that step (never at the target's expense); a catch-up longer than the budget runs in chunks
over several steps.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from surge.cache.block_manager import BlockManager
from surge.cache.kv_cache import KVCachePlan, allocate_kv_cache
from surge.kernels.metadata import AttentionMetadata
from surge.models.loader import load_model
from surge.spec_decode.stats import DraftModelStats

logger = logging.getLogger("surge")


def draft_buckets(token_buckets: Sequence[int], budget: int, max_num_seqs: int) -> list[tuple[int, int]]:
    """(tokens, seqs) pairs of the draft program: the target's token buckets, S = min(T, max_num_seqs)."""
    tokens = sorted(set(token_buckets))
    if not tokens:
        value = 1
        while value < budget:
            tokens.append(value)
            value *= 2
    if not tokens or tokens[-1] < budget:
        tokens.append(budget)
    return sorted((t, min(t, max_num_seqs)) for t in sorted(set(tokens)))


@dataclass
class _DraftState:
    # Positions of the request whose K/V in the draft cache are those of its actual tokens.
    num_computed: int = 0
    # Tokens fed to the draft at positions [num_computed, ...) in the last proposal (its own drafts);
    # valid for as long a prefix as the request's tokens there match them.
    fed: tuple = ()


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class _CatchUp:
    input_ids: jax.Array  # int32[T]
    md: AttentionMetadata
    last_index: jax.Array  # int32[S]: token row of each sequence's last token (0 for padding sequences)


class DraftModelProposer:
    def __init__(self, *, model, arch, backend, kv_caches, block_manager: BlockManager, num_drafts: int,
                 max_model_len: int, buckets: Sequence[tuple[int, int]],
                 place_weights: Optional[Callable] = None) -> None:
        self.arch = arch
        self.backend = backend
        self.k = num_drafts
        self.block_manager = block_manager
        self.page_size = block_manager.page_size
        # Decode steps write up to k - 1 positions past a request's tokens.
        self.pages_per_seq = math.ceil((max_model_len + num_drafts) / self.page_size)
        self.buckets = list(buckets)
        self.budget = self.buckets[-1][0]
        self.graphdef, state = nnx.split(model)
        state = place_weights(state) if place_weights is not None else state
        self._weights, self._treedef = jax.tree_util.tree_flatten(state)
        self.kv_caches = kv_caches
        self._states: dict[str, _DraftState] = {}
        self._jitted = jax.jit(self._program, donate_argnums=(1,))
        self._compiled: dict[tuple[int, int], object] = {}
        self.num_calls = 0  # device calls (one per step with proposing requests, more for chunked catch-ups)

    # ---- the device program ----------------------------------------------------------------
    def _program(self, weights, kv_caches, batch: _CatchUp):
        model = nnx.merge(self.graphdef, jax.tree_util.tree_unflatten(self._treedef, weights))
        md = batch.md
        hidden, kv_caches = model.hidden_states(batch.input_ids, md, kv_caches, self.backend)
        first = jnp.argmax(model.logits(hidden[batch.last_index], self.backend), axis=-1).astype(jnp.int32)
        num_seqs = md.page_table.shape[0]
        seq = jnp.arange(num_seqs, dtype=jnp.int32)
        valid = seq < md.num_seqs
        seq_ids = jnp.where(valid, seq, num_seqs)
        cu_q_lens = jnp.minimum(jnp.arange(num_seqs + 1, dtype=jnp.int32), md.num_seqs)
        size = self.page_size

        def decode(carry, j):
            kv, token = carry
            pos = md.kv_lens + j  # the position of `token`, the draft before it at position pos - 1
            page = md.page_table[seq, jnp.minimum(pos // size, md.page_table.shape[1] - 1)]
            step_md = AttentionMetadata(
                positions=jnp.where(valid, pos, 0), slot_mapping=jnp.where(valid, page * size + pos % size, 0),
                token_seq_ids=seq_ids, page_table=md.page_table, cu_q_lens=cu_q_lens,
                kv_lens=jnp.where(valid, pos + 1, 0), num_seqs=md.num_seqs)
            h, kv = model.hidden_states(token, step_md, kv, self.backend)
            following = jnp.argmax(model.logits(h, self.backend), axis=-1).astype(jnp.int32)
            return (kv, following), following

        if self.k > 1:
            (kv_caches, _), rest = jax.lax.scan(decode, (kv_caches, first), jnp.arange(self.k - 1, dtype=jnp.int32))
            drafts = jnp.concatenate([first[:, None], rest.T], axis=1)
        else:
            drafts = first[:, None]
        return kv_caches, drafts

    def _dummy(self, num_tokens: int, num_seqs: int) -> _CatchUp:
        return self._build([], num_tokens, num_seqs)

    def _build(self, rows: list, num_tokens: int, num_seqs: int) -> _CatchUp:
        """rows: (request id, token ids to run, first position) per sequence."""
        input_ids = np.zeros(num_tokens, np.int32)
        positions = np.zeros(num_tokens, np.int32)
        slot_mapping = np.zeros(num_tokens, np.int32)
        token_seq_ids = np.full(num_tokens, num_seqs, np.int32)
        page_table = np.zeros((num_seqs, self.pages_per_seq), np.int32)
        cu_q_lens = np.zeros(num_seqs + 1, np.int32)
        kv_lens = np.zeros(num_seqs, np.int32)
        last_index = np.zeros(num_seqs, np.int32)
        start = 0
        for i, (request_id, tokens, first) in enumerate(rows):
            end = start + len(tokens)
            pages = np.asarray(self.block_manager.pages(request_id), np.int32)
            page_table[i, :len(pages)] = pages
            pos = np.arange(first, first + len(tokens), dtype=np.int32)
            input_ids[start:end] = tokens
            positions[start:end] = pos
            slot_mapping[start:end] = pages[pos // self.page_size] * self.page_size + pos % self.page_size
            token_seq_ids[start:end] = i
            kv_lens[i] = first + len(tokens)
            last_index[i] = end - 1
            cu_q_lens[i + 1] = end
            start = end
        cu_q_lens[len(rows) + 1:] = start
        md = AttentionMetadata(positions=positions, slot_mapping=slot_mapping, token_seq_ids=token_seq_ids,
                               page_table=page_table, cu_q_lens=cu_q_lens, kv_lens=kv_lens,
                               num_seqs=np.asarray(len(rows), np.int32))
        return _CatchUp(input_ids, md, last_index)

    def compile(self, num_tokens: int, num_seqs: int):
        key = (num_tokens, num_seqs)
        if key not in self._compiled:
            self._compiled[key] = self._jitted.lower(self._weights, self.kv_caches,
                                                     self._dummy(num_tokens, num_seqs)).compile()
        return self._compiled[key]

    def compile_all(self) -> None:
        for num_tokens, num_seqs in self.buckets:
            self.compile(num_tokens, num_seqs)

    @property
    def num_bytes(self) -> int:
        """Device bytes the draft holds: its weights and its KV pool."""
        leaves = list(self._weights) + jax.tree_util.tree_leaves(self.kv_caches)
        return int(sum(x.size * x.dtype.itemsize for x in leaves))

    @property
    def num_compiled_buckets(self) -> int:
        return len(self._compiled)

    def _select(self, num_tokens: int, num_seqs: int) -> tuple[int, int]:
        for t, s in self.buckets:
            if t >= num_tokens and s >= num_seqs:
                return t, s
        raise ValueError(f"draft batch of {num_tokens} tokens / {num_seqs} sequences exceeds every bucket "
                         f"(largest {self.buckets[-1]})")

    # ---- proposals -------------------------------------------------------------------------
    def propose(self, requests: Sequence, limits: Sequence[int]) -> dict[str, list[int]]:
        """Drafts of every request that can propose now (request id -> at most its limit, at most k)."""
        rows, proposing = [], []  # proposing: (row index, request id, limit)
        budget = self.budget
        for request, limit in zip(requests, limits):
            if limit <= 0 or budget <= 0 or len(rows) >= self.buckets[-1][1]:
                continue
            request_id, tokens = request.request_id, request.token_ids
            state = self._states.get(request_id) or _DraftState()
            computed = state.num_computed
            for fed, actual in zip(state.fed, tokens[computed:]):
                if int(fed) != int(actual):
                    break
                computed += 1
            computed = min(computed, len(tokens) - 1)
            run = list(tokens[computed:])
            whole = len(run) <= budget
            run = run[:budget]
            # K/V of the run, then of the k - 1 drafts fed back after it.
            if self.block_manager.allocate(request_id, computed + len(run) + self.k - 1) is None:
                continue
            self._states[request_id] = _DraftState(computed + len(run), ())
            if whole:
                proposing.append((len(rows), request_id, min(limit, self.k)))
            rows.append((request_id, run, computed))
            budget -= len(run)
        if not rows:
            return {}
        num_tokens, num_seqs = self._select(sum(len(r[1]) for r in rows), len(rows))
        program = self.compile(num_tokens, num_seqs)
        self.kv_caches, drafts = program(self._weights, self.kv_caches, self._build(rows, num_tokens, num_seqs))
        self.num_calls += 1
        drafts = np.asarray(jax.device_get(drafts))
        out = {}
        for row, request_id, limit in proposing:
            ids = drafts[row].tolist()
            self._states[request_id].fed = tuple(ids[:self.k - 1])
            out[request_id] = ids[:limit]
        return out

    def release(self, request_id: str) -> None:
        """Forget a request (finished, aborted or preempted) and free its draft pages."""
        if self._states.pop(request_id, None) is not None:  # (a state exists exactly while pages are held)
            self.block_manager.free(request_id)

    def stats(self) -> DraftModelStats:
        return DraftModelStats(num_total_pages=self.block_manager.num_total_pages,
                               num_free_pages=self.block_manager.num_free_pages, num_requests=len(self._states),
                               num_calls=self.num_calls)


class DraftMismatch(ValueError):
    """The draft cannot propose for the target: its vocabulary or tokenizer differs."""


def check_same_vocabulary(draft_name: str, target_name: str, draft_arch, target_arch, draft_tokenizer,
                          target_tokenizer) -> None:
    """Raise DraftMismatch unless the draft's token ids mean what the target's do."""
    where = f"engine.speculative.draft_model={draft_name!r} vs model.name={target_name!r}"
    if draft_arch.vocab_size != target_arch.vocab_size:
        raise DraftMismatch(f"{where}: the draft's vocabulary has {draft_arch.vocab_size} tokens, the target's "
                            f"{target_arch.vocab_size}; a draft must share the target's tokenizer")
    if draft_tokenizer is None or target_tokenizer is None:
        return
    draft_size, target_size = len(draft_tokenizer), len(target_tokenizer)
    if draft_size != target_size:
        raise DraftMismatch(f"{where}: the draft's tokenizer has {draft_size} tokens, the target's {target_size}; "
                            f"a draft must share the target's tokenizer")
    if hasattr(draft_tokenizer, "get_vocab") and hasattr(target_tokenizer, "get_vocab"):
        draft_vocab, target_vocab = draft_tokenizer.get_vocab(), target_tokenizer.get_vocab()
        differ = sorted(t for t in set(draft_vocab) | set(target_vocab) if draft_vocab.get(t) != target_vocab.get(t))
        if differ:
            raise DraftMismatch(f"{where}: the tokenizers ({draft_size} tokens each) map {len(differ)} tokens "
                                f"differently (first {differ[0]!r}: draft id {draft_vocab.get(differ[0])}, target "
                                f"id {target_vocab.get(differ[0])}); a draft must share the target's tokenizer")


def draft_pool_pages(num_pages: int, max_num_seqs: int, max_model_len: int, num_drafts: int, page_size: int) -> int:
    """Pages of the draft pool (with the null page): engine.speculative.draft_num_pages, or 0 = enough for
    max_num_seqs requests of max_model_len + k tokens."""
    if num_pages:
        return num_pages
    return max_num_seqs * math.ceil((max_model_len + num_drafts) / page_size) + 1


def build_draft_proposer(cfg, *, target_arch, target_tokenizer, backend, mesh, max_model_len: int, dtype: str,
                         place_weights: Optional[Callable] = None) -> DraftModelProposer:
    """Load engine.speculative.draft_model, check it against the target, give it its KV pool and programs."""
    spec, engine = cfg.engine.speculative, cfg.engine
    loaded = load_model(spec.draft_model, dtype=dtype, quantized_matmul=backend.multiplies_quantized)
    check_same_vocabulary(spec.draft_model, cfg.model.name, loaded.arch, target_arch, loaded.tokenizer,
                          target_tokenizer)
    backend.prepare_model(loaded.model)
    arch, page_size = loaded.arch, cfg.cache.page_size
    if arch.max_position_embeddings and arch.max_position_embeddings < max_model_len:
        logger.warning("engine.speculative.draft_model=%s was trained up to %d positions, below engine.max_model_len=%d: "
                       "its drafts degrade (and fewer are accepted) past that", spec.draft_model,
                       arch.max_position_embeddings, max_model_len)
    num_pages = draft_pool_pages(spec.draft_num_pages, engine.max_num_seqs, max_model_len,
                                 spec.num_speculative_tokens, page_size)
    page_elems = int(np.prod(backend.kv_cache_shape(1, page_size, arch.num_kv_heads, arch.head_dim)))
    kv_dtype = jnp.dtype(cfg.cache.dtype if cfg.cache.dtype != "auto" else loaded.model.dtype)
    plan = KVCachePlan(num_pages, page_size, 2 * arch.num_layers * page_elems * kv_dtype.itemsize, 0)
    kv_caches = allocate_kv_cache(plan, num_layers=arch.num_layers, backend=backend, num_kv_heads=arch.num_kv_heads,
                                  head_dim=arch.head_dim, dtype=kv_dtype, mesh=mesh)
    logger.info("draft model %s: %d layers; its KV pool: %d pages x %d tokens (%.1f MiB), "
                "engine.speculative.draft_num_pages=%d", spec.draft_model, arch.num_layers, num_pages - 1, page_size,
                plan.num_bytes / 2**20, spec.draft_num_pages)
    return DraftModelProposer(
        model=loaded.model, arch=arch, backend=backend, kv_caches=kv_caches,
        block_manager=BlockManager(num_pages, page_size, enable_prefix_caching=False),
        num_drafts=spec.num_speculative_tokens, max_model_len=max_model_len,
        buckets=draft_buckets(engine.token_buckets, engine.max_num_batched_tokens, engine.max_num_seqs),
        place_weights=place_weights)


__all__ = ["DraftMismatch", "DraftModelProposer", "build_draft_proposer", "check_same_vocabulary",
           "draft_buckets", "draft_pool_pages"]
