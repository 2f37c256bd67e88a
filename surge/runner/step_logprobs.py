"""One step's log-probs, from rows of the sampler's arrays to the requests that asked for them.

In: the step's `SchedulerOutput` (which request ran which positions, in row
order; `sample_rows()` for the sampled rows) and host copies of the step's
`SamplerOutput`s: the sampled rows, and the prompt rows (one per token of the
step, token_ids = the prompt target, -1 for none). Out, keyed by request id:
for generated tokens, one `TokenLogprobs` per sampled row of the request
(draft positions first, in order, then its last); for prompt tokens, the
position of the first prompt token covered and one `TokenLogprobs` per covered
token — chunked prefill covers a prompt over several steps, and a
recomputation after preemption covers the same positions with the same values.
Each keeps the top alternatives its request asked for.
"""

from __future__ import annotations

from surge.sampling.logprobs import TokenLogprobs, read_rows
from surge.scheduler.output import SchedulerOutput


def sampled_logprobs(out: SchedulerOutput, sampled) -> dict[str, list[TokenLogprobs]]:
    result = {}
    for item, rows in zip(out.scheduled, out.sample_rows()):
        k = item.request.sampling_params.logprobs
        if k is not None and item.samples:
            result[item.request.request_id] = read_rows(sampled, rows, k)
    return result


def prompt_logprobs(out: SchedulerOutput, rows) -> dict[str, tuple[int, list[TokenLogprobs]]]:
    result = {}
    start = 0
    for item in out.scheduled:
        request, first, n = item.request, item.num_computed_tokens, item.num_new_tokens
        k = request.sampling_params.prompt_logprobs
        end = min(first + n, request.num_prompt_tokens - 1)
        if k is not None and end > first:
            result[request.request_id] = (first + 1, read_rows(rows, range(start, start + end - first), k))
        start += n
    return result


__all__ = ["prompt_logprobs", "sampled_logprobs"]
