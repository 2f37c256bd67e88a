"""Data-parallel replicas (surge.parallel): placement, throughput in flight, greedy equality, metrics labels.

The router is tested in-process on stand-in replicas with real block managers. The engine runs with
engine.data_parallel_size=2 on four forced host devices, in a subprocess (XLA_FLAGS must be set before jax
starts), on a tiny random Llama with tp=1 replicas; the subprocess prints what the checks need as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from surge.cache.block_manager import BlockManager
from surge.parallel.placement import ReplicaRouter

PAGE = 4


class _Scheduler:
    def __init__(self, running: int = 0, waiting: int = 0) -> None:
        self.num_running, self.num_waiting = running, waiting


class _Replica:
    """What the router reads of a replica: its scheduler's queues and its block manager."""

    def __init__(self, index: int, running: int = 0) -> None:
        self.index = index
        self.scheduler = _Scheduler(running)
        self.block_manager = BlockManager(64, PAGE, enable_prefix_caching=True)

    @property
    def num_seqs(self) -> int:
        return self.scheduler.num_running + self.scheduler.num_waiting

    def cache(self, request_id: str, tokens: list[int]) -> None:
        """Compute and free a request here, so its full pages stay cached."""
        self.block_manager.allocate(request_id, len(tokens))
        self.block_manager.cache_full_pages(request_id, tokens, len(tokens))
        self.block_manager.free(request_id)


PREFIX = list(range(10, 10 + 6 * PAGE))  # six full pages


def test_router_places_on_the_least_loaded_replica():
    replicas = [_Replica(0, running=3), _Replica(1, running=1), _Replica(2, running=2)]
    router = ReplicaRouter(replicas, affinity_slack=8)
    assert router.place("a", [1, 2, 3]) == 1  # no full page: load alone decides
    replicas[1].scheduler.num_running = 5
    assert router.place("b", list(range(50, 70))) == 2
    assert router.replica_of("a") == 1 and router.replica_of("b") == 2 and router.replica_of("zzz") is None
    with pytest.raises(ValueError, match="already placed"):
        router.place("a", [1])


def test_router_follows_the_cached_first_page_unless_that_replica_is_far_more_loaded():
    replicas = [_Replica(0, running=0), _Replica(1, running=3)]
    replicas[1].cache("earlier", PREFIX + [7])
    router = ReplicaRouter(replicas, affinity_slack=3)
    # Replica 1 holds the prefix and 3 sequences more than replica 0: within the slack, so it goes there.
    assert router.place("same-prefix", PREFIX + [99, 98]) == 1
    assert router.counters[1].num_affinity_placed == 1
    # Another salt never shares a page: the first page differs, so load decides.
    assert router.place("salted", PREFIX + [99], cache_salt="tenant") == 0
    # One more sequence there and it is past the slack: the least-loaded replica takes it.
    replicas[1].scheduler.num_running = 4
    assert router.place("too-busy", PREFIX + [5]) == 0
    assert router.counters[1].num_affinity_overridden == 1
    assert [c.num_placed for c in router.counters] == [2, 1]


def test_router_keeps_a_prefix_together_before_it_is_cached():
    # Two requests with the same first page arrive together: the second follows the first to its replica
    # (its prefill has not cached the page yet) even though that replica is now the busier one.
    replicas = [_Replica(0), _Replica(1)]
    router = ReplicaRouter(replicas, affinity_slack=2)
    first = router.place("first", PREFIX + [1])
    replicas[first].scheduler.num_waiting = 1
    assert router.place("second", PREFIX + [2]) == first
    router.forget("first")
    router.forget("second")
    replicas[first].scheduler.num_waiting = 1
    # Both gone (and the page never cached): nothing draws the prefix to that replica any more.
    assert router.place("third", PREFIX + [3]) == 1 - first


_DATA_PARALLEL = r"""
import json, sys
import numpy as np
import logging

import jax
import surge
from surge import SamplingParams
from surge.server.metrics import ServerMetrics

path = sys.argv[1]
GREEDY = dict(temperature=0.0, ignore_eos=True)
OPTIONS = dict(backend="reference", max_num_seqs=4, max_model_len=128, max_num_batched_tokens=64,
               token_buckets=[16, 64], num_pages=96, page_size=4, progress=False)
rng = np.random.default_rng(0)
prompts = [rng.integers(3, 320, int(rng.integers(3, 20))).tolist() for _ in range(12)]
params = SamplingParams(max_tokens=8, **GREEDY)


def run(engine):
    # Every prompt at once, stepped by hand: the most sequences running in one step, and each one's tokens.
    ids = [engine.add_request(prompt_token_ids=p, sampling_params=params) for p in prompts]
    tokens, most_running = {}, 0
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                tokens[output.request_id] = list(output.outputs[0].token_ids)
        most_running = max(most_running, engine.stats().num_running)
    return [tokens[i] for i in ids], most_running


result = {"devices": len(jax.devices())}
one = surge.Engine.from_pretrained(path, **OPTIONS)
result["dp1_tokens"], result["dp1_most_running"] = run(one)
del one

engine = surge.Engine.from_pretrained(path, **OPTIONS, **{"engine.data_parallel_size": 2})
result["replica_devices"] = [[str(d) for d in r.mesh.devices.flat] for r in engine.replicas]
result["kv_devices"] = [sorted(str(d) for d in r.runner.kv_caches[0][0].sharding.device_set) for r in engine.replicas]
result["dp2_tokens"], result["dp2_most_running"] = run(engine)
stats = engine.stats()
result["dp2_used_pages"] = [r.pages.num_used_pages for r in engine.replica_stats()]
result["dp2_placed"] = [c.num_placed for c in engine.router.counters]
for r in engine.replicas:
    r.block_manager.check_integrity()

# Prefix affinity: a long shared prefix is computed on one replica; later requests with it follow it there
# even when that replica holds more sequences, and its prefix-hit counter (only its) grows.
prefix = rng.integers(3, 320, 40).tolist()
long_params = SamplingParams(max_tokens=100, **GREEDY)
filler = [engine.add_request(prompt_token_ids=[5, 6, 7], sampling_params=long_params)]
engine.step()
first = engine.add_request(prompt_token_ids=prefix + [9], sampling_params=SamplingParams(max_tokens=1, **GREEDY))
done = False
while not done:
    done = any(o.request_id == first and o.finished for o in engine.step())
holder = next(i for i, r in enumerate(engine.replicas) if r.block_manager.holds_first_page(prefix + [1]))
# Load the holder up until it runs more sequences than the other replica.
other = 1 - holder
while engine.replicas[holder].num_seqs <= engine.replicas[other].num_seqs:
    filler.append(engine.add_request(prompt_token_ids=[int(x) for x in rng.integers(3, 320, 3)],
                                     sampling_params=long_params))
    engine.step()
result["loads_before"] = [r.num_seqs for r in engine.replicas]
hits_before = [r.prefix_cache_hit_tokens for r in engine.replica_stats()]
follower = engine.add_request(prompt_token_ids=prefix + [11, 12], sampling_params=SamplingParams(max_tokens=1, **GREEDY))
engine.step()
hits_after = [r.prefix_cache_hit_tokens for r in engine.replica_stats()]
result.update(holder=holder, follower_replica=engine.router.replica_of(follower),
              hit_gain=[a - b for a, b in zip(hits_after, hits_before)])
# With no slack the busier holder is passed over.
engine.router.affinity_slack = 0
passed_over = engine.add_request(prompt_token_ids=prefix + [13], sampling_params=SamplingParams(max_tokens=1, **GREEDY))
engine.step()
result["passed_over_replica"] = engine.router.replica_of(passed_over)
result["overridden"] = engine.router.counters[holder].num_affinity_overridden

# n=3 siblings all join one replica (they share the prompt's pages there).
siblings = engine.add_request(prompt_token_ids=[int(x) for x in rng.integers(3, 320, 10)],
                              sampling_params=SamplingParams(n=3, max_tokens=2, **GREEDY))
engine.step()
children = engine._live[siblings]
result["sibling_replicas"] = [sum(c in r.scheduler.requests for c in children) for r in engine.replicas]
result["siblings_placed_on"] = engine.router.replica_of(siblings)

metrics = ServerMetrics("tiny", engine.stats, max_model_len=128, replica_stats_fn=engine.replica_stats)
result["metrics"] = metrics.render().decode()
for rid in filler:
    engine.abort(rid)
while engine.has_unfinished_requests():
    engine.step()
result["used_after_aborts"] = [r.pages.num_used_pages for r in engine.replica_stats()]
result["placed_after"] = len(engine.router._placed)
for r in engine.replicas:
    r.block_manager.check_integrity()

del engine
# dp x tp = 2 x 2 on the 4 devices: each replica's weights split over its own row's 2 devices.
class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


startup = Lines()
logging.getLogger("surge").addHandler(startup)
grid = surge.Engine.from_pretrained(path, **OPTIONS, **{"engine.data_parallel_size": 2,
                                                        "engine.tensor_parallel_size": 2})
logging.getLogger("surge").removeHandler(startup)
result["grid_startup"] = startup.lines
result["grid_replica_devices"] = [sorted(str(d) for d in r.mesh.devices.flat) for r in grid.replicas]
result["grid_kv_devices"] = [sorted(str(d) for d in r.runner.kv_caches[0][0].sharding.device_set)
                             for r in grid.replicas]
result["grid_sharded"] = [r.runner.placed.sharded for r in grid.replicas]
result["grid_tokens"], result["grid_most_running"] = run(grid)
del grid

# The cpu backend packs the weights in place when placing them (prepare_model): every replica but the last
# places a copy of the loaded module, so both replicas hold correctly packed weights.
CPU = dict(OPTIONS, backend="cpu")
packed = surge.Engine.from_pretrained(path, **CPU)
result["cpu_dp1_tokens"], _ = run(packed)
del packed
packed = surge.Engine.from_pretrained(path, **CPU, **{"engine.data_parallel_size": 2})
result["cpu_dp2_tokens"], _ = run(packed)
del packed

try:
    surge.Engine.from_pretrained(path, **OPTIONS, **{"engine.data_parallel_size": 8})
    result["too_many"] = ""
except ValueError as exc:
    result["too_many"] = str(exc)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def data_parallel_run(tiny_checkpoint):
    tiny = tiny_checkpoint("llama")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", _DATA_PARALLEL, tiny.path], env=env, capture_output=True,
                         text=True, timeout=900, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_two_replicas_run_twice_the_sequences_with_the_same_greedy_tokens(data_parallel_run):
    result = data_parallel_run
    assert result["devices"] == 4
    # Replica r sits on mesh row r (tp=1: one device each), its KV pool there too.
    assert result["replica_devices"] == [[d] for d in (result["replica_devices"][0][0], result["replica_devices"][1][0])]
    assert result["replica_devices"][0] != result["replica_devices"][1]
    assert result["kv_devices"] == result["replica_devices"]
    assert result["dp1_most_running"] == 4  # max_num_seqs
    assert result["dp2_most_running"] == 8  # max_num_seqs on each of two replicas
    assert result["dp2_tokens"] == result["dp1_tokens"]
    assert all(len(tokens) == 8 for tokens in result["dp2_tokens"])
    assert result["dp2_placed"] == [6, 6]  # 12 distinct prompts spread evenly
    assert result["dp2_used_pages"] == [0, 0]


def test_a_shared_prefix_lands_on_the_replica_that_holds_it(data_parallel_run):
    result = data_parallel_run
    holder = result["holder"]
    assert result["loads_before"][holder] > result["loads_before"][1 - holder]  # the holder is the busier
    assert result["follower_replica"] == holder
    # 40 prefix tokens: its 10 full pages were served from the holder's cache, and nothing elsewhere.
    assert result["hit_gain"][holder] == 40 and result["hit_gain"][1 - holder] == 0
    assert result["passed_over_replica"] == 1 - holder and result["overridden"] == 1
    assert result["used_after_aborts"] == [0, 0] and result["placed_after"] == 0


def test_n_siblings_stay_on_one_replica(data_parallel_run):
    result = data_parallel_run
    on = result["siblings_placed_on"]
    assert result["sibling_replicas"][on] == 3 and result["sibling_replicas"][1 - on] == 0


def test_metrics_carry_a_replica_label(data_parallel_run):
    text = data_parallel_run["metrics"]
    for replica in ("0", "1"):
        for name in ("surge:num_requests_running", "surge:num_total_pages", "surge:prefix_cache_hits_total",
                     "surge:num_preemptions_total", "surge:kv_cache_usage_perc"):
            assert f'{name}{{model_name="tiny",replica="{replica}"}} ' in text, name
    assert 'surge:num_total_pages{model_name="tiny",replica="1"} 95.0' in text
    # Engine-wide series stay unlabelled by replica.
    assert 'surge:engine_ready{model_name="tiny"} 1.0' in text
    assert 'surge:num_compiles_total{model_name="tiny"}' in text


def test_two_replicas_of_two_tensor_parallel_devices_give_the_one_device_greedy_tokens(data_parallel_run):
    result = data_parallel_run
    devices = result["grid_replica_devices"]
    assert [len(d) for d in devices] == [2, 2] and not set(devices[0]) & set(devices[1])
    assert result["grid_kv_devices"] == devices  # each replica's KV cache split over its own two devices
    assert result["grid_sharded"] == [True, True]
    assert result["grid_most_running"] == 8
    assert result["grid_tokens"] == result["dp1_tokens"]


def test_the_start_up_log_names_the_mesh_bytes_per_device_and_pages_once_per_replica(data_parallel_run):
    lines = data_parallel_run["grid_startup"]
    placement = [line for line in lines if " mesh " in line]
    assert [line.split(":")[0] for line in placement] == ["replica 0", "replica 1"]
    for line in placement:
        assert "mesh dp x tp = 2 x 2 (split over tp in shard_map); 1 process(es), 4 cpu device(s) per process" in line
        assert "per device: weights " in line and " MiB, KV cache " in line and "; 95 pages per replica" in line
    assert not [line for line in lines if line.startswith("data parallel")]  # no second line says it again


def test_replicas_on_the_cpu_backend_each_pack_their_own_weights(data_parallel_run):
    result = data_parallel_run
    assert result["cpu_dp2_tokens"] == result["cpu_dp1_tokens"]
    assert all(len(tokens) == 8 for tokens in result["cpu_dp2_tokens"])


def test_more_replicas_than_devices_fail_naming_both_keys(data_parallel_run):
    message = data_parallel_run["too_many"]
    assert "engine.data_parallel_size x engine.tensor_parallel_size = 8 devices" in message
    assert "only 4 are visible" in message
