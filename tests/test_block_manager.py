"""surge.cache.block_manager.BlockManager: per-request pages, prefix caching, sliding window,
and a stateful property test against a pure-Python model of the allocator's rules."""

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from surge.cache.block_manager import BlockManager, salt_to_extra_key


def test_allocate_grow_and_free_with_exact_page_ids():
    bm = BlockManager(num_pages=8, page_size=4)
    assert (bm.num_total_pages, bm.num_free_pages, bm.num_used_pages) == (7, 7, 0)
    assert bm.allocate("a", 5) == [1, 2]
    assert bm.allocate("a", 8) == []
    assert bm.allocate("a", 9) == [3]
    assert bm.allocate("b", 4) == [4]
    assert bm.pages("a") == [1, 2, 3] and bm.pages("b") == [4]
    assert (bm.num_free_pages, bm.num_used_pages) == (3, 4)
    bm.free("a")  # tail first: the queue becomes 5, 6, 7, 3, 2, 1
    assert bm.allocate("c", 16) == [5, 6, 7, 3]
    assert bm.allocate("d", 4) == [2]
    bm.check_integrity()
    assert bm.stats().num_requests == 3


def test_allocate_returns_none_and_changes_nothing_when_pages_run_out():
    bm = BlockManager(num_pages=4, page_size=4)
    assert bm.allocate("a", 8) == [1, 2]
    assert not bm.can_allocate("a", 13)
    assert bm.allocate("a", 13) is None
    assert bm.allocate("b", 8) is None
    assert bm.pages("a") == [1, 2] and bm.num_free_pages == 1
    with pytest.raises(KeyError, match="'b'"):
        bm.pages("b")
    assert bm.can_allocate("a", 12)
    bm.check_integrity()


def test_lookup_prefix_hits_pages_a_finished_request_registered():
    bm = BlockManager(num_pages=8, page_size=4)
    tokens = list(range(10, 19))  # 9 tokens: two full pages
    bm.allocate("a", len(tokens))
    bm.cache_full_pages("a", tokens, len(tokens))
    bm.free("a")  # queue: 4, 5, 6, 7, 3, 2, 1
    assert bm.num_cached_pages == 2
    computed = bm.lookup_prefix(tokens)
    assert computed == [1, 2]
    assert bm.allocate("b", len(tokens), computed) == [4]
    assert bm.pages("b") == [1, 2, 4]
    assert bm.num_cached_pages == 0 and bm.num_free_pages == 4
    stats = bm.stats()
    assert (stats.num_queried_pages, stats.num_hit_pages) == (2, 2)
    assert not hasattr(stats, "prefix_cache_hit_rate")  # one rate, with one meaning: the engine's (tokens)
    # b's hashing resumes after its computed pages: its third page registers under the same chain.
    more = tokens + [19, 20, 21]
    bm.cache_full_pages("b", more, len(more))
    bm.free("b")
    assert bm.lookup_prefix(more + [0]) == [1, 2, 4]
    bm.check_integrity()


def test_lookup_prefix_leaves_the_last_token_to_compute():
    bm = BlockManager(num_pages=8, page_size=4)
    tokens = [1, 2, 3, 4, 5, 6, 7, 8]
    bm.allocate("a", 8)
    bm.cache_full_pages("a", tokens, 8)
    assert bm.lookup_prefix(tokens) == [1]  # the whole prompt is cached, yet its last page is recomputed
    assert bm.lookup_prefix(tokens + [9]) == [1, 2]
    assert bm.lookup_prefix(tokens[:4]) == []
    assert bm.lookup_prefix([]) == []


def test_cached_pages_being_reclaimed_do_not_count_as_free():
    bm = BlockManager(num_pages=4, page_size=4)
    tokens = list(range(13))
    bm.allocate("a", 8)
    bm.cache_full_pages("a", tokens, 8)
    bm.free("a")
    computed = bm.lookup_prefix(tokens)
    assert computed == [1, 2] and bm.num_free_pages == 3
    # 13 tokens need 4 pages: 2 computed + 2 new, but only page 3 stays free once 1 and 2 are touched.
    assert not bm.can_allocate("b", 13, computed)
    assert bm.allocate("b", 13, computed) is None
    assert bm.allocate("b", 9, computed) == [3]
    bm.check_integrity()


def test_salts_never_share_pages():
    bm = BlockManager(num_pages=10, page_size=2)
    tokens = [1, 2, 3, 4, 5]
    for rid, salt in (("a", "tenant-a"), ("b", "tenant-b"), ("c", None)):
        assert bm.lookup_prefix(tokens, salt) == []
        bm.allocate(rid, len(tokens))
        bm.cache_full_pages(rid, tokens, len(tokens), salt)
    assert bm.pages("a") == [1, 2, 3] and bm.pages("b") == [4, 5, 6] and bm.pages("c") == [7, 8, 9]
    assert bm.lookup_prefix(tokens, "tenant-a") == [1, 2]
    assert bm.lookup_prefix(tokens, "tenant-b") == [4, 5]
    assert bm.lookup_prefix(tokens, None) == [7, 8]
    assert bm.lookup_prefix(tokens, "tenant-z") == []
    assert salt_to_extra_key(None) == 0
    assert salt_to_extra_key("tenant-a") == salt_to_extra_key("tenant-a") != salt_to_extra_key("tenant-b")


def test_release_leading_pages_for_sliding_window():
    bm = BlockManager(num_pages=6, page_size=4)
    assert bm.allocate("a", 12) == [1, 2, 3]
    assert bm.release_leading_pages("a", 2) == 2
    assert bm.pages("a") == [0, 0, 3]
    assert bm.release_leading_pages("a", 2) == 0
    assert bm.num_free_pages == 4
    assert bm.allocate("a", 16) == [4]  # queue was 4, 5, 2, 1
    assert bm.allocate("b", 12) == [5, 2, 1]  # released pages go back last-first
    assert bm.release_leading_pages("a", 3) == 1
    assert bm.pages("a") == [0, 0, 0, 4]
    bm.check_integrity()
    bm.free("a")
    assert bm.num_free_pages == 2
    with pytest.raises(ValueError, match=r"num_pages=4 must be in \[0, 3\]"):
        bm.release_leading_pages("b", 4)
    bm.check_integrity()


def test_reset_prefix_cache_refused_while_requests_hold_pages():
    bm = BlockManager(num_pages=6, page_size=2)
    tokens = [1, 2, 3, 4, 5]
    bm.allocate("a", 5)
    bm.cache_full_pages("a", tokens, 5)
    assert not bm.reset_prefix_cache()
    bm.free("a")
    assert bm.lookup_prefix(tokens) == [1, 2]
    assert bm.reset_prefix_cache()
    assert bm.lookup_prefix(tokens) == [] and bm.num_cached_pages == 0


def test_prefix_caching_off():
    bm = BlockManager(num_pages=6, page_size=2, enable_prefix_caching=False)
    tokens = [1, 2, 3, 4, 5]
    bm.allocate("a", 5)
    bm.cache_full_pages("a", tokens, 5)
    bm.free("a")
    assert bm.num_cached_pages == 0
    assert bm.lookup_prefix(tokens) == []
    assert bm.stats().num_hit_pages == 0


def test_bad_calls_name_the_request_and_change_nothing():
    bm = BlockManager(num_pages=6, page_size=2)
    tokens = [1, 2, 3, 4, 5]
    bm.allocate("a", 5)
    bm.cache_full_pages("a", tokens, 5)
    with pytest.raises(KeyError, match="'ghost'"):
        bm.free("ghost")
    with pytest.raises(KeyError, match="'ghost'"):
        bm.cache_full_pages("ghost", tokens, 5)
    with pytest.raises(ValueError, match="'a' already holds pages"):
        bm.allocate("a", 7, [1])
    with pytest.raises(ValueError, match="num_tokens=-1"):
        bm.allocate("b", -1)
    with pytest.raises(ValueError, match="computed page 3 holds no cached prefix"):
        bm.allocate("b", 6, [1, 3])
    with pytest.raises(ValueError, match="3 computed pages exceed the 2 pages"):
        bm.allocate("b", 4, [1, 2, 3])
    with pytest.raises(ValueError, match=r"num_tokens=6 must be in \[0, len\(token_ids\)=5\]"):
        bm.cache_full_pages("a", tokens, 6)
    assert bm.pages("a") == [1, 2, 3] and bm.stats().num_requests == 1
    bm.check_integrity()


# ---------------------------------------------------------------------------------------------
# Stateful property test: BlockManager against a pure-Python model of the same rules.

NUM_PAGES, PAGE_SIZE = 8, 2


class Model:
    """Free queue as a list, ref counts, and registrations keyed by (salt, whole prefix)."""

    def __init__(self):
        self.queue = list(range(1, NUM_PAGES))
        self.refs = [0] * NUM_PAGES
        self.page_of_key, self.key_of_page = {}, {}
        self.tables, self.num_hashed = {}, {}
        self.num_queried = self.num_hits = self.num_evictions = 0

    def lookup(self, tokens, salt):
        max_pages = (len(tokens) - 1) // PAGE_SIZE
        self.num_queried += max_pages
        pages = []
        for i in range(max_pages):
            page = self.page_of_key.get((salt, tuple(tokens[:(i + 1) * PAGE_SIZE])))
            if page is None:
                break
            pages.append(page)
        self.num_hits += len(pages)
        return pages

    def allocate(self, rid, num_tokens, computed):
        table = self.tables.get(rid, [])
        num_needed = -(-num_tokens // PAGE_SIZE)
        num_new = max(0, num_needed - len(table) - len(computed))
        if num_new > len(self.queue) - sum(1 for p in computed if self.refs[p] == 0):
            return None
        if rid not in self.tables:
            for page in computed:
                if self.refs[page] == 0:
                    self.queue.remove(page)
                self.refs[page] += 1
            self.tables[rid], self.num_hashed[rid] = list(computed), len(computed)
        new = [self.queue.pop(0) for _ in range(num_new)]
        for page in new:
            if page in self.key_of_page:
                del self.page_of_key[self.key_of_page.pop(page)]
                self.num_evictions += 1
            self.refs[page] = 1
        self.tables[rid] += new
        return new

    def cache(self, rid, tokens, num_tokens, salt):
        table = self.tables[rid]
        num_full = min(num_tokens // PAGE_SIZE, len(table))
        for i in range(self.num_hashed[rid], num_full):
            key = (salt, tuple(tokens[:(i + 1) * PAGE_SIZE]))
            if table[i] != 0 and key not in self.page_of_key:
                self.page_of_key[key], self.key_of_page[table[i]] = table[i], key
        self.num_hashed[rid] = max(self.num_hashed[rid], num_full)

    def release(self, pages):
        for page in pages:
            self.refs[page] -= 1
            if self.refs[page] == 0:
                self.queue.append(page)

    def free(self, rid):
        self.release([p for p in reversed(self.tables.pop(rid)) if p != 0])
        del self.num_hashed[rid]

    def release_leading(self, rid, num_pages):
        table = self.tables[rid]
        released = [p for p in table[:num_pages] if p != 0]
        self.release(released[::-1])
        table[:num_pages] = [0] * num_pages
        return len(released)

    def reset(self):
        if any(self.refs):
            return False
        self.page_of_key.clear()
        self.key_of_page.clear()
        return True


# Prompts share prefixes often (two base sequences, a short random tail) so lookups hit.
BASE_PROMPTS = ([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9])
tokens_st = st.builds(lambda base, cut, tail: BASE_PROMPTS[base][:cut] + tail,
                      st.integers(0, 1), st.integers(0, 8), st.lists(st.integers(1, 2), max_size=3)
                      ).filter(lambda tokens: len(tokens) > 0)
pick_st = st.integers(0, 1000)


class BlockManagerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.bm = BlockManager(NUM_PAGES, PAGE_SIZE)
        self.model = Model()
        self.requests = {}  # rid -> (tokens allocated for, salt)
        self.num_created = 0

    def pick(self, index):
        return sorted(self.requests)[index % len(self.requests)]

    @rule(tokens=tokens_st, salt=st.sampled_from([None, "s"]), use_prefix=st.booleans(), cache_now=st.booleans())
    def add_request(self, tokens, salt, use_prefix, cache_now):
        rid = f"r{self.num_created}"
        self.num_created += 1
        computed = self.bm.lookup_prefix(tokens, salt) if use_prefix else []
        assert computed == (self.model.lookup(tokens, salt) if use_prefix else [])
        assert self.bm.can_allocate(rid, len(tokens), computed) == self._model_fits(rid, len(tokens), computed)
        new = self.bm.allocate(rid, len(tokens), computed)
        assert new == self.model.allocate(rid, len(tokens), computed)
        if new is not None:
            self.requests[rid] = (tokens, salt)
            if cache_now:
                self.bm.cache_full_pages(rid, tokens, len(tokens), salt)
                self.model.cache(rid, tokens, len(tokens), salt)

    def _model_fits(self, rid, num_tokens, computed):
        table = self.model.tables.get(rid, [])
        num_new = max(0, -(-num_tokens // PAGE_SIZE) - len(table) - len(computed))
        return num_new <= len(self.model.queue) - sum(1 for p in computed if self.model.refs[p] == 0)

    @precondition(lambda self: self.requests)
    @rule(index=pick_st, extra=st.lists(st.integers(1, 2), min_size=1, max_size=4))
    def grow(self, index, extra):
        rid = self.pick(index)
        tokens, salt = self.requests[rid]
        new = self.bm.allocate(rid, len(tokens) + len(extra))
        assert new == self.model.allocate(rid, len(tokens) + len(extra), [])
        if new is not None:
            self.requests[rid] = (tokens + extra, salt)

    @precondition(lambda self: self.requests)
    @rule(index=pick_st, cut=st.integers(0, 1000))
    def cache(self, index, cut):
        rid = self.pick(index)
        tokens, salt = self.requests[rid]
        num_tokens = cut % (len(tokens) + 1)
        self.bm.cache_full_pages(rid, tokens, num_tokens, salt)
        self.model.cache(rid, tokens, num_tokens, salt)

    @precondition(lambda self: self.requests)
    @rule(index=pick_st)
    def free(self, index):
        rid = self.pick(index)
        self.bm.free(rid)
        self.model.free(rid)
        del self.requests[rid]

    @precondition(lambda self: self.requests)
    @rule(index=pick_st, count=st.integers(0, 1000))
    def release_leading(self, index, count):
        rid = self.pick(index)
        num_pages = count % (len(self.bm.pages(rid)) + 1)
        assert self.bm.release_leading_pages(rid, num_pages) == self.model.release_leading(rid, num_pages)

    @rule()
    def reset(self):
        assert self.bm.reset_prefix_cache() == self.model.reset()

    @invariant()
    def matches_model(self):
        self.bm.check_integrity()
        for rid in self.requests:
            assert self.bm.pages(rid) == self.model.tables[rid]
        stats = self.bm.stats()
        assert stats.num_free_pages == len(self.model.queue)
        assert stats.num_used_pages == sum(1 for r in self.model.refs if r > 0)
        assert stats.num_cached_pages == sum(1 for p in self.model.queue if p in self.model.key_of_page)
        assert (stats.num_queried_pages, stats.num_hit_pages, stats.num_evictions) == (
            self.model.num_queried, self.model.num_hits, self.model.num_evictions)
        assert stats.num_requests == len(self.requests)


BlockManagerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_block_manager_matches_model = BlockManagerMachine.TestCase
