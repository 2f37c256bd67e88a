"""Which data-parallel replica a new request joins: the least-loaded one, with prefix-cache affinity.

In: the replicas (their schedulers' running + waiting sequences and their block managers), and for each new
request its id, prompt token ids, cache salt and number of sequences (n siblings always join one replica, so
they share their prompt's pages). Out: the replica index, remembered until `forget(request_id)` so aborts and
stops reach the right scheduler.

The load of a replica is the sequences it holds (running + waiting); ties go to the replica with fewer pages
in use, then the lower index. Affinity: a prompt's first full page (its prefix-cache hash, salt included) is
looked up on every replica; a replica that holds it cached, or that was given a live request with the same
first page (its prefill may still be running, so the page is not cached yet), takes the request unless it
holds more than `affinity_slack` sequences over the least-loaded replica (engine.data_parallel_affinity_slack).
With one replica nothing is looked up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence


@dataclass
class PlacementCounters:
    num_placed: int = 0  # requests placed on this replica
    num_affinity_placed: int = 0  # of those, placed here because this replica held their first page
    num_affinity_overridden: int = 0  # requests whose first page was here but went elsewhere (this was too loaded)


@dataclass
class _Placed:
    replica: int
    first_page: Optional[int]


@dataclass
class ReplicaRouter:
    replicas: Sequence  # surge.parallel.data_parallel.Replica, in index order
    affinity_slack: int
    _placed: dict = field(default_factory=dict)  # request id -> _Placed
    _routed: dict = field(default_factory=dict)  # first-page hash -> Counter(replica index -> live requests)

    def __post_init__(self) -> None:
        self.counters = [PlacementCounters() for _ in self.replicas]

    def place(self, request_id: str, token_ids: Sequence[int], cache_salt: Optional[str] = None) -> int:
        """The replica index for a new request (all its n sequences)."""
        if request_id in self._placed:
            raise ValueError(f"request id {request_id!r} is already placed on replica {self._placed[request_id].replica}")
        first_page = None
        chosen = 0
        if len(self.replicas) > 1:
            least = min(range(len(self.replicas)), key=self._load_order)
            chosen = least
            first_page = self.replicas[0].block_manager.first_page_hash(token_ids, cache_salt)
            holder = self._holder(first_page, token_ids, cache_salt) if first_page is not None else None
            if holder is not None:
                if self.replicas[holder].num_seqs <= self.replicas[least].num_seqs + self.affinity_slack:
                    chosen = holder
                    self.counters[holder].num_affinity_placed += 1
                else:
                    self.counters[holder].num_affinity_overridden += 1
        self._placed[request_id] = _Placed(chosen, first_page)
        self.counters[chosen].num_placed += 1
        if first_page is not None:
            self._routed.setdefault(first_page, Counter())[chosen] += 1
        return chosen

    def replica_of(self, request_id: str) -> Optional[int]:
        """Where a placed request lives; None when it was never placed (e.g. still waiting for its grammar)."""
        placed = self._placed.get(request_id)
        return placed.replica if placed is not None else None

    def forget(self, request_id: str) -> None:
        """The request finished or was aborted: it no longer draws its first page's followers."""
        placed = self._placed.pop(request_id, None)
        if placed is None or placed.first_page is None:
            return
        routed = self._routed[placed.first_page]
        routed[placed.replica] -= 1
        if routed[placed.replica] <= 0:
            del routed[placed.replica]
        if not routed:
            del self._routed[placed.first_page]

    def _load_order(self, index: int) -> tuple:
        replica = self.replicas[index]
        return replica.num_seqs, replica.block_manager.num_used_pages, index

    def _holder(self, first_page: int, token_ids: Sequence[int], cache_salt: Optional[str]) -> Optional[int]:
        """The least-loaded replica that caches the first page or runs a request with it; None if none does."""
        routed = self._routed.get(first_page, Counter())
        holders = [i for i, replica in enumerate(self.replicas)
                   if routed.get(i, 0) > 0 or replica.block_manager.holds_first_page(token_ids, cache_salt)]
        return min(holders, key=self._load_order) if holders else None


__all__ = ["PlacementCounters", "ReplicaRouter"]
