"""One step's prompt log-probs, from token rows of the batch to prompt positions of each request.

In: the step's `SchedulerOutput` (which request ran which positions, in row
order) and the runner's per-row prompt log-probs (`StepResult.prompt_logprobs`,
a numpy `SamplerOutput` whose token_ids are the targets, -1 for none). Out, per
request that asked: (request id, position of the first prompt token covered,
one `SampledLogprobs` per covered token), which `OutputProcessor` stores under
those positions — chunked prefill fills them over several steps, and a
recomputation after preemption overwrites them with the same values.
"""

from __future__ import annotations

from typing import Iterator

from surge.engine.outputs import SampledLogprobs


def prompt_logprob_rows(out, rows) -> Iterator[tuple[str, int, list[SampledLogprobs]]]:
    start = 0
    for item in out.scheduled:
        request, first, n = item.request, item.num_computed_tokens, item.num_new_tokens
        k = request.sampling_params.prompt_logprobs
        end = min(first + n, request.num_prompt_tokens - 1)
        if k is not None and end > first:
            span = range(start, start + end - first)
            entries = [SampledLogprobs(float(rows.logprobs[r]), int(rows.ranks[r]), rows.top_ids[r][:k].tolist(),
                                       rows.top_logprobs[r][:k].tolist()) for r in span]
            yield request.request_id, first + 1, entries
        start += n
