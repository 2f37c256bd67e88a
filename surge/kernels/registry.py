"""One registry for the kernel backends.

A backend is one module of this package plus one ``conf/backend/<name>.yaml``. The module's
backend class carries, in one line, what the registry needs to know about it::

    @register_backend("cpu", options=CpuOptions, platforms=("cpu",))
    class CpuBackend(KernelBackend): ...

``options`` is the backend's own frozen dataclass (its keys, defaults and their comments: the
YAML holds just those keys); ``platforms`` are the jax platforms on which ``auto`` picks it;
``fallback=True`` marks the one backend ``auto`` falls back to when the platform's own cannot run.

The registry finds backends by reading the source of this package's modules (``ast``, never
importing them): the decorator's name and platforms must be literals. A backend's module is
imported only once the backend is named or ``auto`` picks it, so one whose package is missing
(jax_triton on a CPU machine) costs nothing until then, and this module imports neither jax
nor any backend. ``auto`` is resolved here and only here.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import logging
import typing
from pathlib import Path
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

logger = logging.getLogger("surge")

AUTO = "auto"
_DECORATOR = "register_backend"


class BackendUnavailable(RuntimeError):
    """A named backend cannot run on this machine."""


class BackendOptionError(ValueError):
    """A backend option (``backend.<key>``) that the backend does not have, or a value of the wrong type."""


class RegistryError(RuntimeError):
    """A backend module declares itself inconsistently (duplicate name, non-literal arguments, ...)."""


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a backend that has none."""


class Entry(NamedTuple):
    """A backend as its module declares it, read without importing the module."""

    name: str
    module: str
    class_name: str
    platforms: Tuple[str, ...]
    fallback: bool


_REGISTERED: Dict[str, type] = {}  # name -> backend class, filled as backend modules are imported
_ENTRIES: Optional[Dict[str, Entry]] = None


def register_backend(name: str, *, options: Optional[type] = None, platforms: Tuple[str, ...] = (),
                     fallback: bool = False):
    """Class decorator: the backend `name`, configured by the `options` dataclass, auto's pick on `platforms`."""
    if options is not None and not dataclasses.is_dataclass(options):
        raise RegistryError(f"backend {name!r}: options={options!r} must be a dataclass")

    def decorate(cls: type) -> type:
        cls.name = name
        cls.options_type = options or NoOptions
        _REGISTERED[name] = cls
        return cls

    return decorate


def entries() -> Dict[str, Entry]:
    """Every backend declared in this package, by name (scanned once per process)."""
    global _ENTRIES
    if _ENTRIES is None:
        _ENTRIES = _scan(Path(__file__).parent, __name__.rsplit(".", 1)[0])
    return _ENTRIES


def _scan(folder: Path, package: str) -> Dict[str, Entry]:
    found: Dict[str, Entry] = {}
    for path in sorted(folder.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        if path.name == "registry.py" or f"@{_DECORATOR}(" not in source and f".{_DECORATOR}(" not in source:
            continue
        for node in ast.parse(source, str(path)).body:
            if not isinstance(node, ast.ClassDef):
                continue
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and _callee(decorator.func) == _DECORATOR:
                    entry = _entry(path, f"{package}.{path.stem}", node.name, decorator)
                    if entry.name in found or entry.name == AUTO:
                        where = found[entry.name].module if entry.name in found else "the registry (auto)"
                        raise RegistryError(f"{path}: backend name {entry.name!r} is already taken by {where}")
                    found[entry.name] = entry
    for platform in {p for e in found.values() for p in e.platforms}:
        claims = sorted(e.name for e in found.values() if platform in e.platforms)
        if len(claims) > 1:
            raise RegistryError(f"backends {claims} all claim platform {platform!r} for auto; one may")
    fallbacks = sorted(e.name for e in found.values() if e.fallback)
    if len(fallbacks) > 1:
        raise RegistryError(f"backends {fallbacks} are all marked fallback=True; one may be")
    return found


def _callee(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _entry(path: Path, module: str, class_name: str, call: ast.Call) -> Entry:
    def literal(node: ast.expr, what: str):
        try:
            return ast.literal_eval(node)
        except ValueError:
            raise RegistryError(f"{path}:{node.lineno}: {_DECORATOR}'s {what} must be a literal") from None

    keywords = {k.arg: k.value for k in call.keywords}
    name_node = call.args[0] if call.args else keywords.get("name")
    name = literal(name_node, "name") if name_node is not None else None
    if not isinstance(name, str) or not name.isidentifier():
        raise RegistryError(f"{path}:{call.lineno}: {_DECORATOR} needs a name, a string that is an identifier")
    platforms = literal(keywords["platforms"], "platforms") if "platforms" in keywords else ()
    if isinstance(platforms, str) or not all(isinstance(p, str) for p in platforms):
        raise RegistryError(f"{path}:{call.lineno}: platforms={platforms!r} must be a tuple of platform names")
    fallback = literal(keywords["fallback"], "fallback") if "fallback" in keywords else False
    return Entry(name, module, class_name, tuple(platforms), bool(fallback))


def names() -> list[str]:
    """The registered backend names (``auto`` stands for one of them)."""
    return list(entries())


def _load(name: str) -> type:
    entry = entries().get(name)
    if entry is None:
        raise BackendUnavailable(f"unknown kernel backend {name!r}; choose {AUTO} or one of {names()}")
    try:
        importlib.import_module(entry.module)
    except ImportError as exc:
        raise BackendUnavailable(f"kernel backend {name!r} cannot be imported: {exc}") from exc
    cls = _REGISTERED.get(name)
    if cls is None or cls.__name__ != entry.class_name:
        raise RegistryError(f"{entry.module} declares backend {name!r} on {entry.class_name}, "
                            "but importing it did not register that class")
    return cls


def options_type(name: str) -> type:
    """The options dataclass of backend `name` (imports its module)."""
    return _load(name).options_type


def make_options(name: str, values: Optional[Mapping[str, Any]] = None, *, resolved_from: str = ""):
    """Backend `name`'s options from {key: value}; an unknown key or a mistyped value fails naming it."""
    cls = options_type(name)
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    which = f"the {name} backend" + (f" (which backend={resolved_from} resolved to)" if resolved_from else "")
    for key, value in values.items():
        if key not in hints:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
            has = f"did you mean backend.{close[0]}?" if close else (
                f"it has {', '.join(f'backend.{f}' for f in fields)}" if fields else "it has no options")
            raise BackendOptionError(f"invalid config value for 'backend.{key}': not an option of {which}; {has}")
        kind = hints[key]
        if kind in (int, float, bool, str) and not _is_a(value, kind):
            raise BackendOptionError(f"invalid config value for 'backend.{key}': {value!r} is not a "
                                     f"{kind.__name__} (an option of {which})")
    return cls(**values)


def _is_a(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def unavailable_reason(name: str, options=None) -> Optional[str]:
    """None when backend `name` can run here (with these options), else why not."""
    try:
        cls = _load(name)
    except BackendUnavailable as exc:
        return str(exc)
    return cls.unavailable_reason(options)


def available() -> Dict[str, Optional[str]]:
    """Every registered backend with None if it can run here (default options), else the reason it cannot."""
    return {name: unavailable_reason(name) for name in entries()}


def resolve(name: str, options: Optional[Mapping[str, Any]] = None) -> str:
    """The concrete backend name `name` stands for on this machine (with these raw options)."""
    if name != AUTO:
        reason = unavailable_reason(name, make_options(name, options))
        if reason is not None:
            raise BackendUnavailable(f"kernel backend {name!r} is unavailable here: {reason}")
        return name
    import jax

    platform = jax.default_backend()
    preferred = next((e.name for e in entries().values() if platform in e.platforms), None)
    fallback = next((e.name for e in entries().values() if e.fallback), None)
    reason = f"no backend claims platform {platform!r}"
    if preferred is not None:
        reason = unavailable_reason(preferred, make_options(preferred, options, resolved_from=AUTO))
        if reason is None:
            return preferred
    if fallback is None:
        raise BackendUnavailable(f"backend={AUTO}: {reason}, and no backend is marked fallback=True")
    logger.info("backend=%s: %s on %s (%s); using %s", AUTO, preferred or "no backend", platform, reason, fallback)
    make_options(fallback, options, resolved_from=AUTO)
    return fallback


def get_backend(name: str, options: Optional[Mapping[str, Any]] = None):
    """An instance of the backend `name` (or auto's pick) stands for, with its options built from `options`."""
    resolved = resolve(name, options)
    return _load(resolved)(make_options(resolved, options, resolved_from=AUTO if name == AUTO else ""))
