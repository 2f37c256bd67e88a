"""KV pool sizing: what the start-up log says, and the CPU cap at max_num_seqs x max_model_len.

The default (cache.cpu_memory_gb=4, hbm_utilization=0.9) for SmolLM2-135M (30 layers, 3 KV heads of 64,
float32 KV, 621 MiB of weights) with engine.max_num_seqs=32, max_model_len=2048 and 16-token pages.
"""

from __future__ import annotations

import logging

import pytest

from surge.cache import kv_cache
from surge.cache.kv_cache import GiB, KVCacheTooSmall, MemoryBudget, plan_kv_cache
from surge.config import CacheConfig

SMOLLM2 = dict(num_layers=30, page_shape=(1, 3, 16, 64), dtype="float32", weights_bytes=621 * 2**20)
BYTES_PER_PAGE = 2 * 30 * 3 * 16 * 64 * 4  # K and V of 30 layers: 720 KiB


def test_cpu_default_is_capped_at_what_the_batch_can_hold():
    plan = plan_kv_cache(CacheConfig(), max_model_len=2048, max_num_seqs=32, **SMOLLM2)
    assert plan.bytes_per_page == BYTES_PER_PAGE == 737280
    assert plan.num_pages == 32 * 2048 // 16 + 1 == 4097  # every sequence at full length, + the null page
    assert plan.num_tokens == 65536
    assert plan.num_bytes == 4097 * 737280 and round(plan.num_bytes / GiB, 2) == 2.81
    assert plan.budget_bytes == int(0.9 * (4 * GiB - 621 * 2**20)) == 3279421440  # the 3.05 GiB it used to take
    text = plan.describe(2048)
    assert text.startswith("KV cache: 2.81 GiB = 4096 pages x 16 tokens = 65536 tokens (720 KiB per page)")
    assert "engine.max_num_seqs=32 x engine.max_model_len=2048" in text and "3.05 GiB budget" in text
    assert "change it with cache.num_pages, cache.cpu_memory_gb" in text


def test_budget_wins_when_the_batch_needs_more():
    plan = plan_kv_cache(CacheConfig(), max_model_len=2048, max_num_seqs=64, **SMOLLM2)
    assert plan.num_pages == 3279421440 // 737280 == 4448
    assert "sized by cache.hbm_utilization=0.9 x (cache.cpu_memory_gb=4 GiB - 0.61 GiB weights) = 3.05 GiB" \
        in plan.describe(2048)
    smaller = plan_kv_cache(CacheConfig(cpu_memory_gb=2.0), max_model_len=2048, max_num_seqs=32, **SMOLLM2)
    assert smaller.num_pages == int(0.9 * (2 * GiB - 621 * 2**20)) // 737280 == 1826


def test_num_pages_overrides_both():
    plan = plan_kv_cache(CacheConfig(num_pages=9000), max_model_len=2048, max_num_seqs=32, **SMOLLM2)
    assert plan.num_pages == 9000 and "set by cache.num_pages=9000" in plan.describe(2048)
    with pytest.raises(KVCacheTooSmall, match="raise cache.num_pages"):
        plan_kv_cache(CacheConfig(num_pages=100), max_model_len=2048, max_num_seqs=32, **SMOLLM2)


def test_device_memory_is_not_capped(monkeypatch):
    reported = MemoryBudget(10 * GiB, "cache.hbm_utilization=0.9 of the 11.11 GiB gpu memory free", on_cpu_budget=False)
    monkeypatch.setattr(kv_cache, "device_memory_budget", lambda cache, weights_bytes: reported)
    plan = plan_kv_cache(CacheConfig(), max_model_len=2048, max_num_seqs=32, **SMOLLM2)
    assert plan.num_pages == 10 * GiB // 737280 == 14563


def test_engine_logs_its_memory(tiny_checkpoint, caplog):
    import surge

    tiny = tiny_checkpoint("llama")
    logger = logging.getLogger("surge")  # it does not propagate (its own handler), so listen on it directly
    logger.addHandler(caplog.handler)
    try:
        engine = surge.Engine.from_pretrained(tiny.path, backend="reference", max_num_seqs=4, max_model_len=128,
                                              page_size=8, max_num_batched_tokens=16, token_buckets=[16],
                                              compile_at_startup=False, progress=False)
    finally:
        logger.removeHandler(caplog.handler)
    assert engine.kv_plan.num_pages == 4 * 128 // 8 + 1 == 65  # + the null page
    assert engine.stats().pages.num_total_pages == 64
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("KV cache:"))
    # 2 layers x K and V x 2 KV heads x 8 tokens x 16 dims x 4 bytes = 4 KiB a page.
    assert line.startswith("KV cache: 260 KiB = 64 pages x 8 tokens = 512 tokens (4 KiB per page)")
    assert "engine.max_num_seqs=4 x engine.max_model_len=128" in line
