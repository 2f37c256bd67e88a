"""The on-device sampler and its host-side tensor builder, checked against numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surge.sampling.params import SamplingParams
from surge.sampling.sampler import process_logits, sample
from surge.sampling.tensors import (LOGIT_BIAS_WIDTH, SUPPRESS_WIDTH, SamplingRow, build_sampling_tensors,
                                    seed_to_key_data)

VOCAB = 8
HISTORY = 12
NUM_DRAWS = 2048
SMALL_BATCH = 4

jit_sample = jax.jit(sample, static_argnums=2)
jit_process = jax.jit(process_logits)


def run(logits, rows, num_rows_padded=None, num_logprobs=4):
    """Sample ``rows``; small batches share one padded shape so the tests compile few programs."""
    num_rows_padded = num_rows_padded or max(SMALL_BATCH, len(rows))
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim == 1:
        logits = np.tile(logits, (num_rows_padded, 1))
    elif logits.shape[0] < num_rows_padded:
        logits = np.pad(logits, ((0, num_rows_padded - logits.shape[0]), (0, 0)))
    tensors = build_sampling_tensors(rows, num_rows_padded, logits.shape[1], HISTORY)
    return jax.device_get(jit_sample(jnp.asarray(logits), tensors, num_logprobs)), tensors


def draws(logits, params, seed=123):
    """NUM_DRAWS samples of one request at steps 0..NUM_DRAWS-1, all in one batch."""
    rows = [SamplingRow(params, seed=seed, step=i) for i in range(NUM_DRAWS)]
    out, _ = run(logits, rows)
    return np.bincount(out.token_ids, minlength=len(logits))


def softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


def chi_square(counts, probs):
    keep = probs > 0
    expected = probs[keep] * counts.sum()
    return float(np.sum((counts[keep] - expected) ** 2 / expected))


PROBS = np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.015, 0.005])
LOGITS = np.log(PROBS).astype(np.float32)


def test_greedy_is_argmax_and_padding_rows_are_harmless():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, VOCAB)).astype(np.float32)
    logits[3] = np.nan  # a padding row full of garbage
    rows = [SamplingRow(SamplingParams(temperature=0), seed=i, step=5) for i in range(3)]
    out, tensors = run(logits, rows, num_rows_padded=4)
    assert bool(tensors.all_greedy)
    np.testing.assert_array_equal(out.token_ids[:3], logits[:3].argmax(-1))


def test_temperature_sampling_matches_softmax():
    temperature = 0.7
    counts = draws(LOGITS, SamplingParams(temperature=temperature))
    expected = softmax(LOGITS / temperature)
    # 7 degrees of freedom: 24.3 is the 0.999 quantile.
    assert chi_square(counts, expected) < 24.3, (counts, expected * NUM_DRAWS)


def test_top_k_one_equals_greedy_in_a_mixed_batch():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, VOCAB)).astype(np.float32)
    rows = [SamplingRow(SamplingParams(temperature=1.0, top_k=1), seed=i, step=i) for i in range(3)]
    rows.append(SamplingRow(SamplingParams(temperature=1.0), seed=9, step=0))
    out, tensors = run(logits, rows)
    assert not bool(tensors.all_greedy)
    np.testing.assert_array_equal(out.token_ids[:3], logits[:3].argmax(-1))


def test_top_p_keeps_exactly_the_nucleus():
    # Mass above token 2 is 0.65 < 0.7, above token 3 it is 0.8: the nucleus is {0, 1, 2}.
    counts = draws(LOGITS, SamplingParams(temperature=1.0, top_p=0.7))
    assert set(np.flatnonzero(counts)) == {0, 1, 2}
    nucleus = PROBS[:3] / PROBS[:3].sum()
    assert chi_square(counts[:3], nucleus) < 13.8  # 2 dof, 0.999 quantile


def test_top_k_keeps_the_k_most_likely():
    counts = draws(LOGITS, SamplingParams(temperature=1.0, top_k=2))
    assert set(np.flatnonzero(counts)) == {0, 1}
    assert chi_square(counts[:2], PROBS[:2] / PROBS[:2].sum()) < 10.8


def test_min_p_drops_unlikely_tokens():
    # min_p * p_max = 0.25 * 0.4 = 0.1: tokens 0..3 stay (token 3 sits exactly on the bound).
    counts = draws(LOGITS, SamplingParams(temperature=1.0, min_p=0.25))
    assert set(np.flatnonzero(counts)) == {0, 1, 2, 3}


def test_top_k_top_p_min_p_combine():
    counts = draws(LOGITS, SamplingParams(temperature=1.0, top_k=4, top_p=0.5, min_p=0.1))
    assert set(np.flatnonzero(counts)) == {0, 1}


def penalized_reference(logits, history, num_prompt, presence, frequency, repetition):
    out = logits.astype(np.float64).copy()
    seen = set(history)
    counts = np.bincount(history[num_prompt:], minlength=len(logits))
    for token in seen:
        out[token] = out[token] / repetition if out[token] > 0 else out[token] * repetition
    return out - frequency * counts - presence * (counts > 0)


def test_penalties_change_exactly_the_right_logits():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(SMALL_BATCH, VOCAB)).astype(np.float32) * 3
    prompt, output = [1, 2, 2], [2, 5, 5, 5, 6]
    history = np.array(prompt + output)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=1.5)
    rows = [SamplingRow(params, seed=0, step=len(output), history=history, num_prompt_tokens=len(prompt)),
            SamplingRow(SamplingParams(), seed=1, step=0),
            SamplingRow(SamplingParams(repetition_penalty=0.5), seed=1, step=1, history=[7, 0],
                        num_prompt_tokens=2)]
    tensors = build_sampling_tensors(rows, SMALL_BATCH, VOCAB, HISTORY)
    processed = np.asarray(jit_process(jnp.asarray(logits), tensors))
    np.testing.assert_allclose(processed[0], penalized_reference(logits[0], history, 3, 0.5, 0.25, 1.5),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(processed[[1, 3]], logits[[1, 3]])
    np.testing.assert_allclose(processed[2], penalized_reference(logits[2], np.array([7, 0]), 2, 0, 0, 0.5),
                               rtol=1e-6)


def test_logit_bias_adds_to_the_named_tokens_and_steers_greedy():
    logits = np.zeros((SMALL_BATCH, VOCAB), np.float32)
    logits[:, 0] = 1.0
    rows = [SamplingRow(SamplingParams(temperature=0, logit_bias={"6": 2.0, 3: -5.0}), seed=0, step=0),
            SamplingRow(SamplingParams(temperature=0), seed=0, step=0)]
    tensors = build_sampling_tensors(rows, SMALL_BATCH, VOCAB, HISTORY)
    processed = np.asarray(jit_process(jnp.asarray(logits), tensors))
    expected = logits.copy()
    expected[0, 6] += 2.0
    expected[0, 3] -= 5.0
    np.testing.assert_array_equal(processed, expected)
    out, _ = run(logits, rows)
    assert out.token_ids[:2].tolist() == [6, 0]


def test_min_tokens_suppresses_eos_and_stop_ids_until_reached():
    eos = 4
    logits = np.zeros(VOCAB, np.float32)
    logits[[eos, 6]] = [5.0, 4.0]
    logits[2] = 3.0
    params = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[6])
    tokens = [run(logits, [SamplingRow(params, seed=0, step=step, eos_token_ids=[eos])])[0].token_ids[0]
              for step in range(5)]
    assert tokens == [2, 2, 2, eos, eos]
    ignoring = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[6], ignore_eos=True)
    out, _ = run(logits, [SamplingRow(ignoring, seed=0, step=0, eos_token_ids=[eos])])
    assert out.token_ids[0] == eos  # with ignore_eos, EOS is an ordinary token and is not suppressed


def test_same_seed_and_step_give_the_same_token_whatever_the_batch():
    rng = np.random.default_rng(3)
    vocab = 64
    logits = rng.normal(size=vocab).astype(np.float32) * 0.3
    mine = SamplingParams(temperature=1.0, top_p=0.95, seed=77)
    companions = [SamplingParams(temperature=0), SamplingParams(temperature=0.5, top_k=3),
                  SamplingParams(presence_penalty=1.0, logit_bias={1: 3.0}), SamplingParams(min_p=0.2)]

    def token_at(step, position, others, num_rows_padded, companion_seed):
        rows = [SamplingRow(p, seed=companion_seed + j, step=step + j, history=[1, 2], num_prompt_tokens=1)
                for j, p in enumerate(others)]
        rows.insert(position, SamplingRow(mine, seed=77, step=step))
        batch = rng.normal(size=(num_rows_padded, vocab)).astype(np.float32)
        batch[position] = logits
        out, _ = run(batch, rows, num_rows_padded=num_rows_padded)
        return int(out.token_ids[position])

    for step in range(6):
        alone = token_at(step, 0, [], 4, 0)
        assert token_at(step, 2, companions[:3], 4, 10) == alone
        assert token_at(step, 1, companions[::-1], 8, 99) == alone
    sequence = [token_at(step, 0, [], 4, 0) for step in range(12)]
    assert len(set(sequence)) > 1  # the step really changes the draw


def test_logprobs_are_log_softmax_of_the_raw_logits():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, VOCAB)).astype(np.float32)
    rows = [SamplingRow(SamplingParams(temperature=0.8, logprobs=3, logit_bias={5: 4.0}), seed=1, step=0),
            SamplingRow(SamplingParams(temperature=0, logprobs=0, repetition_penalty=2.0), seed=0, step=0,
                        history=[0, 1, 2], num_prompt_tokens=3)]
    out, _ = run(logits, rows)
    reference = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
    for row in range(2):
        token = out.token_ids[row]
        np.testing.assert_allclose(out.logprobs[row], reference[row, token], rtol=1e-5)
        assert out.ranks[row] == 1 + np.sum(reference[row] > reference[row, token])
        order = np.argsort(-reference[row])[:4]
        np.testing.assert_array_equal(out.top_ids[row], order)
        np.testing.assert_allclose(out.top_logprobs[row], reference[row, order], rtol=1e-5)
    assert out.top_ids.shape == (SMALL_BATCH, 4) and out.top_logprobs.dtype == np.float32


def test_no_logprobs_requested_gives_zeros_of_the_compiled_width():
    out, tensors = run(LOGITS, [SamplingRow(SamplingParams(temperature=0), seed=0, step=0)])
    assert not bool(tensors.any_logprobs)
    assert out.top_ids.shape == (SMALL_BATCH, 4) and np.all(out.logprobs == 0) and np.all(out.ranks == 0)


def test_flags_do_not_recompile():
    step = jax.jit(lambda logits, tensors: sample(logits, tensors, 2))  # a fresh function: its own cache
    logits = jnp.asarray(np.tile(LOGITS, (4, 1)))
    variants = [SamplingParams(temperature=0), SamplingParams(top_p=0.5, logprobs=1),
                SamplingParams(repetition_penalty=1.2, min_tokens=2, logit_bias={1: 1.0})]
    for params in variants:
        rows = [SamplingRow(params, seed=0, step=0, history=[1], num_prompt_tokens=1, eos_token_ids=[0])]
        step(logits, build_sampling_tensors(rows, 4, VOCAB, HISTORY))
    assert step._cache_size() == 1


class TestBuilder:
    def test_padding_rows_and_key_data(self):
        rows = [SamplingRow(SamplingParams(temperature=0.5, top_k=100), seed=2**40 + 5, step=3),
                SamplingRow(SamplingParams(temperature=0.0), seed=-1, step=0)]
        t = build_sampling_tensors(rows, 4, VOCAB, HISTORY)
        np.testing.assert_allclose(t.temperature, [0.5, 0, 0, 0])
        assert t.top_k.tolist() == [0, 0, 0, 0]  # top_k beyond the vocabulary is off
        assert t.top_p.tolist() == [1, 1, 1, 1] and t.repetition_penalty.tolist() == [1, 1, 1, 1]
        assert t.rng_key.tolist() == [[256, 5], [2**32 - 1, 2**32 - 1], [0, 0], [0, 0]]
        assert t.step.tolist() == [3, 0, 0, 0]
        assert seed_to_key_data(7) == tuple(jax.random.key_data(jax.random.PRNGKey(7)).tolist())
        assert not bool(t.all_greedy) and not bool(t.any_top_p_top_k_min_p)

    def test_fast_path_shares_read_only_blank_tables(self):
        rows = [SamplingRow(SamplingParams(), seed=0, step=0)]
        a = build_sampling_tensors(rows, 2, VOCAB, HISTORY)
        b = build_sampling_tensors(rows, 2, VOCAB, HISTORY)
        assert a.history is b.history and not a.history.flags.writeable
        assert a.history.shape == (2, HISTORY) and np.all(a.history == -1)
        assert a.bias_ids.shape == (2, LOGIT_BIAS_WIDTH) and a.suppress_ids.shape == (2, SUPPRESS_WIDTH)
        assert not any(bool(getattr(a, f)) for f in ("any_penalties", "any_logit_bias", "any_min_tokens",
                                                     "any_logprobs"))

    def test_history_keeps_the_most_recent_tokens(self):
        params = SamplingParams(frequency_penalty=1.0)
        history = list(range(20))
        t = build_sampling_tensors([SamplingRow(params, seed=0, step=5, history=history, num_prompt_tokens=15)],
                                   1, 32, HISTORY)
        assert t.history[0].tolist() == history[-HISTORY:]
        assert t.num_prompt_tokens.tolist() == [7]

    def test_suppression_only_while_below_min_tokens(self):
        params = SamplingParams(min_tokens=2, stop_token_ids=[3, 5])
        rows = [SamplingRow(params, seed=0, step=1, eos_token_ids=[2]),
                SamplingRow(params, seed=0, step=2, eos_token_ids=[2])]
        t = build_sampling_tensors(rows, 2, VOCAB, HISTORY)
        assert t.suppress_ids[0, :4].tolist() == [2, 3, 5, -1]
        assert np.all(t.suppress_ids[1] == -1)

    @pytest.mark.parametrize("make, message", [
        (lambda: build_sampling_tensors([SamplingRow(SamplingParams(), seed=0, step=0)] * 3, 2, VOCAB, HISTORY),
         "num_rows_padded"),
        (lambda: build_sampling_tensors([SamplingRow(SamplingParams(logit_bias={99: 1.0}), seed=0, step=0)], 1,
                                        VOCAB, HISTORY), "logit_bias"),
        (lambda: build_sampling_tensors([SamplingRow(SamplingParams(presence_penalty=1.0), seed=0, step=0)], 1,
                                        VOCAB, HISTORY), "history"),
    ])
    def test_errors_name_the_problem(self, make, message):
        with pytest.raises(ValueError, match=message):
            make()

