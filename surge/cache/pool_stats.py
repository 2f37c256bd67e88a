"""What the KV page pool reports: one frozen snapshot of its counters.

In: the native allocator's counters (`surge._C.BlockAllocator.stats()`, a dict of int64 with exactly these
names) and the number of requests holding pages. Out: `PoolStats`, which `BlockManager.stats()` returns
and the engine reports as `EngineStats.pages`. Lookups are counted in pages here; the prefix-cache hit
rate is the engine's alone (prompt tokens, `EngineStats.prefix_cache_hit_rate`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoolStats:
    # Usable pages (the null page excluded).
    num_total_pages: int
    # Pages in the free queue, cached ones included.
    num_free_pages: int
    # Free pages that still hold a registered hash (a reusable cached prefix).
    num_cached_pages: int
    # Pages held by live requests (ref count > 0).
    num_used_pages: int
    # Full pages the prefix lookup was asked about (every lookup, admitted or not).
    num_queried_pages: int
    # Of those, pages it found cached.
    num_hit_pages: int
    # Hash registrations dropped because an allocation reused their page.
    num_evictions: int
    # The prefix-cache capacity in pages (cache.prefix_cache_capacity x num_total_pages, rounded down).
    max_cached_pages: int
    # Hash registrations dropped to keep num_cached_pages within max_cached_pages.
    num_capacity_evictions: int
    # Requests holding a page table.
    num_requests: int


__all__ = ["PoolStats"]
