"""Requests whose grammar is still compiling: they wait here, in the queue, never in a batch.

In: the engine's new constrained requests (all children of one user request)
with the future of their grammar. Out, each time the engine asks: the groups
whose grammar is ready, each child holding its own ``GrammarState``, and the
groups whose grammar failed, with the error to report. An abort drops a group
at once. No pages are held by anything in here.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Sequence

from surge.structured.state import GrammarState


@dataclass
class _Group:
    request_id: str
    requests: list
    future: Future


@dataclass
class GrammarReady:
    admitted: list = field(default_factory=list)  # lists of requests (one user request's children)
    admitted_ids: list = field(default_factory=list)  # the user request id of each admitted list, in order
    failed: list = field(default_factory=list)  # (user request id, error message)


class WaitingForGrammar:
    def __init__(self, fast_forward: bool) -> None:
        self.fast_forward = fast_forward
        self._groups: list[_Group] = []

    def __len__(self) -> int:
        return sum(len(group.requests) for group in self._groups)

    def add(self, request_id: str, requests: Sequence, future: Future) -> None:
        self._groups.append(_Group(request_id, list(requests), future))

    def discard(self, request_id: str) -> None:
        self._groups = [group for group in self._groups if group.request_id != request_id]

    def take_ready(self) -> GrammarReady:
        ready = GrammarReady()
        still_waiting = []
        for group in self._groups:
            if not group.future.done():
                still_waiting.append(group)
                continue
            error = group.future.exception()
            if error is not None:
                ready.failed.append((group.request_id, str(error)))
                continue
            self.attach(group.requests, group.future.result())
            ready.admitted.append(group.requests)
            ready.admitted_ids.append(group.request_id)
        self._groups = still_waiting
        return ready

    def attach(self, requests: Sequence, compiled) -> None:
        """Give each request its own matcher; forced tokens carry no log-probabilities, so no fast-forward then."""
        for request in requests:
            fast_forward = self.fast_forward and request.sampling_params.logprobs is None
            request.grammar = GrammarState(compiled.new_matcher(), fast_forward)

    def wait(self, timeout: float) -> None:
        """Block until some grammar is ready or ``timeout`` seconds pass (when nothing else can run)."""
        if self._groups:
            wait([group.future for group in self._groups], timeout=timeout, return_when=FIRST_COMPLETED)


__all__ = ["GrammarReady", "WaitingForGrammar"]
