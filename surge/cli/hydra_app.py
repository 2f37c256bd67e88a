"""Shared plumbing of the Hydra command-line apps (surge-generate, -serve, -bench).

In: the app's primary config name (conf/<name>.yaml) and its job function.
Out: a console-script `main()` that composes the config, validates it into a
SurgeConfig (a bad key or value exits with a message naming it) and runs the job.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from surge.config import ConfigError, SurgeConfig, register_configs, to_config


def conf_dir() -> str:
    """The conf/ tree: beside the package in a checkout, inside it in a wheel."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "generate.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"surge's conf/ directory was not found next to {package}")


def hydra_app(config_name: str) -> Callable[[Callable[[SurgeConfig, DictConfig], object]], Callable[[], None]]:
    """Wrap `job(cfg, raw_cfg)` as a Hydra console script reading conf/<config_name>.yaml."""

    def wrap(job: Callable[[SurgeConfig, DictConfig], object]) -> Callable[[], None]:
        import hydra

        register_configs()

        @hydra.main(version_base=None, config_path=conf_dir(), config_name=config_name)
        def _run(raw: DictConfig) -> None:
            try:
                cfg = to_config(raw)
            except ConfigError as exc:
                print(f"surge: {exc}", file=sys.stderr)
                sys.exit(2)
            logging.getLogger("surge").setLevel(cfg.engine.log_level.upper())
            job(cfg, raw)

        @functools.wraps(job)
        def main() -> None:
            _run()

        return main

    return wrap
