"""`from surge.esurge import ...`: the names EasyDeL's `easydel.inference.esurge` page imports.

In: nothing. Out: surge's own classes under eSurge's names, not copies —
`Config` is `SurgeConfig`, `SchedulerConfig` and `CacheConfig` are its sections
(`CacheConfig(enable_prefix_caching=True, prefix_cache_capacity=0.3)` is passed as
`eSurge(..., cache_config=...)`), `PriorityRequestQueue` is the priority policy's
waiting queue (choose it with `scheduling_policy="priority"`), and `eSurge`,
`SamplingParams`, `eSurgeApiServer` as on the top-level `surge` module.
"""

from surge.config import CacheConfig, SchedulerConfig
from surge.config import SurgeConfig as Config
from surge.engine.compat import eSurge
from surge.sampling.params import SamplingParams
from surge.scheduler.queues import PriorityQueue as PriorityRequestQueue


def __getattr__(name: str):
    if name == "eSurgeApiServer":  # the server stack (FastAPI) is imported only when asked for
        from surge.server.app import eSurgeApiServer

        return eSurgeApiServer
    raise AttributeError(f"module 'surge.esurge' has no attribute {name!r}")


__all__ = ["CacheConfig", "Config", "PriorityRequestQueue", "SamplingParams", "SchedulerConfig", "eSurge",
           "eSurgeApiServer"]
