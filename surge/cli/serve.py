"""surge-serve: the OpenAI-compatible HTTP server, as a Hydra app.

In: Hydra overrides, e.g. `server.port=9000 'server.api_keys=[k1,k2]' backend=cpu`.
Out: a server on `server.host:server.port` (port 0 picks a free one). It prints
`surge-serve listening on http://HOST:PORT` as soon as the port is bound, builds
the engine in the background (GET /health answers 503 until then), prints one
`surge-serve ready ...` line when it serves, and exits 0 on SIGTERM / Ctrl-C
after aborting the requests in flight (1 if the engine failed to start).
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from surge.cli.hydra_app import hydra_app
from surge.config import SurgeConfig


def run(cfg: SurgeConfig, raw: DictConfig) -> None:
    from surge.server.app import eSurgeApiServer
    from surge.server.launcher import run_forever

    server = eSurgeApiServer.from_config(cfg)
    code = run_forever(server, cfg.server.host, cfg.server.port, access_log=cfg.server.access_log)
    if code:
        sys.exit(code)


main = hydra_app("serve")(run)

if __name__ == "__main__":
    main()
