"""SamplingParams: vLLM defaults, normalisation, and validation messages that name the field."""

import pytest

from surge.sampling.params import SamplingParams


def test_defaults_follow_vllm_and_openai():
    p = SamplingParams()
    assert (p.n, p.max_tokens, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 16, 1.0, 1.0, 0, 0.0)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert p.seed is None and p.logprobs is None and p.logit_bias is None
    assert p.stop == [] and p.stop_token_ids == []
    assert not p.ignore_eos and p.min_tokens == 0
    assert not p.include_stop_str_in_output and p.skip_special_tokens
    assert not p.is_greedy and not p.uses_penalties and not p.uses_top_k_top_p_min_p


def test_stop_string_becomes_a_list():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]


def test_logit_bias_string_keys_from_json_become_ints():
    p = SamplingParams(logit_bias={"42": 5, "7": -100.0})
    assert p.logit_bias == {42: 5.0, 7: -100.0}
    assert all(isinstance(k, int) for k in p.logit_bias)


@pytest.mark.parametrize("kwargs, field", [
    (dict(n=0), "n"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-2), "top_k"),
    (dict(min_p=1.1), "min_p"),
    (dict(presence_penalty=2.5), "presence_penalty"),
    (dict(frequency_penalty=-2.1), "frequency_penalty"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(min_tokens=-1), "min_tokens"),
    (dict(min_tokens=20, max_tokens=10), "min_tokens"),
    (dict(logprobs=21), "logprobs"),
    (dict(logprobs=-1), "logprobs"),
    (dict(logit_bias={i: 1.0 for i in range(301)}), "logit_bias"),
    (dict(logit_bias={5: 101.0}), "logit_bias"),
    (dict(logit_bias={"x": 1.0}), "logit_bias"),
    (dict(stop=["ok", ""]), "stop"),
    (dict(stop_token_ids=[-3]), "stop_token_ids"),
    (dict(max_tokens=2.5), "max_tokens"),
    (dict(temperature=float("nan")), "temperature"),
])
def test_invalid_values_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SamplingParams\.{field}"):
        SamplingParams(**kwargs)


def test_boundaries_are_accepted():
    SamplingParams(top_p=1.0, top_k=-1, min_p=1.0, presence_penalty=-2, frequency_penalty=2, logprobs=0,
                   min_tokens=16, max_tokens=16, logit_bias={i: 100.0 for i in range(300)})
    SamplingParams(logprobs=20, temperature=0)


def test_is_greedy():
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams(temperature=0.8, top_k=1).is_greedy
    assert not SamplingParams(temperature=0.8, top_k=2).is_greedy


def test_clone_is_independent_and_replace_revalidates():
    p = SamplingParams(stop=["x"], logit_bias={1: 1.0})
    q = p.clone()
    q.stop.append("y")
    q.logit_bias[2] = 2.0
    assert p.stop == ["x"] and p.logit_bias == {1: 1.0}
    assert p.replace(temperature=0.5).temperature == 0.5
    with pytest.raises(ValueError, match="temperature"):
        p.replace(temperature=-1)
