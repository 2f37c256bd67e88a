"""surge.structured on its own: specs, the compile worker and its cache, grammar state, bitmasks, the sampler mask.

Uses the tiny byte-level tokenizer of conftest (320 ids) so every check runs in milliseconds.
"""

from __future__ import annotations

from concurrent.futures import Future

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surge.sampling.params import SamplingParams
from surge.sampling.sampler import sample
from surge.sampling.tensors import SamplingRow, build_sampling_tensors
from surge.scheduler.request import Request
from surge.structured import GrammarError, StructuredOutputsParams
from surge.structured.bitmask import bitmask_width, build_token_bitmask
from surge.structured.compiler import GrammarCompiler
from surge.structured.state import GrammarState
from surge.structured.tool_calls import tool_call_grammar
from surge.structured.waiting import WaitingForGrammar

EOS = 2


@pytest.fixture(scope="module")
def tokenizer():
    from conftest import make_tiny_tokenizer

    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def compiler(tokenizer):
    compiler = GrammarCompiler(tokenizer, len(tokenizer), [EOS])
    yield compiler
    compiler.shutdown()


def _generate(compiler, tokenizer, spec, text):
    """Feed `text` token by token through a fresh GrammarState; returns (state, forced tokens, per-step masks)."""
    state = GrammarState(compiler.submit(spec).result(timeout=30).new_matcher(), fast_forward=False)
    allowed = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        mask = build_token_bitmask([state], 1, len(tokenizer))
        allowed.append(bool((mask[0, token // 32] >> (token % 32)) & 1))
        state.accept(token, max_forced=0)
    return state, allowed


def test_spec_needs_exactly_one_field_and_parses_json_text():
    with pytest.raises(ValueError, match="exactly one of"):
        StructuredOutputsParams(regex="a", choice=["b"])
    with pytest.raises(ValueError, match="exactly one of"):
        StructuredOutputsParams()
    with pytest.raises(ValueError, match="not valid JSON"):
        StructuredOutputsParams(json="{not json")
    with pytest.raises(ValueError, match="non-empty list"):
        StructuredOutputsParams(choice=[])
    assert StructuredOutputsParams(json='{"type": "integer"}') == StructuredOutputsParams(json={"type": "integer"})
    assert StructuredOutputsParams.of({"choice": ["a", "b"]}).kind == "choice"
    with pytest.raises(ValueError, match="unknown field"):
        StructuredOutputsParams.of({"jsn": {}})
    with pytest.raises(ValueError, match="SamplingParams.structured_outputs"):
        SamplingParams(structured_outputs={"regex": 3})
    with pytest.raises(ValueError, match="min_tokens.*structured_outputs"):
        SamplingParams(min_tokens=2, structured_outputs={"regex": "a+"})


def test_matching_text_is_allowed_and_other_text_is_not(compiler, tokenizer):
    spec = StructuredOutputsParams(json={"type": "object", "properties": {"n": {"type": "integer"}},
                                         "required": ["n"], "additionalProperties": False})
    state, allowed = _generate(compiler, tokenizer, spec, '{"n": 42}')
    assert all(allowed) and state.matcher.is_accepting()
    _, allowed = _generate(compiler, tokenizer, spec, '{"m": 1}')
    assert allowed[:2] == [True, True] and not all(allowed)  # `{"` fits, `m` does not
    _, allowed = _generate(compiler, tokenizer, StructuredOutputsParams(regex="[0-9]{2}x"), "12x")
    assert all(allowed)
    _, allowed = _generate(compiler, tokenizer, StructuredOutputsParams(regex="[0-9]{2}x"), "1a")
    assert allowed == [True, False]


def test_compile_errors_name_the_problem_and_are_cached(compiler):
    for spec, message in [(StructuredOutputsParams(regex="(abc"), "unclosed group"),
                          (StructuredOutputsParams(grammar="start: nothing_here"), "nothing_here"),
                          (StructuredOutputsParams(json={"type": "nonsense"}, strict=True), "nonsense")]:
        with pytest.raises(GrammarError, match=message):
            compiler.submit(spec).result(timeout=30)
    hits = compiler.num_cache_hits
    assert compiler.submit(StructuredOutputsParams(regex="(abc")).done()
    assert compiler.num_cache_hits == hits + 1


def test_fast_forward_returns_the_forced_tokens(compiler, tokenizer):
    spec = StructuredOutputsParams(json={"type": "object", "properties": {"a_long_fixed_key": {"type": "integer"}},
                                         "required": ["a_long_fixed_key"], "additionalProperties": False})
    compiled = compiler.submit(spec).result(timeout=30)
    state = GrammarState(compiled.new_matcher(), fast_forward=True)
    first = tokenizer.encode("{", add_special_tokens=False)
    assert len(first) == 1
    forced = state.accept(first[0], max_forced=100)
    assert tokenizer.decode(forced).startswith('"a_long_fixed_key":')
    capped = GrammarState(compiled.new_matcher(), fast_forward=True).accept(first[0], max_forced=3)
    assert capped == forced[:3]
    assert GrammarState(compiled.new_matcher(), fast_forward=False).accept(first[0], max_forced=100) == []


def test_tool_call_grammar_forces_a_declared_name(compiler, tokenizer):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
    spec = tool_call_grammar(tools, open_tag="<tool_call>", close_tag="</tool_call>", parallel=False)
    call = '<tool_call>\n{"name": "lookup", "arguments": {"q": "x"}}\n</tool_call>'
    state, allowed = _generate(compiler, tokenizer, spec, call)
    assert all(allowed) and state.is_finished
    _, allowed = _generate(compiler, tokenizer, spec, '<tool_call>\n{"name": "other"')
    assert not all(allowed)
    with pytest.raises(ValueError, match="no declared tool"):
        tool_call_grammar(tools, open_tag="<a>", close_tag="</a>", name="missing")


def test_bitmask_rows_of_unconstrained_requests_allow_everything(compiler, tokenizer):
    state = GrammarState(compiler.submit(StructuredOutputsParams(choice=["ab"])).result(timeout=30).new_matcher(),
                         fast_forward=False)
    assert build_token_bitmask([None, None], 4, len(tokenizer)) is None
    mask = build_token_bitmask([None, state], 4, len(tokenizer))
    assert mask.shape == (4, bitmask_width(len(tokenizer)))
    assert (mask[0] == -1).all() and (mask[2:] == -1).all()
    allowed = [t for t in range(len(tokenizer)) if (mask[1, t // 32] >> (t % 32)) & 1]
    assert allowed and all("ab".startswith(tokenizer.decode([t])) for t in allowed)


def _allowed(mask_row, vocab_size):
    return {t for t in range(vocab_size) if (mask_row[t // 32] >> (t % 32)) & 1}


def test_drafts_are_cut_at_the_first_illegal_token_without_moving_the_matcher(compiler, tokenizer):
    spec = StructuredOutputsParams(regex="(ab|ba)+!")
    state = GrammarState(compiler.submit(spec).result(timeout=30).new_matcher(), fast_forward=False)
    a, b, bang, x = (tokenizer.encode(c, add_special_tokens=False)[0] for c in "ab!x")
    assert state.legal_drafts([a, b, b, a, x, a]) == [a, b, b, a]
    assert state.legal_drafts([x, a]) == [] and state.legal_drafts([]) == []
    assert state.legal_drafts([a, b, bang, a]) == [a, b, bang]  # cut after the token that ends the grammar
    state.accept(a, max_forced=0)  # the checks left the matcher at the start: "a" is still legal
    assert state.legal_drafts([a]) == [] and state.legal_drafts([b, a, b]) == [b, a, b]
    # Fast-forward: cut after a draft that makes the grammar force tokens (they join unsampled).
    keyed = StructuredOutputsParams(json={"type": "object", "properties": {"a_long_fixed_key": {"type": "integer"}},
                                          "required": ["a_long_fixed_key"], "additionalProperties": False})
    forcing = GrammarState(compiler.submit(keyed).result(timeout=30).new_matcher(), fast_forward=True)
    brace = tokenizer.encode("{", add_special_tokens=False)
    rest = tokenizer.encode('"a_long', add_special_tokens=False)
    assert forcing.legal_drafts(brace + rest) == brace


def test_speculated_rows_get_the_mask_after_the_drafts_before_them(compiler, tokenizer):
    vocab = len(tokenizer)
    spec = StructuredOutputsParams(regex="(ab|ba)+!")
    state = GrammarState(compiler.submit(spec).result(timeout=30).new_matcher(), fast_forward=False)
    a, b, bang = (tokenizer.encode(c, add_special_tokens=False)[0] for c in "ab!")
    other = GrammarState(compiler.submit(spec).result(timeout=30).new_matcher(), fast_forward=False)
    # Row 0: a plain constrained request; request 1 (rows 2, 3, then its own row 1) drafts a, b.
    mask = build_token_bitmask([other, None], 4, vocab, speculated=[(state, [a, b], [2, 3, 1])])
    assert mask[0].tolist() == mask[2].tolist()  # both at the start
    assert a in _allowed(mask[2], vocab) and b in _allowed(mask[2], vocab) and bang not in _allowed(mask[2], vocab)
    assert _allowed(mask[3], vocab) & {a, b, bang} == {b}  # after "a": only "b" completes the pair
    assert {a, b, bang} <= _allowed(mask[1], vocab)  # after "ab": another pair or the end
    assert state.legal_drafts([a, b]) == [a, b]  # the matcher was rolled back
    with pytest.raises(ValueError, match="one more"):
        build_token_bitmask([None], 2, vocab, speculated=[(state, [a], [1])])


def test_sampler_applies_the_mask_only_to_constrained_rows():
    vocab, rows_padded = 70, 4
    logits = np.random.default_rng(0).normal(size=(rows_padded, vocab)).astype(np.float32)
    mask = np.full((rows_padded, bitmask_width(vocab)), -1, dtype=np.int32)
    mask[0] = 0
    mask[0, 65 // 32] = 1 << (65 % 32)  # row 0 (greedy) may only take token 65
    mask[2] = 0
    mask[2, 0] = (1 << 3) | (1 << 7)  # row 2 (sampled) only 3 or 7
    rows = [SamplingRow(SamplingParams(temperature=0), seed=0, step=0),
            SamplingRow(SamplingParams(temperature=0), seed=0, step=0),
            SamplingRow(SamplingParams(temperature=1.0), seed=5, step=0)]
    step = jax.jit(sample, static_argnums=2)
    out = jax.device_get(step(jnp.asarray(logits), build_sampling_tensors(rows, rows_padded, vocab, 8, mask), 0))
    assert out.token_ids[0] == 65
    assert out.token_ids[1] == int(np.argmax(logits[1]))
    assert out.token_ids[2] in (3, 7)
    free = jax.device_get(step(jnp.asarray(logits), build_sampling_tensors(rows, rows_padded, vocab, 8), 0))
    assert free.token_ids[1] == out.token_ids[1]
    with pytest.raises(ValueError, match="token_bitmask has shape"):
        build_sampling_tensors(rows, rows_padded, vocab, 8, mask[:, :1])


def test_requests_wait_outside_the_batch_until_their_grammar_is_ready(compiler):
    waiting = WaitingForGrammar(fast_forward=True)
    params = SamplingParams(structured_outputs={"choice": ["x"]})
    first, second = Request("a#0", [1, 2], params), Request("a#1", [1, 2], params)
    pending: Future = Future()
    waiting.add("a", [first, second], pending)
    assert len(waiting) == 2 and not waiting.take_ready().admitted
    pending.set_result(compiler.submit(params.structured_outputs).result(timeout=30))
    ready = waiting.take_ready()
    assert ready.admitted == [[first, second]] and len(waiting) == 0
    assert first.grammar is not None and first.grammar.matcher is not second.grammar.matcher
    failing: Future = Future()
    failing.set_exception(GrammarError("structured_outputs.regex does not compile: bad"))
    waiting.add("b", [Request("b", [1], params)], failing)
    assert waiting.take_ready().failed == [("b", "structured_outputs.regex does not compile: bad")]
    waiting.add("c", [Request("c", [1], params)], Future())
    waiting.discard("c")
    assert len(waiting) == 0
