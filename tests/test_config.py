"""Config tree: every option of every group composes and validates; bad keys and values fail by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from surge.cli.hydra_app import conf_dir
from surge.config import ConfigError, SurgeConfig, make_config, register_configs, to_config

CONF = Path(conf_dir())
GROUPS = ["model", "engine", "scheduler", "cache", "backend", "server", "sampling", "bench"]


def _compose(config_name: str, overrides: list[str]):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name=config_name, overrides=overrides)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# conf/bench.yaml also registers a Hydra callback, which only @hydra.main composes (tested through the CLI below).
@pytest.mark.parametrize("app", ["generate", "serve"])
def test_primary_configs_compose(app):
    cfg = to_config(_compose(app, []))
    assert isinstance(cfg, SurgeConfig)
    assert cfg.model.name == "smollm2-135m-instruct"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group, option):
    from surge.cli.hydra_app import app_sections

    app = next(a for a in ("generate", "serve", "bench") if group in app_sections(a))
    cfg = to_config(_compose(app, [f"{group}={option}"]))
    if group == "backend":
        assert cfg.backend.name == option
    if group == "scheduler":
        assert cfg.scheduler.policy == option
    if group == "bench":
        assert cfg.bench.mode == option


def _schema_classes(cls=SurgeConfig, seen=None) -> list:
    import dataclasses
    import typing

    seen = [] if seen is None else seen
    seen.append(cls)
    for kind in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(kind) and kind not in seen:
            _schema_classes(kind, seen)
    return seen


def test_every_key_is_commented_once_in_its_dataclass():
    """A key's comment lives in surge/config.py, above its field (fields may share one comment, as a group);
    the YAML files set values only and name the dataclass that documents them in their header."""
    import ast
    import dataclasses
    import inspect
    import textwrap

    for cls in _schema_classes():
        source = textwrap.dedent(inspect.getsource(cls))
        lines = source.splitlines()
        sections = {f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(f.type) or
                    f.type in {c.__name__ for c in _schema_classes()}}
        documented: set[int] = set()
        for node in ast.parse(source).body[0].body:
            if not isinstance(node, ast.AnnAssign) or node.target.id in sections:
                continue  # a section (a dataclass of its own) is documented by its class
            above = lines[node.lineno - 2].strip()
            assert above.startswith("#") or node.lineno - 1 in documented, \
                f"{cls.__name__}.{node.target.id} has no comment in surge/config.py"
            documented.add(node.lineno)
    for path in CONF.rglob("*.yaml"):
        if path.parent == CONF or "hydra" in path.parts or path.parent.name == "backend":
            continue  # primary configs and --help texts are not schema sections; backend/ is the registry's
        lines = path.read_text().splitlines()
        assert lines[0].startswith("#"), f"{path.relative_to(CONF)} has no header"
        body = [line for line in lines if line and not line.startswith("#")]
        assert all("#" not in line for line in body), f"{path.relative_to(CONF)} repeats a comment of surge/config.py"
        if "defaults:" not in body:  # a variant inherits its base's header
            assert "surge/config.py" in "\n".join(lines[:6]), f"{path.relative_to(CONF)} does not say where its keys are documented"


@pytest.mark.parametrize("override,key", [
    ("cache.page_size=0", "cache.page_size"),
    ("cache.page_size=24", "cache.page_size"),
    ("cache.hbm_utilization=1.5", "cache.hbm_utilization"),
    ("engine.max_num_seqs=0", "engine.max_num_seqs"),
    ("scheduler.policy=lifo", "scheduler.policy"),
    ("model.dtype=float8", "model.dtype"),
    ("sampling.top_p=0", "sampling.top_p"),
    ("server.responses_store=redis", "server.responses_store"),
    ("server.responses_store_max=0", "server.responses_store_max"),
    ("server.reasoning_parser=think", "server.reasoning_parser"),
    ("server.max_request_bytes=0", "server.max_request_bytes"),
    ("server.max_prompt_tokens=-1", "server.max_prompt_tokens"),
    ("server.default_max_tokens=-1", "server.default_max_tokens"),
])
def test_bad_values_fail_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_config(_compose("generate", [override]))


def test_server_limits_defaults():
    server = to_config(_compose("serve", [])).server
    assert (server.max_request_bytes, server.max_prompt_tokens, server.default_max_tokens) == (8 * 2**20, 0, 1024)
    assert (server.max_queue, server.metrics_require_api_key, server.api_keys_file) == (1024, True, "")
    server = to_config(_compose("serve", ["server.max_prompt_tokens=512", "server.metrics_require_api_key=false"])).server
    assert (server.max_prompt_tokens, server.metrics_require_api_key) == (512, False)


def test_unknown_key_fails_at_compose():
    with pytest.raises(Exception, match="pge"):
        _compose("generate", ["cache.pge=3"])


def test_short_name_overrides():
    cfg = make_config("smollm2-135m-instruct", page_size=32, max_num_seqs=8, scheduling_policy="priority",
                      backend="reference", num_pages=100, enable_prefix_caching=False)
    assert (cfg.cache.page_size, cfg.engine.max_num_seqs, cfg.scheduler.policy) == (32, 8, "priority")
    assert (cfg.backend.name, cfg.cache.num_pages, cfg.cache.enable_prefix_caching) == ("reference", 100, False)
    with pytest.raises(ConfigError, match="pagesize"):
        make_config(pagesize=3)


def test_cli_typo_exits_with_message():
    proc = subprocess.run([sys.executable, "-m", "surge.cli.bench", "cache.page_sise=16"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "page_sise" in proc.stderr + proc.stdout


def test_cli_prints_the_composed_config():
    proc = subprocess.run([sys.executable, "-m", "surge.cli.bench", "--cfg", "job", "cache.page_size=32",
                           "backend=reference", "scheduler=priority"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "page_size: 32" in proc.stdout and "policy: priority" in proc.stdout and "name: reference" in proc.stdout
    # A multirun sweep (-m) is exercised end to end in tests/test_bench.py.


@pytest.mark.parametrize("app", ["generate", "serve", "bench"])
def test_every_yaml_default_equals_the_schema_default(app):
    """A comment and a default live once, in the dataclass: the YAML an app composes with no overrides says the
    same values (for the groups it lists), so the two never drift."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from surge.cli.help_text import register_help_resolver
    from surge.cli.hydra_app import app_sections, conf_dir
    from surge.config import SurgeConfig, register_configs

    register_configs()
    register_help_resolver()
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        composed = OmegaConf.to_container(compose(app), resolve=False)
    schema_defaults = OmegaConf.to_container(OmegaConf.structured(SurgeConfig))
    sections = app_sections(app) - {"surge_schema"}
    assert sections, app
    for section in sections:
        assert composed[section] == schema_defaults[section], f"conf/{section}/ differs from surge/config.py"


def test_bench_variants_inherit_offline_and_list_only_what_differs():
    from omegaconf import OmegaConf

    from surge.cli.hydra_app import conf_dir

    for variant in ("serve", "attention", "prefix"):
        node = OmegaConf.load(f"{conf_dir()}/bench/{variant}.yaml")
        assert node.defaults == ["offline", "_self_"] and node.mode == variant
        assert set(node) <= {"defaults", "mode", "input_len", "output_len"}


def test_engine_limits_say_what_is_not_built_and_what_requests_accept():
    from surge.config import ConfigError, make_config

    # Data-parallel replicas are built (surge.parallel); the devices they need are checked at start-up.
    assert make_config(**{"engine.data_parallel_size": 2}).engine.data_parallel_size == 2
    with pytest.raises(ConfigError, match="engine.data_parallel_size.*>= 1"):
        make_config(**{"engine.data_parallel_size": 0})
    with pytest.raises(ConfigError, match="engine.data_parallel_affinity_slack.*>= 0"):
        make_config(**{"engine.data_parallel_affinity_slack": -1})
    with pytest.raises(ConfigError, match=r"engine.max_logprobs.*\[0, 20\]"):
        make_config(max_logprobs=21)
    assert make_config(max_logprobs=20).engine.max_logprobs == 20


def test_each_backend_yaml_holds_exactly_its_options_with_their_defaults():
    import dataclasses

    import yaml

    from surge.kernels import registry

    assert _options("backend") == sorted([registry.AUTO, *registry.names()])
    for name in _options("backend"):
        keys = yaml.safe_load((CONF / "backend" / f"{name}.yaml").read_text())
        assert keys.pop("name") == name
        defaults = {} if name == registry.AUTO else {
            f.name: f.default for f in dataclasses.fields(registry.options_type(name))}
        assert keys == defaults, name


def test_backend_keys_are_the_named_backends_own():
    cfg = to_config(_compose("generate", ["backend=cpu", "backend.num_threads=2", "backend.cpu_isa=avx2"]))
    assert (cfg.backend.name, cfg.backend.options) == ("cpu", {"num_threads": 2, "cpu_isa": "avx2"})
    assert to_config(_compose("generate", ["backend=pallas"])).backend.options == {"interpret": False}
    assert make_config(backend="cpu", **{"backend.num_threads": 3}).backend.options == {"num_threads": 3}
    for overrides, message in (
            (["backend=reference", "backend.num_threads=2"], r"'backend.num_threads': not an option of the reference"),
            (["backend=cpu", "backend.num_thread=2"], r"'backend.num_thread'.*did you mean backend.num_threads"),
            (["backend=cpu", "backend.cpu_isa=mmx"], r"'backend.cpu_isa': 'mmx' is not auto\|scalar"),
            (["backend=cpu", "backend.num_threads=-1"], r"'backend.num_threads': -1 must be >= 0"),
            (["backend.name=cuda"], r"'backend.name': 'cuda' is not auto\|")):
        with pytest.raises(ConfigError, match=message):
            to_config(_compose("generate", overrides))
    # auto's keys are checked when the engine resolves it (the platform is not known while composing).
    assert to_config(_compose("generate", ["backend.num_threads=2"])).backend.options == {"num_threads": 2}


def test_server_yaml_writes_backend_keys_flat():
    from omegaconf import OmegaConf

    from surge.server.process import config_yaml

    cfg = make_config(backend="cpu", **{"backend.num_threads": 3})
    written = OmegaConf.create(config_yaml(cfg))
    assert dict(written.backend) == {"name": "cpu", "num_threads": 3}
    assert to_config(OmegaConf.masked_copy(written, [k for k in written if k not in ("defaults", "hydra")])
                     ).backend == cfg.backend
