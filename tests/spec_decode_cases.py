"""Checks shared by the speculative-decoding engine tests (ngram/suffix and draft_model).

In: engines keyed by name, one of them "none"; Out: assertions that every engine matches method=none,
that each returned all its pages (the target's and, with a draft model, the draft's pool), and the
chi-square p of two samples of first tokens.
"""

from __future__ import annotations

import numpy as np

from surge import SamplingParams

GREEDY = dict(temperature=0.0, ignore_eos=True)


def assert_clean(engine):
    stats = engine.stats()
    assert stats.pages.num_used_pages == 0 and stats.num_running == 0 and stats.num_waiting == 0, stats
    assert stats.pages.num_free_pages == stats.pages.num_total_pages, stats
    assert not engine.has_unfinished_requests()
    engine.block_manager.check_integrity()
    speculator = engine.scheduler.speculator
    if speculator is not None and speculator.draft is not None:
        assert stats.spec_decode.draft.num_free_pages == stats.spec_decode.draft.num_total_pages, stats
        assert stats.spec_decode.draft.num_requests == 0, stats
        speculator.draft.block_manager.check_integrity()


def completions(outputs):
    return [[(c.text, list(c.token_ids), c.finish_reason, c.stop_reason) for c in o.outputs] for o in outputs]


def run_all(engines, **kwargs):
    """Generate with every engine; all must match method=none. Returns none's outputs and the counters moved."""
    results, moved = {}, {}
    for name, engine in engines.items():
        before = engine.stats().to_dict()
        results[name] = engine.generate(use_tqdm=False, **kwargs)
        after = engine.stats().to_dict()
        moved[name] = {k: after[k] - before.get(k, 0) for k in ("spec_decode_num_draft_tokens",
                                                                 "spec_decode_num_accepted_tokens",
                                                                 "spec_decode_draft_num_calls") if k in after}
        if "spec_decode_acceptance_lengths" in after:
            moved[name]["lengths"] = [a - b for a, b in zip(after["spec_decode_acceptance_lengths"],
                                                           before["spec_decode_acceptance_lengths"])]
        assert_clean(engine)
    for name in engines:
        assert completions(results[name]) == completions(results["none"]), name
    return results["none"], moved


def tokens_kept_after_aborts(engine, prompts, to_abort, max_tokens=20):
    """Runs `prompts` greedily, aborting the `to_abort` indices at step 4; the other requests' tokens."""
    ids = [engine.add_request(prompt_token_ids=p, sampling_params=SamplingParams(max_tokens=max_tokens, **GREEDY))
           for p in prompts]
    done, num_steps = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
        num_steps += 1
        if num_steps == 4:
            for i in to_abort:
                if ids[i] not in done:
                    engine.abort(ids[i])
    assert len(done) == len(prompts)
    assert_clean(engine)
    return [list(done[ids[i]].outputs[0].token_ids) for i in range(len(prompts)) if i not in to_abort]


def chi_square_p(a, b):
    """p of a chi-square test that two samples of tuples have one distribution (cells < 10 pooled)."""
    from scipy.stats import chi2_contingency

    counts = [{}, {}]
    for side, samples in zip(counts, (a, b)):
        for key in samples:
            side[key] = side.get(key, 0) + 1
    cells = sorted(set(counts[0]) | set(counts[1]))
    observed = np.array([[side.get(c, 0) for c in cells] for side in counts], dtype=float)
    big = observed.sum(axis=0) >= 10
    pooled = np.concatenate([observed[:, big], observed[:, ~big].sum(axis=1, keepdims=True)], axis=1)
    assert pooled.shape[1] > 10
    return chi2_contingency(pooled)[1]
