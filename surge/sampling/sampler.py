"""The on-device sampler: the last stage of the engine's jitted step.

In: ``logits`` f32[S, V] (one row per scheduled request, padded to the bucket)
and a ``SamplingTensors`` pytree (see ``tensors.py``); ``num_logprobs`` is
static (the step's compiled top-logprobs width). Out: a ``SamplerOutput``
pytree: the sampled token of each row, its log-probability and rank under the
raw model distribution, and the top ``num_logprobs`` alternatives.

Processing order (vLLM's): logit bias, min_tokens suppression, penalties, the
grammar's token bitmask (rows of constrained requests; others are all ones); then
greedy rows take the argmax, and sampled rows apply temperature, top-k, top-p,
min-p and draw with Gumbel-max from ``fold_in(key(seed), step)``. Every row is
computed independently of the others, so a request's token is a pure function
of (logits, params, seed, step) whatever else shares the batch. Each costly
stage sits under ``lax.cond`` on its batch flag: an all-greedy batch without
penalties, bias, min_tokens or logprobs costs one argmax.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from surge.sampling.tensors import SamplingTensors


@dataclasses.dataclass
class SamplerOutput:
    """Per row, columns on the device; on the host ``surge.sampling.logprobs.read_rows`` makes TokenLogprobs."""

    token_ids: jax.Array  # int32[S]
    logprobs: jax.Array  # f32[S]; log_softmax(raw logits) at the sampled token (0 when no row asks)
    ranks: jax.Array  # int32[S]; 1 + number of tokens more likely than the sampled one (0 when no row asks)
    top_ids: jax.Array  # int32[S, num_logprobs]
    top_logprobs: jax.Array  # f32[S, num_logprobs]


jax.tree_util.register_dataclass(
    SamplerOutput, data_fields=[f.name for f in dataclasses.fields(SamplerOutput)], meta_fields=[])


def sample(logits: jax.Array, t: SamplingTensors, num_logprobs: int = 0) -> SamplerOutput:
    """Sample one token per row; jit-able (call inside the step's jit with num_logprobs static)."""
    raw = logits.astype(jnp.float32)
    # The common batch (every row greedy, nothing to adjust, no log-probs) takes one argmax
    # behind a single cond: each further cond on the logits costs XLA:CPU a copy of them.
    plain = t.all_greedy & ~(t.any_logit_bias | t.any_min_tokens | t.any_penalties | t.any_logprobs
                             | t.any_structured)
    return lax.cond(plain, functools.partial(_greedy_only, num_logprobs=num_logprobs),
                    functools.partial(_sample_any, num_logprobs=num_logprobs), raw, t)


def _greedy_only(raw: jax.Array, t: SamplingTensors, num_logprobs: int) -> SamplerOutput:
    return without_logprobs(_argmax(raw, t), num_logprobs)


def _sample_any(raw: jax.Array, t: SamplingTensors, num_logprobs: int) -> SamplerOutput:
    processed = process_logits(raw, t)
    token_ids = lax.cond(t.all_greedy, _argmax, _sample_mixed, processed, t)
    return lax.cond(
        t.any_logprobs,
        lambda: with_logprobs(raw, token_ids, num_logprobs),
        lambda: without_logprobs(token_ids, num_logprobs),
    )


def process_logits(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    """Logit bias, min_tokens suppression, penalties and the grammar mask: what greedy rows take the argmax of."""
    logits = logits.astype(jnp.float32)
    logits = lax.cond(t.any_logit_bias, _apply_logit_bias, _unchanged, logits, t)
    logits = lax.cond(t.any_min_tokens, _suppress_stop_tokens, _unchanged, logits, t)
    logits = lax.cond(t.any_penalties, _apply_penalties, _unchanged, logits, t)
    return lax.cond(t.any_structured, _apply_token_bitmask, _unchanged, logits, t)


def _unchanged(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    del t
    return logits


def _argmax(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    del t
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _row_index(table: jax.Array) -> jax.Array:
    return jnp.arange(table.shape[0])[:, None]


def _apply_logit_bias(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    vocab = logits.shape[1]
    cols = jnp.where(t.bias_ids >= 0, t.bias_ids, vocab)  # out of range -> dropped
    return logits.at[_row_index(cols), cols].add(t.bias_values, mode="drop")


def _suppress_stop_tokens(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    vocab = logits.shape[1]
    cols = jnp.where(t.suppress_ids >= 0, t.suppress_ids, vocab)
    return logits.at[_row_index(cols), cols].set(-jnp.inf, mode="drop")


def _apply_token_bitmask(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    num_rows, vocab = logits.shape
    bits = jnp.arange(32, dtype=jnp.int32)
    allowed = (t.token_bitmask[:, :, None] >> bits) & 1  # int32[S, W, 32]
    allowed = allowed.reshape(num_rows, -1)[:, :vocab]
    return jnp.where(allowed != 0, logits, -jnp.inf)


def _apply_penalties(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    num_rows, vocab = logits.shape
    valid = t.history >= 0
    is_output = valid & (jnp.arange(t.history.shape[1])[None, :] >= t.num_prompt_tokens[:, None])
    cols = jnp.where(valid, t.history, vocab)
    rows = _row_index(cols)
    zeros = jnp.zeros((num_rows, vocab), dtype=jnp.int32)
    seen = zeros.at[rows, cols].add(1, mode="drop") > 0
    output_counts = zeros.at[rows, cols].add(is_output.astype(jnp.int32), mode="drop").astype(jnp.float32)

    repetition = t.repetition_penalty[:, None]
    penalized = jnp.where(logits > 0, logits / repetition, logits * repetition)
    logits = jnp.where(seen, penalized, logits)
    logits = logits - t.frequency_penalty[:, None] * output_counts
    return logits - t.presence_penalty[:, None] * (output_counts > 0).astype(jnp.float32)


def _sample_mixed(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    greedy_rows = t.temperature <= 0.0
    greedy_ids = _argmax(logits, t)
    scaled = logits / jnp.where(greedy_rows, 1.0, t.temperature)[:, None]
    scaled = lax.cond(t.any_top_p_top_k_min_p, _apply_top_k_top_p_min_p, _unchanged, scaled, t)
    keys = jax.random.wrap_key_data(t.rng_key, impl="threefry2x32")
    keys = jax.vmap(jax.random.fold_in)(keys, t.step)
    gumbel = jax.vmap(lambda key: jax.random.gumbel(key, (logits.shape[1],), dtype=jnp.float32))(keys)
    sampled_ids = jnp.argmax(scaled + gumbel, axis=-1).astype(jnp.int32)
    return jnp.where(greedy_rows, greedy_ids, sampled_ids)


def _apply_top_k_top_p_min_p(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    vocab = logits.shape[1]
    # Thresholds come from the row sorted in descending order; ties at a threshold are all kept.
    sorted_desc = -jnp.sort(-logits, axis=-1)
    positions = jnp.arange(vocab)[None, :]
    k = jnp.where(t.top_k > 0, jnp.minimum(t.top_k, vocab), vocab)
    within_k = positions < k[:, None]
    sorted_k = jnp.where(within_k, sorted_desc, -jnp.inf)

    probs = jax.nn.softmax(sorted_k, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # A token stays while the tokens ranked above it hold less than top_p; top_p == 1 keeps all
    # (float rounding of the cumulative sum must not drop the tail).
    keep = within_k & ((mass_before < t.top_p[:, None]) | (t.top_p[:, None] >= 1.0))
    num_kept = jnp.maximum(jnp.sum(keep, axis=-1), 1)
    threshold = jnp.take_along_axis(sorted_desc, (num_kept - 1)[:, None], axis=-1)

    # min-p: p(token) >= min_p * p(max)  <=>  logit >= max_logit + log(min_p).
    min_p_floor = sorted_desc[:, :1] + jnp.log(t.min_p[:, None])
    threshold = jnp.maximum(threshold, min_p_floor)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def with_logprobs(raw: jax.Array, token_ids: jax.Array, num_logprobs: int) -> SamplerOutput:
    """``token_ids`` with their log-probs and ranks under ``raw`` logits, and the top ``num_logprobs``."""
    logprobs = jax.nn.log_softmax(raw, axis=-1)
    chosen = jnp.take_along_axis(logprobs, token_ids[:, None], axis=-1)[:, 0]
    ranks = jnp.sum(logprobs > chosen[:, None], axis=-1).astype(jnp.int32) + 1
    if num_logprobs > 0:
        top_logprobs, top_ids = lax.top_k(logprobs, num_logprobs)
    else:
        top_logprobs, top_ids = _empty_top(raw.shape[0], 0)
    return SamplerOutput(token_ids=token_ids, logprobs=chosen, ranks=ranks, top_ids=top_ids.astype(jnp.int32),
                         top_logprobs=top_logprobs)


def without_logprobs(token_ids: jax.Array, num_logprobs: int) -> SamplerOutput:
    """``token_ids`` with zeros in the log-prob fields, at the compiled top width."""
    num_rows = token_ids.shape[0]
    top_logprobs, top_ids = _empty_top(num_rows, num_logprobs)
    return SamplerOutput(token_ids=token_ids, logprobs=jnp.zeros((num_rows,), jnp.float32),
                         ranks=jnp.zeros((num_rows,), jnp.int32), top_ids=top_ids, top_logprobs=top_logprobs)


def _empty_top(num_rows: int, width: int):
    return jnp.zeros((num_rows, width), jnp.float32), jnp.zeros((num_rows, width), jnp.int32)


__all__ = ["SamplerOutput", "process_logits", "sample", "with_logprobs", "without_logprobs"]
