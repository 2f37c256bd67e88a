"""BlockManager: the per-request page verbs the scheduler uses.

In: request ids with token counts (allocate, free), their token ids (lookup_prefix,
cache_full_pages) and an optional tenant cache salt. Out: page tables (lists of
page ids, page 0 = the null page), prefix-cache hits and counters (`PoolStats`).

It owns one ``surge._C.BlockAllocator`` and is the only holder of references in it,
so the sum of the pages every live request holds equals the allocator's ref counts
(``check_integrity`` proves it). Prefix caching hashes each full page with the hash
of the page before it as parent; the cache salt enters only the first page's hash,
so requests with different salts never share a page.

``prefix_cache_capacity`` is the fraction of the usable pages that may stay cached
once no request holds them; the allocator evicts the page cached longest ago beyond
it (1.0: every free page may keep its prefix; 0.0: only pages held by live requests
are shared).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Sequence

from surge._C import BlockAllocator
from surge.cache.pool_stats import PoolStats

NULL_PAGE = 0


def salt_to_extra_key(cache_salt: str | None) -> int:
    """Stable 64-bit key of a cache salt (the same in every process); None -> 0."""
    if cache_salt is None:
        return 0
    return int.from_bytes(hashlib.blake2b(cache_salt.encode("utf-8"), digest_size=8).digest(), "little")


class BlockManager:
    def __init__(self, num_pages: int, page_size: int, enable_prefix_caching: bool = True,
                 prefix_cache_capacity: float = 1.0):
        if not 0.0 <= prefix_cache_capacity <= 1.0:
            raise ValueError(f"prefix_cache_capacity={prefix_cache_capacity} must be in [0, 1] "
                             "(the fraction of the page pool kept as cached prefixes)")
        self.page_size = page_size
        self.enable_prefix_caching = enable_prefix_caching
        max_cached_pages = int(prefix_cache_capacity * (num_pages - 1))
        self._allocator = BlockAllocator(num_pages, page_size, max_cached_pages)
        self._page_tables: dict[str, list[int]] = {}
        # request id -> (number of its leading pages already hashed, hash of the last of them)
        self._hash_progress: dict[str, tuple[int, int]] = {}

    @property
    def num_total_pages(self) -> int:
        return self._allocator.num_pages - 1

    @property
    def num_free_pages(self) -> int:
        return self._allocator.num_free_pages

    @property
    def num_used_pages(self) -> int:
        return self.num_total_pages - self._allocator.num_free_pages

    @property
    def num_cached_pages(self) -> int:
        return self._allocator.stats()["num_cached_pages"]

    def lookup_prefix(self, token_ids: Sequence[int], cache_salt: str | None = None) -> list[int]:
        """Pages holding the longest cached prefix of full pages of token_ids.

        At most (len(token_ids) - 1) // page_size pages, so the last token is always left
        to compute (its logits are needed). Takes no references: pass the result to
        ``allocate`` before any other allocation can evict those pages.
        """
        if not self.enable_prefix_caching or len(token_ids) == 0:
            return []
        max_pages = (len(token_ids) - 1) // self.page_size
        return self._allocator.find_prefix(list(token_ids), salt_to_extra_key(cache_salt), max_pages)

    def first_page_hash(self, token_ids: Sequence[int], cache_salt: str | None = None) -> int | None:
        """The prefix-cache hash of token_ids' first full page (salt included), or None when no page of them
        could be reused: prefix caching off, or too few tokens (the last token is always computed)."""
        if not self.enable_prefix_caching or len(token_ids) <= self.page_size:
            return None
        return BlockAllocator.hash_page(0, list(token_ids[:self.page_size]), salt_to_extra_key(cache_salt))

    def holds_first_page(self, token_ids: Sequence[int], cache_salt: str | None = None) -> bool:
        """Whether token_ids' first full page is cached here (a lookup: the pool's page counters count it)."""
        if self.first_page_hash(token_ids, cache_salt) is None:
            return False
        return len(self.lookup_prefix(token_ids[:self.page_size + 1], cache_salt)) == 1

    def _plan(self, request_id: str, num_tokens: int, computed_pages: Sequence[int]) -> tuple[int, int]:
        """(pages to allocate, pages free for it) for allocate/can_allocate; validates the call."""
        if num_tokens < 0:
            raise ValueError(f"request {request_id!r}: num_tokens={num_tokens} must be >= 0")
        num_needed = -(-num_tokens // self.page_size)
        table = self._page_tables.get(request_id)
        if table is not None:
            if computed_pages:
                raise ValueError(f"request {request_id!r} already holds pages; computed_pages are only "
                                 f"accepted on its first allocate")
            return max(0, num_needed - len(table)), self._allocator.num_free_pages
        if len(computed_pages) > num_needed:
            raise ValueError(f"request {request_id!r}: {len(computed_pages)} computed pages exceed the "
                             f"{num_needed} pages that num_tokens={num_tokens} needs")
        for page in computed_pages:
            if self._allocator.page_hash(page) is None:
                raise ValueError(f"request {request_id!r}: computed page {page} holds no cached prefix "
                                 f"(evicted since lookup_prefix, or never registered)")
        # Cached pages about to be touched leave the free queue, so they cannot also be allocated.
        num_reclaimed = sum(1 for page in set(computed_pages) if self._allocator.ref_count(page) == 0)
        return num_needed - len(computed_pages), self._allocator.num_free_pages - num_reclaimed

    def can_allocate(self, request_id: str, num_tokens: int, computed_pages: Sequence[int] = ()) -> bool:
        num_new, num_free = self._plan(request_id, num_tokens, computed_pages)
        return num_new <= num_free

    def allocate(self, request_id: str, num_tokens: int, computed_pages: Sequence[int] = ()) -> list[int] | None:
        """Make request_id hold pages for num_tokens tokens in total.

        Returns the newly allocated page ids, or None (changing nothing) when too few are free.
        """
        num_new, num_free = self._plan(request_id, num_tokens, computed_pages)
        if num_new > num_free:
            return None
        table = self._page_tables.get(request_id)
        if table is None:
            computed = list(computed_pages)
            self._allocator.touch(computed)
            table = self._page_tables[request_id] = computed
            last_hash = self._allocator.page_hash(computed[-1]) if computed else 0
            self._hash_progress[request_id] = (len(computed), last_hash)
        new_pages = self._allocator.allocate(num_new)
        table.extend(new_pages)
        return new_pages

    def pages(self, request_id: str) -> list[int]:
        """The request's page table, in order (released leading pages read 0)."""
        return list(self._table(request_id))

    def cache_full_pages(self, request_id: str, token_ids: Sequence[int], num_tokens: int,
                         cache_salt: str | None = None) -> None:
        """Register every page full within the first num_tokens of token_ids not hashed yet."""
        table = self._table(request_id)
        if not self.enable_prefix_caching:
            return
        if not 0 <= num_tokens <= len(token_ids):
            raise ValueError(f"request {request_id!r}: num_tokens={num_tokens} must be in "
                             f"[0, len(token_ids)={len(token_ids)}]")
        num_full = min(num_tokens // self.page_size, len(table))
        num_hashed, parent = self._hash_progress[request_id]
        extra_key = salt_to_extra_key(cache_salt)
        for index in range(num_hashed, num_full):
            page_tokens = list(token_ids[index * self.page_size:(index + 1) * self.page_size])
            parent = BlockAllocator.hash_page(parent, page_tokens, extra_key if index == 0 else 0)
            if table[index] != NULL_PAGE:
                # False means another page holds this content already; this one stays a plain page.
                self._allocator.register(table[index], parent, page_tokens)
        if num_full > num_hashed:
            self._hash_progress[request_id] = (num_full, parent)

    def free(self, request_id: str) -> None:
        """Drop the request's references, tail page first, so its tail is evicted first."""
        table = self._table(request_id)
        self._allocator.free([page for page in reversed(table) if page != NULL_PAGE])
        del self._page_tables[request_id]
        del self._hash_progress[request_id]

    def release_leading_pages(self, request_id: str, num_pages: int) -> int:
        """Free the pages at positions [0, num_pages) not yet released; they read 0 afterwards.

        Sliding-window support. The pages are freed last-first, so the head of the sequence,
        the most shareable prefix, stays cached longest. Returns how many were freed.
        """
        table = self._table(request_id)
        if not 0 <= num_pages <= len(table):
            raise ValueError(f"request {request_id!r}: num_pages={num_pages} must be in "
                             f"[0, {len(table)}] (the pages it holds)")
        released = [page for page in table[:num_pages] if page != NULL_PAGE]
        self._allocator.free(released[::-1])
        table[:num_pages] = [NULL_PAGE] * num_pages
        return len(released)

    def release_trailing_pages(self, request_id: str, num_tokens: int) -> int:
        """Free the pages past the first ceil(num_tokens / page_size) (rejected speculative tokens' slots).

        Those pages hold no full hashed page of the request (hashing stops at its computed tokens), so
        they go back to the free queue as plain pages. Returns how many were freed.
        """
        table = self._table(request_id)
        keep = -(-num_tokens // self.page_size)
        if not 0 <= keep <= len(table):
            raise ValueError(f"request {request_id!r}: num_tokens={num_tokens} needs {keep} pages but it holds "
                             f"{len(table)}")
        num_hashed, _ = self._hash_progress[request_id]
        if keep < num_hashed:
            raise ValueError(f"request {request_id!r}: cannot release hashed pages (keeping {keep} of "
                             f"{num_hashed} hashed)")
        released = [page for page in table[keep:] if page != NULL_PAGE]
        self._allocator.free(released[::-1])
        del table[keep:]
        return len(released)

    def reset_prefix_cache(self) -> bool:
        """Drop every cached prefix; refused (False) while any request holds a page."""
        return self._allocator.reset_prefix_cache()

    def check_integrity(self) -> None:
        """Raise RuntimeError unless the allocator is consistent and its ref counts are the holdings."""
        self._allocator.check_integrity()
        holdings = Counter(page for table in self._page_tables.values() for page in table if page != NULL_PAGE)
        for page, ref_count in enumerate(self._allocator.ref_counts()):
            if ref_count != holdings.get(page, 0):
                holders = sorted(rid for rid, table in self._page_tables.items() if page in table)
                raise RuntimeError(f"BlockManager integrity: page {page} has ref count {ref_count} but live "
                                   f"requests hold it {holdings.get(page, 0)} times (holders: {holders})")

    def stats(self) -> PoolStats:
        """The pool's counters. Lookups are counted in pages here (every lookup_prefix call); the prefix-cache
        hit rate is the engine's alone (prompt tokens served / looked up, once per admitted request)."""
        return PoolStats(**self._allocator.stats(), num_requests=len(self._page_tables))

    def _table(self, request_id: str) -> list[int]:
        table = self._page_tables.get(request_id)
        if table is None:
            raise KeyError(f"unknown request id {request_id!r}: it holds no pages")
        return table
