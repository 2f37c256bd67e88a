"""Prompt log-probabilities on device: what the prefill's logits say about each next prompt token.

In: the final hidden states of every token of the step [T, hidden], a function
that turns hidden rows into float32 logits (the model's norm + LM head), the
target of each row int32[T] — the prompt token that follows that position, or
-1 where no request asked (or the position is the prompt's last) — a batch flag
saying whether any row has a target, and the static top-k width. Out: a
`SamplerOutput` over the T rows (token_ids = the targets), the same log-prob
representation the sampler returns for generated tokens. All of it sits under
one `lax.cond`, so a step where nobody asks pays no LM head over its tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from surge.sampling.sampler import SamplerOutput, with_logprobs, without_logprobs


def prompt_logprobs(hidden: jax.Array, to_logits: Callable[[jax.Array], jax.Array], targets: jax.Array,
                    wanted: jax.Array, num_logprobs: int) -> SamplerOutput:
    def compute(hidden: jax.Array, targets: jax.Array) -> SamplerOutput:
        return with_logprobs(to_logits(hidden), jnp.maximum(targets, 0), num_logprobs)

    def skip(hidden: jax.Array, targets: jax.Array) -> SamplerOutput:
        return without_logprobs(targets, num_logprobs)

    scored = lax.cond(wanted, compute, skip, hidden, targets)
    return dataclasses.replace(scored, token_ids=targets)
