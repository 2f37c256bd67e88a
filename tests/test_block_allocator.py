"""surge._C.BlockAllocator: free queue order, ref counts, prefix hashes, errors, stats."""

import pytest

from surge._C import BlockAllocator

PAGE_SIZE = 2


def make(num_pages=6):
    return BlockAllocator(num_pages, PAGE_SIZE)


def register_chain(alloc, pages, token_ids, extra_key=0):
    """Register pages as holding consecutive full pages of token_ids; returns their hashes."""
    hashes, parent = [], 0
    for i, page in enumerate(pages):
        tokens = token_ids[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
        parent = BlockAllocator.hash_page(parent, tokens, extra_key if i == 0 else 0)
        assert alloc.register(page, parent, tokens)
        hashes.append(parent)
    return hashes


def test_fresh_allocator_hands_out_ascending_pages_and_never_page_zero():
    alloc = make(6)
    assert (alloc.num_pages, alloc.page_size, alloc.num_free_pages) == (6, PAGE_SIZE, 5)
    assert alloc.free_queue() == [1, 2, 3, 4, 5]
    assert alloc.allocate(2) == [1, 2]
    assert alloc.allocate(0) == []
    assert alloc.allocate(3) == [3, 4, 5]
    assert alloc.num_free_pages == 0
    assert alloc.ref_counts() == [0, 1, 1, 1, 1, 1]
    alloc.check_integrity()


def test_freed_pages_are_reused_in_free_order():
    alloc = make(6)
    alloc.allocate(5)
    alloc.free([4, 2])
    alloc.free([5])
    assert alloc.free_queue() == [4, 2, 5]
    assert alloc.allocate(2) == [4, 2]
    assert alloc.allocate(1) == [5]
    alloc.check_integrity()


def test_touch_adds_references_and_free_needs_all_of_them():
    alloc = make(4)
    assert alloc.allocate(2) == [1, 2]
    alloc.touch([1, 1])
    assert alloc.ref_count(1) == 3
    alloc.free([1, 2])
    assert (alloc.ref_count(1), alloc.ref_count(2)) == (2, 0)
    assert alloc.free_queue() == [3, 2]
    alloc.free([1, 1])
    assert alloc.free_queue() == [3, 2, 1]
    alloc.check_integrity()


def test_cached_page_hit_is_removed_from_the_middle_of_the_queue():
    alloc = make(6)
    pages = alloc.allocate(5)
    h1, h2, h3 = register_chain(alloc, [1, 2, 3], [7, 8, 9, 10, 11, 12])
    alloc.free(pages)
    assert alloc.free_queue() == [1, 2, 3, 4, 5]
    assert alloc.stats()["num_cached_pages"] == 3
    alloc.touch([2])
    assert alloc.free_queue() == [1, 3, 4, 5]
    assert alloc.ref_count(2) == 1 and alloc.page_hash(2) == h2
    assert alloc.stats()["num_cached_pages"] == 2
    alloc.free([2])
    assert alloc.free_queue() == [1, 3, 4, 5, 2]
    alloc.check_integrity()


def test_eviction_is_oldest_first_and_tail_pages_go_first():
    alloc = make(5)
    pages = alloc.allocate(3)
    hashes = register_chain(alloc, pages, [1, 2, 3, 4, 5, 6])
    alloc.free(pages[::-1])  # tail first, as BlockManager.free does
    assert alloc.free_queue() == [4, 3, 2, 1]
    assert alloc.allocate(1) == [4]
    assert alloc.stats()["num_evictions"] == 0  # page 4 held no hash
    assert alloc.allocate(1) == [3]
    assert alloc.page_hash(3) is None
    assert alloc.stats()["num_evictions"] == 1
    # The head of the chain is still cached: a lookup finds pages 1 and 2, then misses page 3's content.
    assert alloc.find_prefix([1, 2, 3, 4, 5, 6]) == [1, 2]
    assert [alloc.page_hash(p) for p in (1, 2)] == hashes[:2]
    alloc.check_integrity()


def test_hash_is_deterministic_and_depends_on_every_input():
    tokens = [5, 6]
    h = BlockAllocator.hash_page(0, tokens, 0)
    assert h == BlockAllocator.hash_page(0, [5, 6], 0)
    assert 0 <= h < 2**64
    others = {
        BlockAllocator.hash_page(1, tokens, 0),
        BlockAllocator.hash_page(0, [6, 5], 0),
        BlockAllocator.hash_page(0, [5, 7], 0),
        BlockAllocator.hash_page(0, tokens, 1),
        BlockAllocator.hash_page(0, [5], 0),
    }
    assert h not in others and len(others) == 5


def test_two_allocators_find_each_others_hashes():
    a, b = make(), make()
    for alloc in (a, b):
        alloc.allocate(2)
    assert register_chain(a, [1, 2], [1, 2, 3, 4]) == register_chain(b, [1, 2], [1, 2, 3, 4])


def test_find_prefix_compares_tokens_stops_at_first_miss_and_respects_salt_and_cap():
    alloc = make(6)
    alloc.allocate(3)
    register_chain(alloc, [1, 2, 3], [1, 2, 3, 4, 5, 6], extra_key=0)
    assert alloc.find_prefix([1, 2, 3, 4, 5, 6, 7]) == [1, 2, 3]
    assert alloc.find_prefix([1, 2, 3, 9, 5, 6]) == [1]
    assert alloc.find_prefix([9, 2, 3, 4]) == []
    assert alloc.find_prefix([1, 2, 3, 4, 5, 6], max_pages=2) == [1, 2]
    assert alloc.find_prefix([1, 2, 3, 4], extra_key=99) == []
    assert alloc.find_prefix([1]) == []
    stats = alloc.stats()
    # queried: 3 + 3 + 2 + 2 + 2 + 0 full pages; hits: 3 + 1 + 0 + 2 + 0 + 0.
    assert (stats["num_queried_pages"], stats["num_hit_pages"]) == (12, 6)


def test_salted_chain_is_found_only_with_its_salt():
    alloc = make(6)
    alloc.allocate(2)
    register_chain(alloc, [1, 2], [1, 2, 3, 4], extra_key=42)
    assert alloc.find_prefix([1, 2, 3, 4], extra_key=42) == [1, 2]
    assert alloc.find_prefix([1, 2, 3, 4]) == []


def test_register_rules():
    alloc = make(6)
    alloc.allocate(3)
    h = BlockAllocator.hash_page(0, [1, 2], 0)
    assert alloc.register(1, h, [1, 2])
    assert alloc.register(1, h, [1, 2])  # idempotent
    assert not alloc.register(2, h, [1, 2])  # content already held by page 1
    assert alloc.page_hash(2) is None
    with pytest.raises(ValueError, match="page 1 .* already holds hash"):
        alloc.register(1, h + 1, [1, 2])
    with pytest.raises(ValueError, match="page 3 with 1 token ids"):
        alloc.register(3, h + 1, [1])
    with pytest.raises(ValueError, match="page 4: it is free"):
        alloc.register(4, h + 1, [1, 2])
    alloc.check_integrity()


def test_reset_prefix_cache_is_refused_while_pages_are_in_use():
    alloc = make(4)
    pages = alloc.allocate(2)
    register_chain(alloc, pages, [1, 2, 3, 4])
    assert not alloc.reset_prefix_cache()
    assert alloc.page_hash(1) is not None
    alloc.free(pages)
    assert alloc.reset_prefix_cache()
    assert alloc.page_hash(1) is None and alloc.page_hash(2) is None
    assert alloc.stats()["num_cached_pages"] == 0
    assert alloc.find_prefix([1, 2, 3, 4]) == []
    assert alloc.free_queue() == [3, 1, 2]
    alloc.check_integrity()


@pytest.mark.parametrize("call, error, message", [
    (lambda a: a.free([3]), ValueError, r"page 3: its ref count is 0 \(double free\)"),
    (lambda a: a.free([1, 1]), ValueError, r"page 1: its ref count is 1 and it is listed more often"),
    (lambda a: a.free([2, 0]), ValueError, r"free page 0: it is the reserved null page"),
    (lambda a: a.touch([0]), ValueError, r"touch page 0: it is the reserved null page"),
    (lambda a: a.touch([4]), ValueError, r"touch page 4: it is free and holds no cached content"),
    (lambda a: a.free([1, 6]), IndexError, r"free page 6: page ids are in \[0, 6\)"),
    (lambda a: a.touch([-1]), IndexError, r"touch page -1"),
    (lambda a: a.ref_count(6), IndexError, r"page 6 is out of range"),
    (lambda a: a.page_hash(-2), IndexError, r"page -2 is out of range"),
    (lambda a: a.allocate(4), ValueError, r"allocate n=4 pages: only 3 are free"),
    (lambda a: a.allocate(-1), ValueError, r"n=-1 pages: n must be >= 0"),
    (lambda a: a.find_prefix([1, 2], 0, -1), ValueError, r"max_pages=-1 must be >= 0"),
])
def test_bad_calls_raise_and_change_nothing(call, error, message):
    alloc = make(6)
    alloc.allocate(2)
    before = (alloc.ref_counts(), alloc.free_queue(), alloc.stats())
    with pytest.raises(error, match=message):
        call(alloc)
    assert (alloc.ref_counts(), alloc.free_queue(), alloc.stats()) == before
    alloc.check_integrity()


@pytest.mark.parametrize("num_pages, page_size", [(1, 2), (0, 2), (4, 0)])
def test_bad_construction(num_pages, page_size):
    with pytest.raises(ValueError, match="num_pages|page_size"):
        BlockAllocator(num_pages, page_size)


def test_stats():
    alloc = make(6)
    pages = alloc.allocate(4)
    register_chain(alloc, pages[:2], [1, 2, 3, 4])
    alloc.free(pages[1:])
    alloc.find_prefix([1, 2, 3, 4])
    assert alloc.stats() == {
        "num_total_pages": 5,
        "num_free_pages": 4,
        "num_cached_pages": 1,
        "num_used_pages": 1,
        "num_queried_pages": 2,
        "num_hit_pages": 2,
        "num_evictions": 0,
        "max_cached_pages": 5,
        "num_capacity_evictions": 0,
    }
    alloc.allocate(2)  # pops 5, then cached page 2
    assert alloc.stats()["num_evictions"] == 1
    assert alloc.stats()["num_cached_pages"] == 0


def test_capacity_keeps_the_newest_cached_pages_and_reuses_evicted_ones_first():
    alloc = BlockAllocator(11, PAGE_SIZE, 3)  # 10 usable pages, at most 3 cached
    assert alloc.max_cached_pages == 3
    pages = alloc.allocate(6)
    hashes = register_chain(alloc, pages, list(range(100, 112)))
    alloc.free(pages)  # freed in order 1..6: pages 1, 2, 3 were cached longest ago
    stats = alloc.stats()
    assert stats["num_cached_pages"] == 3 and stats["num_capacity_evictions"] == 3
    assert [alloc.page_hash(p) for p in pages] == [None, None, None] + hashes[3:]
    # The evicted pages are plain free pages now and are handed out before any cached one.
    assert sorted(alloc.allocate(3)) == [1, 2, 3]
    assert alloc.stats()["num_evictions"] == 0
    alloc.check_integrity()


def test_capacity_zero_caches_nothing_once_freed_but_shares_pages_in_use():
    alloc = BlockAllocator(6, PAGE_SIZE, 0)
    pages = alloc.allocate(2)
    register_chain(alloc, pages, [1, 2, 3, 4])
    assert alloc.find_prefix([1, 2, 3, 4]) == pages  # held pages are still found
    alloc.free(pages)
    assert alloc.find_prefix([1, 2, 3, 4]) == []
    assert alloc.stats()["num_cached_pages"] == 0
    alloc.check_integrity()


def test_touching_a_cached_page_takes_it_off_the_eviction_order():
    alloc = BlockAllocator(8, PAGE_SIZE, 2)
    a, b, c = alloc.allocate(3)
    for page, tokens in ((a, [1, 1]), (b, [2, 2]), (c, [3, 3])):
        alloc.register(page, BlockAllocator.hash_page(0, tokens), tokens)
    alloc.free([a, b])  # cached: a (older), b
    alloc.touch([a])  # a is in use again; b is now the oldest cached page
    alloc.free([c])  # cached: b, c
    alloc.free([a])  # a is newest: b is evicted
    assert alloc.page_hash(b) is None and alloc.page_hash(a) is not None and alloc.page_hash(c) is not None
    alloc.check_integrity()


def test_capacity_beyond_the_pool_means_no_bound():
    assert BlockAllocator(6, PAGE_SIZE, 100).max_cached_pages == 5
    assert BlockAllocator(6, PAGE_SIZE).max_cached_pages == 5
