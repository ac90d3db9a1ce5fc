"""The registry: every layer, loss, optimizer and initializer by name, each with the
plugin that provided it.

Plugins are found through the ``deltaprop`` entry-point group on first use; the
built-in plugins are declared there too, so they are found exactly as a third-party
package is. A plugin either registers all of its names or none: one that fails to
import, whose hook raises, or that claims a name another plugin already has is
recorded as failed (with why) and skipped, or raises in strict mode.
"""

from __future__ import annotations

import difflib
import importlib.metadata as metadata
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .config import construct
from .errors import PluginError, RegistryError
from .layer import Layer
from .loss import Loss
from .optimizer import Optimizer

ENTRY_POINT_GROUP = "deltaprop"
STRICT_ENV = "DELTAPROP_STRICT_PLUGINS"
DISABLE_ENV = "DELTAPROP_DISABLE_PLUGINS"

#: kind -> (hook name, base class or None for plain callables)
KINDS: dict[str, tuple[str, type | None]] = {
    "layer": ("deltaprop_register_layers", Layer),
    "loss": ("deltaprop_register_losses", Loss),
    "optimizer": ("deltaprop_register_optimizers", Optimizer),
    "initializer": ("deltaprop_register_initializers", None),
}


@dataclass(frozen=True)
class Provider:
    """Where a registered name comes from."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} ({self.distribution} {self.version})".replace(" )", ")")


@dataclass
class PluginRecord:
    """One plugin the registry saw, and what became of it."""

    name: str
    distribution: str
    version: str
    value: str
    status: str = "pending"  # loaded | failed | disabled
    error: str | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)

    @property
    def provider(self) -> Provider:
        return Provider(self.name, self.distribution, self.version)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "module": self.value, "status": self.status, "error": self.error,
                "provides": self.provides}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str) -> set[str]:
    return {part.strip() for part in os.environ.get(name, "").split(",") if part.strip()}


class Registry:
    """Names to components, filled from plugins on first use."""

    def __init__(self, *, group: str = ENTRY_POINT_GROUP, strict: bool | None = None,
                 disabled: Iterable[str] | None = None, discover: bool = True) -> None:
        self.group = group
        self.strict = _env_flag(STRICT_ENV) if strict is None else strict
        self.disabled = _env_list(DISABLE_ENV) if disabled is None else set(disabled)
        self._discover_on_use = discover
        self._discovered = False
        self._entries: dict[str, dict[str, tuple[Any, Provider]]] = {k: {} for k in KINDS}
        self._plugins: list[PluginRecord] = []
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self.discovery_seconds = 0.0

    # -- discovery -------------------------------------------------------------------
    def _ensure(self) -> None:
        if not self._discovered and self._discover_on_use:
            self._discovered = True
            self.discover()

    def discover(self) -> None:
        """Load every plugin of the entry-point group; the deltaprop distribution first,
        then the others by distribution and name, so precedence does not depend on the
        order site-packages happens to list them."""
        start = time.perf_counter()
        self._discovered = True
        eps = list(metadata.entry_points(group=self.group))

        def order(ep: metadata.EntryPoint) -> tuple[int, str, str]:
            dist = _dist_name(ep)
            return (0 if dist == "deltaprop" else 1, dist, ep.name)

        seen: set[tuple[str, str]] = set()
        for ep in sorted(eps, key=order):
            key = (_dist_name(ep), ep.name)
            if key in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(key)
            record = PluginRecord(ep.name, _dist_name(ep), _dist_version(ep), ep.value)
            self._plugins.append(record)
            if ep.name in self.disabled:
                record.status = "disabled"
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # any import failure must not take the registry down
                self._fail(record, f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}")
                continue
            self._add(record, plugin)
        self.discovery_seconds = time.perf_counter() - start

    def register_plugin(self, plugin: Any, name: str | None = None, *,
                        distribution: str = "(registered at run time)", version: str = "") -> None:
        """Register a plugin object or module directly, without an entry point: for
        notebooks, tests and layers defined in a script."""
        self._ensure()
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        value = getattr(plugin, "__name__", repr(plugin))
        record = PluginRecord(name, distribution, version, value)
        self._plugins.append(record)
        if name in self.disabled:
            record.status = "disabled"
            return
        self._add(record, plugin)

    def _fail(self, record: PluginRecord, message: str) -> None:
        record.status = "failed"
        record.error = message
        full = f"plugin {record.name!r} from {record.distribution} {record.version}: {message}"
        if self.strict:
            raise PluginError(full + f" (strict mode: unset {STRICT_ENV} to skip it instead)")
        warnings.warn(full + "; skipped", RuntimeWarning, stacklevel=3)

    def _add(self, record: PluginRecord, plugin: Any) -> None:
        try:
            self._pm.register(plugin, name=f"{record.distribution}:{record.name}")
        except Exception as exc:
            self._fail(record, f"is not a valid plugin: {type(exc).__name__}: {exc}")
            return
        pm_name = self._pm.get_name(plugin)
        gathered: dict[str, dict[str, Any]] = {}
        try:
            for kind, (hook_name, base) in KINDS.items():
                hook = getattr(self._pm.hook, hook_name)
                for impl in hook.get_hookimpls():
                    if impl.plugin_name != pm_name:
                        continue
                    try:
                        result = impl.function()
                    except Exception as exc:
                        raise _Rejected(f"hook {hook_name} raised {type(exc).__name__}: {exc}"
                                        ) from exc
                    gathered[kind] = _validate(kind, base, result, hook_name)
            for kind, items in gathered.items():
                for item_name in items:
                    if item_name in self._entries[kind]:
                        other = self._entries[kind][item_name][1]
                        raise _Rejected(f"{kind} {item_name!r} is already provided by {other}; "
                                        f"{record.provider} provides it too")
        except _Rejected as exc:
            self._pm.unregister(plugin)
            self._fail(record, str(exc))
            return
        for kind, items in gathered.items():
            for item_name, obj in items.items():
                self._entries[kind][item_name] = (obj, record.provider)
            record.provides[kind] = sorted(items)
        record.status = "loaded"

    # -- lookup ------------------------------------------------------------------------
    def names(self, kind: str = "layer") -> list[str]:
        self._ensure()
        return sorted(self._entries[kind])

    def get(self, kind: str, name: str) -> Any:
        return self._lookup(kind, name)[0]

    def provider(self, kind: str, name: str) -> Provider:
        return self._lookup(kind, name)[1]

    def _lookup(self, kind: str, name: str) -> tuple[Any, Provider]:
        self._ensure()
        entries = self._entries[kind]
        if name in entries:
            return entries[name]
        if not isinstance(name, str):
            raise RegistryError(f"{kind} name must be a string, got {name!r}")
        close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.6)
        message = f"unknown {kind} {name!r}"
        message += f"; did you mean {', '.join(map(repr, close))}?" if close else "."
        listing = "deltaprop layers" if kind == "layer" else f"deltaprop layers --kind {kind}"
        message += f" Run `{listing}` to see the {len(entries)} installed"
        failed = [p.name for p in self._plugins if p.status == "failed"]
        if failed:
            message += f" (plugins that failed to load: {', '.join(failed)})"
        raise RegistryError(message + ".")

    def plugins(self) -> list[PluginRecord]:
        self._ensure()
        return list(self._plugins)

    def create(self, name: str, **config: Any) -> Layer:
        return construct(self.get("layer", name), config)

    def create_loss(self, name: str, **config: Any) -> Loss:
        return construct(self.get("loss", name), config)

    def create_optimizer(self, name: str, **config: Any) -> Optimizer:
        return construct(self.get("optimizer", name), config)


class _Rejected(Exception):
    pass


def _validate(kind: str, base: Any, result: Any, hook_name: str) -> dict[str, Any]:
    if result is None:
        return {}
    if base is None:
        if not isinstance(result, dict) or not all(
            isinstance(k, str) and callable(v) for k, v in result.items()
        ):
            raise _Rejected(f"hook {hook_name} must return a dict of name -> callable")
        return dict(result)
    if isinstance(result, type) or not isinstance(result, (list, tuple)):
        raise _Rejected(f"hook {hook_name} must return a list of {base.__name__} subclasses, "
                        f"got {type(result).__name__}")
    items: dict[str, Any] = {}
    for cls in result:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise _Rejected(f"hook {hook_name} returned {cls!r}, not a {base.__name__} subclass")
        registry_name = getattr(cls, "name", None)
        if not isinstance(registry_name, str) or not registry_name:
            raise _Rejected(f"{cls.__qualname__} has no registry name (class attribute `name`)")
        if registry_name in items:
            raise _Rejected(f"hook {hook_name} returned two classes named {registry_name!r}")
        items[registry_name] = cls
    return items


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "(unknown distribution)"


def _dist_version(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else ""


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, discovered on first use."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def reset_registry(registry: Registry | None = None) -> Registry:
    """Replace the process-wide registry (re-reading the environment switches)."""
    global _default
    _default = registry if registry is not None else Registry()
    return _default


def create(name: str, **config: Any) -> Layer:
    """Make a layer by registry name: ``create("dense", units=10)``."""
    return get_registry().create(name, **config)


def create_loss(name: str, **config: Any) -> Loss:
    return get_registry().create_loss(name, **config)


def create_optimizer(name: str, **config: Any) -> Optimizer:
    return get_registry().create_optimizer(name, **config)


def get_initializer(name: str) -> Callable[..., Any]:
    return get_registry().get("initializer", name)
