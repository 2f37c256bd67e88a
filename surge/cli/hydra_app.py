"""Shared plumbing of the Hydra command-line apps (surge-generate, -serve, -bench).

In: the app's primary config name (conf/<name>.yaml) and its job function.
Out: a console-script `main()` that composes the config, validates it into a
SurgeConfig and runs the job. A command line that does not compose or validate (a
typo, '+' on an existing key, a wrong type, a missing group option) exits 2 with
one line naming the key (surge/cli/overrides.py), never a traceback; `--help`
prints conf/hydra/help/<app>.yaml.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from omegaconf import DictConfig

from surge.cli.help_text import register_help_resolver
from surge.config import ConfigError, SurgeConfig, register_configs, to_config


def conf_dir() -> str:
    """The conf/ tree: beside the package in a checkout, inside it in a wheel."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "generate.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"surge's conf/ directory was not found next to {package}")


def app_sections(config_name: str, top_level_keys: tuple[str, ...] = ()) -> frozenset[str]:
    """What an app reads: the groups its primary config's defaults list names, plus its own top-level keys."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.load(Path(conf_dir()) / f"{config_name}.yaml")).get("defaults", [])
    groups = {next(iter(entry)) for entry in defaults if isinstance(entry, dict)}
    return frozenset(g for g in groups if not g.startswith("override ")) | frozenset(top_level_keys)


def unread_override(overrides: list[str], sections: frozenset[str]) -> str | None:
    """The first command-line override naming a section of surge's schema that the app does not read (None if
    there is none; keys the schema does not have are left to the unknown-key message)."""
    schema_sections = {f.name for f in dataclasses.fields(SurgeConfig)}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        top = key.split(".", 1)[0].split("@", 1)[0]
        if top in schema_sections and top not in sections:
            return key
    return None


def hydra_app(config_name: str, top_level_keys: tuple[str, ...] = ()
              ) -> Callable[[Callable[[SurgeConfig, DictConfig], object]], Callable[[], None]]:
    """Wrap `job(cfg, raw_cfg)` as a Hydra console script reading conf/<config_name>.yaml.

    The app reads the groups conf/<config_name>.yaml lists and `top_level_keys`; an override of any other
    section (e.g. `surge-serve sampling.temperature=0`) exits 2 naming it, instead of doing nothing.
    """
    app = f"surge-{config_name}"
    sections = app_sections(config_name, top_level_keys)

    def wrap(job: Callable[[SurgeConfig, DictConfig], object]) -> Callable[[], None]:
        import hydra

        register_configs()
        register_help_resolver()
        job_failed: list[bool] = []

        @hydra.main(version_base=None, config_path=conf_dir(), config_name=config_name)
        def _run(raw: DictConfig) -> None:
            try:
                cfg = to_config(raw)
            except ConfigError as exc:
                print(f"{app}: {exc}", file=sys.stderr)
                sys.exit(2)
            logging.getLogger("surge").setLevel(cfg.engine.log_level.upper())
            # The job's own errors get Hydra's usual report; only composing is ours to explain.
            with _hydra_reports_errors():
                try:
                    job(cfg, raw)
                except _user_errors() as exc:  # the config asks for what cannot be: say so, no traceback
                    print(f"{app}: {exc}", file=sys.stderr)
                    sys.exit(2)
                except Exception:
                    job_failed.append(True)  # a -m sweep re-raises it after the jobs: not a command-line error
                    raise

        @functools.wraps(job)
        def main() -> None:
            unread = unread_override([a for a in sys.argv[1:] if not a.startswith("-")], sections)
            if unread is not None:
                print(f"{app}: {app} does not read '{unread}' (it reads {', '.join(sorted(sections))})",
                      file=sys.stderr)
                sys.exit(2)
            if os.environ.get(_FULL_ERROR):  # the user asked for Hydra's full traceback
                _run()
                return
            os.environ[_FULL_ERROR] = "1"  # Hydra then raises composition errors instead of printing them
            try:
                _run()
            except Exception as exc:
                if job_failed:
                    raise
                from surge.cli.overrides import explain

                print(f"{app}: {explain(exc, app)}", file=sys.stderr)
                sys.exit(2)
            finally:
                os.environ.pop(_FULL_ERROR, None)

        return main

    return wrap


_FULL_ERROR = "HYDRA_FULL_ERROR"


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message already names the key to change (imported late: they pull in JAX)."""
    from surge.cache.kv_cache import KVCacheTooSmall
    from surge.models.catalogue import ModelFetchError, ModelNotFound

    return ConfigError, KVCacheTooSmall, ModelFetchError, ModelNotFound


@contextlib.contextmanager
def _hydra_reports_errors() -> Iterator[None]:
    """Unset HYDRA_FULL_ERROR while the job runs (its child processes do not inherit it), then restore it."""
    previous = os.environ.pop(_FULL_ERROR, None)
    try:
        yield
    finally:
        if previous is not None:
            os.environ[_FULL_ERROR] = previous
