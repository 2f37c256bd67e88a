"""surge-bench: run one benchmark job, or a sweep with `-m`.

In: Hydra overrides (`bench=offline|serve|attention|prefix`, any engine/cache/
backend key). Out: the figures on stdout and `result.json` in the job's output
directory (with the config and the environment); after a `-m` sweep, the
summary callback writes summary.csv / summary.md / summary.png in the sweep dir.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from surge.cli.hydra_app import hydra_app
from surge.config import SurgeConfig


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path.cwd()


def run(cfg: SurgeConfig, raw: DictConfig) -> dict:
    from surge.bench import run_benchmark
    from surge.bench.environment import describe_environment

    result, summary = run_benchmark(cfg)
    record = {"result": result, "overrides": _overrides(), "config": OmegaConf.to_container(raw, resolve=True),
              "environment": describe_environment()}
    path = _output_dir() / "result.json"
    path.write_text(json.dumps(record, indent=2, default=str))
    print(summary)
    print(f"result: {path}")
    return result


main = hydra_app("bench")(run)

if __name__ == "__main__":
    main()
