"""Per-row sampling inputs of one engine step, built on the host with numpy.

In: one ``SamplingRow`` per request that samples this step (its
``SamplingParams``, seed, number of tokens generated so far, EOS ids and, only
when it uses penalties, its token history), the padded row count of the step's
bucket, the vocabulary size and the history width. Out: a ``SamplingTensors``
pytree of numpy arrays (static shapes for a given bucket) that the runner
transfers to the device once per step and passes to ``sampler.sample``.

Cost per step: one Python pass over the rows (no loop over tokens), about
3 us per row on one CPU core (0.1 ms for 32 rows), plus one slice copy per
row that needs a history (penalties; pass it as an int32 numpy array to skip
a list conversion), a logit-bias table (logit_bias) or a suppression list
(min_tokens not yet reached). When no row needs one of those, the table is a
shared, read-only all-padding array (no allocation, no fill). Transfer size
per step is about ``S * (4 * H + 8 * 300 + 4 * 48 + 44)`` bytes; pick
``history_len`` = the model's max length so penalties see the whole sequence
(a longer history keeps its most recent tokens).

Padding rows (beyond ``len(rows)``) are greedy with every feature off; their
sampled tokens are meaningless and ignored by the runner.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import jax
import numpy as np

from surge.sampling.params import MAX_LOGIT_BIAS_ENTRIES, MAX_STOP_TOKEN_IDS, SamplingParams

# Columns of the suppression table: the request's stop_token_ids plus the model's EOS ids.
MAX_EOS_TOKEN_IDS = 16
SUPPRESS_WIDTH = MAX_STOP_TOKEN_IDS + MAX_EOS_TOKEN_IDS
LOGIT_BIAS_WIDTH = MAX_LOGIT_BIAS_ENTRIES
_UINT64_MASK = (1 << 64) - 1
_UINT32_MASK = (1 << 32) - 1


@dataclass
class SamplingRow:
    """What the sampler needs to know about one request this step."""

    params: SamplingParams
    # The request's seed (the engine assigns one when params.seed is None).
    seed: int
    # Tokens the request has generated so far (the index of the token sampled now).
    step: int
    # The model's EOS ids; suppressed before min_tokens unless ignore_eos.
    eos_token_ids: Sequence[int] = ()
    # Prompt then output token ids; read only when params.uses_penalties.
    history: Optional[Sequence[int]] = None
    # How many leading entries of `history` are the prompt.
    num_prompt_tokens: int = 0


@dataclasses.dataclass
class SamplingTensors:
    """Per-row sampling arrays of one step (S rows) plus batch-wide skip flags."""

    temperature: np.ndarray  # f32[S]; 0 for greedy rows
    top_p: np.ndarray  # f32[S]
    top_k: np.ndarray  # int32[S]; 0 = off
    min_p: np.ndarray  # f32[S]
    presence_penalty: np.ndarray  # f32[S]
    frequency_penalty: np.ndarray  # f32[S]
    repetition_penalty: np.ndarray  # f32[S]
    rng_key: np.ndarray  # uint32[S, 2]; threefry2x32 key data of the row's seed
    step: np.ndarray  # int32[S]; folded into the key
    suppress_ids: np.ndarray  # int32[S, SUPPRESS_WIDTH]; -1 = padding
    bias_ids: np.ndarray  # int32[S, LOGIT_BIAS_WIDTH]; -1 = padding
    bias_values: np.ndarray  # f32[S, LOGIT_BIAS_WIDTH]
    history: np.ndarray  # int32[S, H]; prompt then output ids, -1 = padding
    num_prompt_tokens: np.ndarray  # int32[S]; history columns below it are prompt
    all_greedy: np.ndarray  # bool[]
    any_penalties: np.ndarray  # bool[]
    any_top_p_top_k_min_p: np.ndarray  # bool[]
    any_logit_bias: np.ndarray  # bool[]
    any_min_tokens: np.ndarray  # bool[]
    any_logprobs: np.ndarray  # bool[]
    # int32[S, ceil(V / 32)]: bit t % 32 of word t // 32 allows token t (surge.structured); -1 = all allowed
    token_bitmask: np.ndarray
    any_structured: np.ndarray  # bool[]


jax.tree_util.register_dataclass(
    SamplingTensors,
    data_fields=[f.name for f in dataclasses.fields(SamplingTensors)],
    meta_fields=[],
)

# Read-only all-padding tables, shared between steps that do not need them.
_BLANK_TABLES: Dict[Tuple[str, Tuple[int, ...]], np.ndarray] = {}


def _blank(kind: str, shape: Tuple[int, ...], dtype, fill) -> np.ndarray:
    key = (kind, shape)
    table = _BLANK_TABLES.get(key)
    if table is None:
        table = np.full(shape, fill, dtype=dtype)
        table.flags.writeable = False
        _BLANK_TABLES[key] = table
    return table


def seed_to_key_data(seed: int) -> Tuple[int, int]:
    """The threefry2x32 key words (high, low) of ``seed`` taken as an unsigned 64-bit integer.

    For seeds in [0, 2**32) these are the words ``jax.random.PRNGKey(seed)`` makes.
    """
    seed &= _UINT64_MASK
    return (seed >> 32) & _UINT32_MASK, seed & _UINT32_MASK


(_TEMPERATURE, _TOP_P, _TOP_K, _MIN_P, _PRESENCE, _FREQUENCY, _REPETITION, _STEP, _FLAGS_START) = range(9)
_NUM_COLUMNS = _FLAGS_START + 4
# A padding row: greedy, every feature off.
_PADDING_ROW = np.array([0.0, 1.0, 0, 0.0, 0.0, 0.0, 1.0, 0, 0, 0, 0, 0], dtype=np.float64)


def _row_scalars(row: SamplingRow) -> tuple:
    p = row.params
    greedy = p.is_greedy
    top_k = p.top_k if p.top_k > 0 else 0
    return (0.0 if greedy else p.temperature, p.top_p, top_k, p.min_p, p.presence_penalty,
            p.frequency_penalty, p.repetition_penalty, row.step,
            # flags: penalties, logit bias, min_tokens pending, logprobs
            p.uses_penalties, bool(p.logit_bias), row.step < p.min_tokens, p.logprobs is not None)


def build_sampling_tensors(rows: Sequence[SamplingRow], num_rows_padded: int, vocab_size: int,
                           history_len: int, token_bitmask: Optional[np.ndarray] = None) -> SamplingTensors:
    """Numpy ``SamplingTensors`` for ``rows``, padded to ``num_rows_padded`` rows.

    ``token_bitmask`` (int32[num_rows_padded, ceil(vocab_size / 32)], from surge.structured) restricts the
    rows that have a grammar; None allows every token everywhere.
    """
    num_rows = len(rows)
    if num_rows > num_rows_padded:
        raise ValueError(f"num_rows_padded={num_rows_padded} is smaller than the number of rows ({num_rows})")
    if vocab_size < 1:
        raise ValueError(f"vocab_size={vocab_size} must be >= 1")
    if history_len < 1:
        raise ValueError(f"history_len={history_len} must be >= 1")

    # One float64 table of every per-row scalar (exact for the int columns), padded in one go.
    table = np.empty((num_rows_padded, _NUM_COLUMNS), dtype=np.float64)
    table[num_rows:] = _PADDING_ROW
    if num_rows:
        table[:num_rows] = np.array([_row_scalars(row) for row in rows], dtype=np.float64)
    top_k = table[:, _TOP_K]
    top_k[top_k >= vocab_size] = 0

    keys = np.zeros((num_rows_padded, 2), dtype=np.uint32)
    if num_rows:
        seeds = np.array([row.seed & _UINT64_MASK for row in rows], dtype=np.uint64)
        keys[:num_rows, 0] = seeds >> np.uint64(32)
        keys[:num_rows, 1] = seeds & np.uint64(_UINT32_MASK)

    flags = table[:num_rows, _FLAGS_START:] > 0
    penalized, biased, suppressing, wants_logprobs = (np.flatnonzero(flags[:, j]) for j in range(4))
    sampled = table[:num_rows, _TEMPERATURE] > 0
    truncated = sampled & ((table[:num_rows, _TOP_K] > 0) | (table[:num_rows, _TOP_P] < 1)
                           | (table[:num_rows, _MIN_P] > 0))
    history, num_prompt = _history_table(rows, penalized, num_rows_padded, history_len)
    bias_ids, bias_values = _logit_bias_tables(rows, biased, num_rows_padded, vocab_size)
    suppress_ids = _suppress_table(rows, suppressing, num_rows_padded, vocab_size)
    bitmask_shape = (num_rows_padded, (vocab_size + 31) // 32)
    if token_bitmask is not None and token_bitmask.shape != bitmask_shape:
        raise ValueError(f"token_bitmask has shape {token_bitmask.shape}, expected {bitmask_shape}")

    # One conversion per dtype, column-major, so that each field is a contiguous row of it (not one small
    # array per column: the host builds this every step).
    floats = table[:, :_REPETITION + 1].T.astype(np.float32, order="C")
    ints = table[:, (_TOP_K, _STEP)].T.astype(np.int32, order="C")

    return SamplingTensors(
        temperature=floats[_TEMPERATURE],
        top_p=floats[_TOP_P],
        top_k=ints[0],
        min_p=floats[_MIN_P],
        presence_penalty=floats[_PRESENCE],
        frequency_penalty=floats[_FREQUENCY],
        repetition_penalty=floats[_REPETITION],
        rng_key=keys,
        step=ints[1],
        suppress_ids=suppress_ids,
        bias_ids=bias_ids,
        bias_values=bias_values,
        history=history,
        num_prompt_tokens=num_prompt,
        all_greedy=np.bool_(not sampled.any()),
        any_penalties=np.bool_(penalized.size > 0),
        any_top_p_top_k_min_p=np.bool_(truncated.any()),
        any_logit_bias=np.bool_(biased.size > 0),
        any_min_tokens=np.bool_(suppressing.size > 0),
        any_logprobs=np.bool_(wants_logprobs.size > 0),
        token_bitmask=(_blank("bitmask", bitmask_shape, np.int32, -1) if token_bitmask is None
                       else token_bitmask.astype(np.int32, copy=False)),
        any_structured=np.bool_(token_bitmask is not None),
    )


def _history_table(rows, penalized, num_rows_padded, history_len):
    if len(penalized) == 0:
        return (_blank("history", (num_rows_padded, history_len), np.int32, -1),
                _blank("num_prompt", (num_rows_padded,), np.int32, 0))
    history = np.full((num_rows_padded, history_len), -1, dtype=np.int32)
    num_prompt = np.zeros((num_rows_padded,), dtype=np.int32)
    for i in penalized:
        row = rows[i]
        if row.history is None:
            raise ValueError(f"row {i}: SamplingRow.history is required when the request uses penalties")
        tokens = np.asarray(row.history, dtype=np.int32)
        # A sequence longer than the table keeps its most recent tokens; the prompt boundary shifts with it.
        dropped = max(0, len(tokens) - history_len)
        tokens = tokens[dropped:]
        history[i, :len(tokens)] = tokens
        num_prompt[i] = max(0, row.num_prompt_tokens - dropped)
    return history, num_prompt


def _logit_bias_tables(rows, biased, num_rows_padded, vocab_size):
    shape = (num_rows_padded, LOGIT_BIAS_WIDTH)
    if len(biased) == 0:
        return _blank("bias_ids", shape, np.int32, -1), _blank("bias_values", shape, np.float32, 0.0)
    ids = np.full(shape, -1, dtype=np.int32)
    values = np.zeros(shape, dtype=np.float32)
    for i in biased:
        bias = rows[i].params.logit_bias
        row_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        if row_ids.max() >= vocab_size:
            raise ValueError(f"row {i}: logit_bias token id {int(row_ids.max())} is outside the vocabulary "
                             f"(size {vocab_size})")
        ids[i, :len(bias)] = row_ids
        values[i, :len(bias)] = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
    return ids, values


def _suppress_table(rows, suppressing, num_rows_padded, vocab_size):
    shape = (num_rows_padded, SUPPRESS_WIDTH)
    if len(suppressing) == 0:
        return _blank("suppress", shape, np.int32, -1)
    table = np.full(shape, -1, dtype=np.int32)
    for i in suppressing:
        row = rows[i]
        eos = () if row.params.ignore_eos else tuple(row.eos_token_ids)
        if len(eos) > MAX_EOS_TOKEN_IDS:
            raise ValueError(f"row {i}: {len(eos)} EOS ids exceed the supported {MAX_EOS_TOKEN_IDS}")
        ids = [t for t in (*eos, *row.params.stop_token_ids) if t < vocab_size]
        table[i, :len(ids)] = ids
    return table


__all__ = ["LOGIT_BIAS_WIDTH", "SUPPRESS_WIDTH", "SamplingRow", "SamplingTensors", "build_sampling_tensors",
           "seed_to_key_data"]
