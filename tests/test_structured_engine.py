"""Structured output in the engine (SmolLM2, in process): fast-forward, batch sharing, compiles, errors.

Two engines, identical but for engine.structured_output_fast_forward. Steps are counted from stats().
"""

from __future__ import annotations

import json

import jsonschema
import pytest

import surge
from surge import SamplingParams

pytestmark = pytest.mark.slow

# Long fixed keys: most of the output is forced, so fast-forward skips most steps.
FIXED_KEYS = {"type": "object", "properties": {
    "customer_account_holder_is_verified": {"type": "boolean"},
    "customer_preferred_contact_channel": {"enum": ["email", "phone"]},
    "customer_loyalty_programme_member": {"type": "boolean"},
}, "required": ["customer_account_holder_is_verified", "customer_preferred_contact_channel",
                "customer_loyalty_programme_member"], "additionalProperties": False}
OPTIONS = dict(max_num_seqs=8, max_model_len=512, max_num_batched_tokens=128, token_buckets=[16, 128],
               num_pages=256, progress=False)


@pytest.fixture(scope="module")
def engines(smollm2_gguf):
    on = surge.Engine.from_pretrained(smollm2_gguf, **OPTIONS)
    off = surge.Engine.from_pretrained(smollm2_gguf, structured_output_fast_forward=False, **OPTIONS)
    # The compile counter is process-wide: its value once both engines are warm.
    return on, off, off.stats().num_compiles


def _prompt(engine, text):
    return engine.apply_chat_template([{"role": "user", "content": text}])


def _steps_per_token(engine, prompt, params):
    before = engine.stats()
    out = engine.generate([prompt], params, use_tqdm=False)[0].outputs[0]
    after = engine.stats()
    steps = after.num_steps - before.num_steps
    return out, steps / (after.num_generation_tokens - before.num_generation_tokens)


def test_fast_forward_takes_fewer_steps_for_the_same_text(engines):
    on, off, _ = engines
    prompt = _prompt(on, "Describe a bank customer as JSON.")
    greedy = SamplingParams(max_tokens=120, temperature=0, structured_outputs={"json": FIXED_KEYS})
    out_on, ratio_on = _steps_per_token(on, prompt, greedy)
    out_off, ratio_off = _steps_per_token(off, prompt, greedy)
    assert out_on.text == out_off.text and out_on.finish_reason == "stop"
    jsonschema.validate(json.loads(out_on.text), FIXED_KEYS)
    assert ratio_on <= 0.7, ratio_on
    assert ratio_off == 1.0
    sampled = greedy.replace(temperature=0.8, seed=11)
    assert on.generate([prompt], sampled, use_tqdm=False)[0].outputs[0].text == \
        off.generate([prompt], sampled, use_tqdm=False)[0].outputs[0].text


def test_unconstrained_greedy_output_is_unchanged_beside_constrained_requests(engines):
    engine = engines[0]
    free = [_prompt(engine, text) for text in ("Name a fruit.", "Say hello.", "Count to five.")]
    greedy = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    alone = [o.outputs[0].token_ids for o in engine.generate(free, greedy, use_tqdm=False)]
    constrained = [SamplingParams(max_tokens=60, temperature=0.8, seed=i, structured_outputs={"json": FIXED_KEYS})
                   for i in range(3)]
    mixed = engine.generate(free + [_prompt(engine, "A customer as JSON.")] * 3, [greedy] * 3 + constrained,
                            use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed[:3]] == alone
    for out in mixed[3:]:
        jsonschema.validate(json.loads(out.outputs[0].text), FIXED_KEYS)


def test_python_api_errors_and_no_compiles_while_serving(engines):
    engine, _, num_compiles = engines
    with pytest.raises(ValueError, match="does not compile"):
        engine.generate(["x"], SamplingParams(max_tokens=4, structured_outputs={"grammar": "start: undefined_rule"}),
                        use_tqdm=False)
    outs = engine.generate(["The colour of the sky is"] * 4, [SamplingParams(
        max_tokens=8, temperature=0.8, seed=s, structured_outputs={"choice": ["blue", "grey"]}) for s in range(4)],
        use_tqdm=False)
    assert {o.outputs[0].text for o in outs} <= {"blue", "grey"}
    stats = engine.stats()
    assert stats.num_compiles == num_compiles  # nothing compiled for any constrained request of this module
    assert stats.pages.num_used_pages == 0 and stats.num_waiting_for_grammar == 0
    engine.block_manager.check_integrity()
