"""surge-serve: the OpenAI-compatible HTTP server, as a Hydra app.

In: Hydra overrides, e.g. `server.port=9000 'server.api_keys=[k1,k2]' backend=cpu`.
Out: a server on `server.host:server.port` (port 0 picks a free one). It prints
`surge-serve listening on http://HOST:PORT` as soon as the port is bound, builds
the engine in the background (GET /health answers 503 until then), prints one
`surge-serve ready ...` line when it serves, and exits 0 on SIGTERM / Ctrl-C
after aborting the requests in flight (1 if the engine failed to start).

Many processes (engine.distributed.*, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID):
process 0 serves as above and, once it stops, tells the others to stop; every other process builds the
same engine parts and runs process 0's steps in lockstep (surge.parallel.lockstep) until then, serving no
HTTP, and exits 0.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from surge.cli.hydra_app import hydra_app
from surge.config import SurgeConfig


def run(cfg: SurgeConfig, raw: DictConfig) -> None:
    from surge.parallel import distributed
    from surge.server.app import eSurgeApiServer
    from surge.server.launcher import run_forever

    # Joined here, on the main thread, before the server installs its SIGTERM handler (the runtime's own
    # would take SIGTERM otherwise); the engine build finds the cluster joined.
    cluster = distributed.join(cfg.engine.distributed)
    if not cluster.is_leader:
        _follow(cfg)
        return
    server = eSurgeApiServer.from_config(cfg)
    code = run_forever(server, cfg.server.host, cfg.server.port, access_log=cfg.server.access_log)
    if cluster.is_multi_process and server.host.engine is not None:
        server.host.engine.runner.broadcast.send_stop()
        distributed.shutdown()
    if code:
        sys.exit(code)


def _follow(cfg: SurgeConfig) -> None:
    """A process other than 0: the engine's parts (weights, KV cache, compiled steps, all as process 0
    builds them), then process 0's steps until it says stop."""
    from surge.engine.builder import build_engine_parts
    from surge.parallel import distributed, lockstep

    runner = build_engine_parts(cfg, progress=False).runner
    lockstep.follow(runner.broadcast, runner.run_followed, runner.buffer_shapes)
    distributed.shutdown()


main = hydra_app("serve")(run)

if __name__ == "__main__":
    main()
