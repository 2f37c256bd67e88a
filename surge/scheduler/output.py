"""SchedulerOutput: the one contract between the scheduler and the model runner.

In: built by Scheduler.schedule(). Out: read by ModelRunner.execute() (which
tokens of which request to run, on which pages) and handed back to
Scheduler.update() with the sampled ids. With async scheduling a scheduled
token may not be on the host yet (it was sampled by the step still running):
the runner takes it from that step's sampled ids on the device.

A speculating request runs its last token followed by its draft tokens (`draft_token_ids`, counted in
`num_new_tokens`); the step samples at each of those positions. `sample_rows()` says which rows of
the step's sampled arrays belong to which request: row i is request i's last position (as without
speculation), and the rows after the last request hold the draft positions, request by request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from surge.scheduler.request import Request


@dataclass
class ScheduledRequest:
    request: Request
    # KV already in the cache before this step (the first position run now).
    num_computed_tokens: int
    # Tokens run this step: token_ids[num_computed_tokens : num_computed_tokens + num_new_tokens].
    num_new_tokens: int
    # The request's page table (page ids in order) covering every token after this step.
    page_ids: list[int]
    # True when this step reaches the end of the request's tokens (sampled ones still on the device
    # included), so a new token is sampled; fixed when scheduled.
    samples: bool = False
    # Speculative decoding: draft tokens run after the request's last known token (the last
    # len(draft_token_ids) of the num_new_tokens); empty when it does not speculate this step.
    draft_token_ids: list[int] = field(default_factory=list)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    num_batched_tokens: int = 0
    # Requests preempted while building this step (their pages were freed; they will recompute).
    preempted_ids: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def num_draft_tokens(self) -> int:
        return sum(len(item.draft_token_ids) for item in self.scheduled)

    def sample_rows(self) -> list[list[int]]:
        """Per scheduled request, its rows of the step's sampled arrays in position order.

        Request i with d drafts: the d rows of its positions before the last, then row i (its last).
        """
        rows, next_row = [], len(self.scheduled)
        for i, item in enumerate(self.scheduled):
            d = len(item.draft_token_ids)
            rows.append(list(range(next_row, next_row + d)) + [i])
            next_row += d
        return rows
