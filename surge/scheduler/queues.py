"""Waiting queues of the two scheduling policies.

In: requests that wait for their first (or, after preemption, next) admission.
Out: the next request to admit (`peek` / `pop`), and which running request to
preempt when pages run out (`pick_victim`).

- fcfs: arrival order; a preempted request goes back to the front; the victim is
  the most recently admitted running request.
- priority: lower `priority` first, ties by arrival; the victim is the running
  request with the worst (priority, arrival).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Iterator, Optional, Sequence

from surge.scheduler.request import Request


class FcfsQueue:
    def __init__(self) -> None:
        self._queue: deque[Request] = deque()

    def add(self, request: Request) -> None:
        self._queue.append(request)

    def add_preempted(self, request: Request) -> None:
        self._queue.appendleft(request)

    def peek(self) -> Optional[Request]:
        return self._queue[0] if self._queue else None

    def pop(self) -> Request:
        return self._queue.popleft()

    def remove(self, request: Request) -> None:
        self._queue.remove(request)

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._queue)

    @staticmethod
    def pick_victim(running: Sequence[Request]) -> Request:
        return running[-1]


class PriorityQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, Request]] = []
        self._counter = itertools.count()
        self._removed: set[int] = set()

    def add(self, request: Request) -> None:
        heapq.heappush(self._heap, (request.priority, request.arrival_time, next(self._counter), request))

    add_preempted = add

    def _drop_removed(self) -> None:
        while self._heap and id(self._heap[0][3]) in self._removed:
            self._removed.discard(id(heapq.heappop(self._heap)[3]))

    def peek(self) -> Optional[Request]:
        self._drop_removed()
        return self._heap[0][3] if self._heap else None

    def pop(self) -> Request:
        self._drop_removed()
        return heapq.heappop(self._heap)[3]

    def remove(self, request: Request) -> None:
        self._removed.add(id(request))
        self._drop_removed()

    def __len__(self) -> int:
        return len(self._heap) - len(self._removed)

    def __iter__(self) -> Iterator[Request]:
        return (entry[3] for entry in sorted(self._heap) if id(entry[3]) not in self._removed)

    @staticmethod
    def pick_victim(running: Sequence[Request]) -> Request:
        return max(running, key=lambda r: (r.priority, r.arrival_time))


def make_queue(policy: str):
    if policy == "fcfs":
        return FcfsQueue()
    if policy == "priority":
        return PriorityQueue()
    raise ValueError(f"unknown scheduling policy {policy!r}; expected fcfs or priority")
