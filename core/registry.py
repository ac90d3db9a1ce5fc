"""The registry: every layer, loss, optimizer and initializer by name, each with the
plugin that provided it.

Plugins are found through the ``deltaprop`` entry-point group on first use; the
built-in plugins are declared there too, so they are found exactly as a third-party
package is. A plugin either registers all of its names or none: one that fails to
import, whose hook raises, or that claims a name another plugin already has is
recorded as failed (with why) and skipped, or raises in strict mode.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.metadata as metadata
import io
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pluggy

from . import hookspecs
from .config import construct
from .errors import PluginError, RegistryError
from .layer import Layer, use_initializers
from .loss import Loss
from .optimizer import Optimizer

ENTRY_POINT_GROUP = "deltaprop"
STRICT_ENV = "DELTAPROP_STRICT_PLUGINS"
DISABLE_ENV = "DELTAPROP_DISABLE_PLUGINS"
#: Module attribute a plugin may set to the deltaprop versions it supports (a PEP 440
#: specifier such as ``">=0.1,<0.3"``), for plugins that are not installed
#: distributions; an installed one says it with ``Requires-Dist: deltaprop...``.
REQUIRES_ATTRIBUTE = "DELTAPROP_REQUIRES"

#: kind -> (hook name, base class or None for plain callables)
KINDS: dict[str, tuple[str, type | None]] = {
    "layer": ("deltaprop_register_layers", Layer),
    "loss": ("deltaprop_register_losses", Loss),
    "optimizer": ("deltaprop_register_optimizers", Optimizer),
    "initializer": ("deltaprop_register_initializers", None),
    "onnx_converter": ("deltaprop_register_onnx_converters", None),
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
    #: seconds spent importing the module and calling its hooks
    load_seconds: float = 0.0
    #: what the plugin printed on standard output while loading (kept off stdout)
    printed: str = ""
    #: whether it changed numpy's error handling while loading (put back)
    changed_errstate: bool = False

    @property
    def provider(self) -> Provider:
        return Provider(self.name, self.distribution, self.version)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "module": self.value, "status": self.status, "error": self.error,
                "provides": self.provides, "load_seconds": round(self.load_seconds, 6),
                "printed": self.printed}


_TRUE = ("1", "true", "yes", "on", "y", "t")
_FALSE = ("", "0", "false", "no", "off", "n", "f")


def _env_flag(name: str) -> bool:
    """An on/off environment switch in its usual spellings; anything else is refused
    rather than silently read as off."""
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise PluginError(f"{name}={raw!r}: expected 1, true, yes or on (or 0, false, no, off)")


def _contained(exc: BaseException) -> bool:
    """Whether a plugin's exception is the plugin's failure to report (anything but the
    user's Ctrl-C): a SystemExit in a plugin must not end the command."""
    return not isinstance(exc, KeyboardInterrupt)


@contextlib.contextmanager
def _captured_stdout(record: PluginRecord) -> Iterator[None]:
    """Keep a plugin's prints out of standard output (``deltaprop layers --json`` must
    stay JSON); what it printed is kept on its record and reported in one warning. A
    plugin that changes numpy's process-wide error handling (``np.seterr(all="raise")``)
    has it put back, and is reported too: it would turn every overflow into a crash."""
    buffer = io.StringIO()
    errstate = np.geterr()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        record.printed += buffer.getvalue()
        if np.geterr() != errstate:
            np.seterr(**errstate)
            record.changed_errstate = True


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
        #: wall time of the whole discovery, and of the entry-point scan within it
        self.discovery_seconds = 0.0
        self.scan_seconds = 0.0

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
        eps = scan_entry_points(self.group)
        self.scan_seconds = time.perf_counter() - start
        seen: set[tuple[str, str]] = set()
        for ep in eps:
            key = (ep.distribution, ep.name)
            if key in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(key)
            record = PluginRecord(ep.name, ep.distribution, ep.version, ep.value)
            self._plugins.append(record)
            if ep.name in self.disabled:
                record.status = "disabled"
                continue
            loading = time.perf_counter()
            unsupported = _unsupported_requirement(ep.requires)
            if unsupported:
                self._fail(record, f"supports {unsupported} (its Requires-Dist), but this is "
                                   f"deltaprop {deltaprop_version()}; not imported")
                continue
            try:
                with _captured_stdout(record):
                    plugin = ep.load()
            except BaseException as exc:  # no import failure may take the registry down
                if not _contained(exc):
                    raise
                self._fail(record, f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}")
                continue
            finally:
                record.load_seconds = time.perf_counter() - loading
            self._add(record, plugin)
            record.load_seconds = time.perf_counter() - loading
            self._report_output(record)
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
        self._report_output(record)

    def _report_output(self, record: PluginRecord) -> None:
        if record.changed_errstate:
            warnings.warn(f"plugin {record.name!r} from {record.distribution} changed numpy's "
                          f"error handling (np.seterr) while loading; it was put back",
                          RuntimeWarning, stacklevel=3)
        if record.printed:
            first = record.printed.strip().splitlines()[0][:80] if record.printed.strip() else ""
            warnings.warn(f"plugin {record.name!r} from {record.distribution} printed "
                          f"{len(record.printed)} characters on standard output while "
                          f"loading (kept off the output): {first!r}", RuntimeWarning,
                          stacklevel=3)

    def _warn_unknown_hooks(self, record: PluginRecord, plugin: Any) -> None:
        """A hook implementation whose name matches no hook is never called: say so,
        with the closest hook name (a misspelling is the usual cause)."""
        known = [hook_name for hook_name, _ in KINDS.values()]
        for caller in self._pm.get_hookcallers(plugin) or []:
            if caller.has_spec():
                continue
            close = difflib.get_close_matches(caller.name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            warnings.warn(f"plugin {record.name!r} from {record.distribution}: hook "
                          f"{caller.name!r} is not a deltaprop hook and is never called"
                          f"{hint}", RuntimeWarning, stacklevel=4)

    def _fail(self, record: PluginRecord, message: str) -> None:
        record.status = "failed"
        record.error = message
        full = f"plugin {record.name!r} from {record.distribution} {record.version}: {message}"
        if self.strict:
            raise PluginError(full + f" (strict mode: unset {STRICT_ENV} to skip it instead)")
        warnings.warn(full + "; skipped", RuntimeWarning, stacklevel=3)

    def _add(self, record: PluginRecord, plugin: Any) -> None:
        declared = getattr(plugin, REQUIRES_ATTRIBUTE, None)
        if declared is not None:
            bad = _unsupported_requirement([f"deltaprop {declared}"]) if isinstance(
                declared, str) else f"{declared!r}"
            if bad:
                self._fail(record, f"supports deltaprop {declared} ({REQUIRES_ATTRIBUTE}), but "
                                   f"this is deltaprop {deltaprop_version()}")
                return
        try:
            self._pm.register(plugin, name=f"{record.distribution}:{record.name}")
        except Exception as exc:
            self._fail(record, f"is not a valid plugin: {type(exc).__name__}: {exc}")
            return
        self._warn_unknown_hooks(record, plugin)
        pm_name = self._pm.get_name(plugin)
        gathered: dict[str, dict[str, Any]] = {}
        try:
            for kind, (hook_name, base) in KINDS.items():
                hook = getattr(self._pm.hook, hook_name)
                for impl in hook.get_hookimpls():
                    if impl.plugin_name != pm_name:
                        continue
                    try:
                        with _captured_stdout(record):
                            result = impl.function()
                    except BaseException as exc:
                        if not _contained(exc):
                            raise
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
        if not isinstance(name, str):
            raise RegistryError(f"{kind} name must be a string, got {name!r}")
        if name in entries:
            return entries[name]
        close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.6)
        message = f"unknown {kind} {name!r}"
        message += f"; did you mean {', '.join(map(repr, close))}?" if close else "."
        listing = "deltaprop layers" if kind == "layer" else f"deltaprop layers --kind {kind}"
        message += f" Run `{listing}` to see the {len(entries)} installed"
        failed = [p.name for p in self._plugins if p.status == "failed"]
        if failed:
            message += f" (plugins that failed to load: {', '.join(failed)})"
        disabled = self.disabled_plugins()
        if disabled:
            message += (f" (plugins disabled by {DISABLE_ENV}, which may provide it: "
                        f"{', '.join(disabled)})")
        raise RegistryError(message + ".")

    def disabled_plugins(self) -> list[str]:
        """Names of the plugins ``DELTAPROP_DISABLE_PLUGINS`` kept from loading."""
        self._ensure()
        return [p.name for p in self._plugins if p.status == "disabled"]

    def plugins(self) -> list[PluginRecord]:
        self._ensure()
        return list(self._plugins)

    def create(self, name: str, /, **config: Any) -> Layer:
        return construct(self.get("layer", name), config)

    def create_loss(self, name: str, /, **config: Any) -> Loss:
        return construct(self.get("loss", name), config)

    def create_optimizer(self, name: str, /, **config: Any) -> Optimizer:
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


@dataclass(frozen=True)
class ScannedEntryPoint:
    """What discovery needs of one entry point, read once from the distribution's
    metadata (so a registry made again, as tests do, costs no second scan)."""

    name: str
    value: str
    distribution: str
    version: str
    requires: tuple[str, ...]

    def load(self) -> Any:
        return metadata.EntryPoint(self.name, self.value, ENTRY_POINT_GROUP).load()


_scan_cache: dict[tuple[Any, ...], list[ScannedEntryPoint]] = {}


def _path_stamp() -> tuple[Any, ...]:
    """sys.path and the modification time of each entry: installing or removing a
    distribution changes its site-packages directory, and so the stamp."""
    stamp: list[Any] = []
    for entry in sys.path:
        try:
            stamp.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            stamp.append((entry, None))
    return tuple(stamp)


def scan_entry_points(group: str = ENTRY_POINT_GROUP) -> list[ScannedEntryPoint]:
    """The group's entry points, the deltaprop distribution first, then the others by
    distribution and name, so precedence does not depend on the order site-packages
    happens to list them. Cached per process until sys.path or a directory on it changes:
    the scan reads every installed distribution's metadata, which is slow on some
    Pythons and with many packages installed."""
    key = (group, _path_stamp())
    cached = _scan_cache.get(key)
    if cached is not None:
        return list(cached)
    found = []
    described: dict[int, tuple[str, str, tuple[str, ...]]] = {}
    for ep in metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        if dist is None:
            about: tuple[str, str, tuple[str, ...]] = ("(unknown distribution)", "", ())
        elif id(dist) in described:
            about = described[id(dist)]
        else:  # read each distribution's METADATA once, not once per entry point
            meta = dist.metadata
            about = (meta["Name"], meta["Version"], tuple(meta.get_all("Requires-Dist") or ()))
            described[id(dist)] = about
        found.append(ScannedEntryPoint(ep.name, ep.value, *about))
    found.sort(key=lambda e: (0 if e.distribution == "deltaprop" else 1, e.distribution, e.name))
    _scan_cache.clear()
    _scan_cache[key] = found
    return list(found)


@functools.lru_cache(maxsize=1)
def deltaprop_version() -> str:
    """The installed deltaprop's version (0.0.0 when run from a source tree)."""
    try:
        return metadata.version("deltaprop")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0"


def _unsupported_requirement(requires: Iterable[str]) -> str | None:
    """The plugin's requirement on deltaprop (e.g. ``deltaprop>=2``) when the running
    deltaprop does not satisfy it, else None. Requirements behind an extra or a marker
    that does not hold here are ignored."""
    from packaging.requirements import InvalidRequirement, Requirement

    for text in requires:
        if not re.match(r"\s*deltaprop\b(?![-_.]?[a-z0-9])", text, re.IGNORECASE):
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            return f"an unreadable requirement {text!r}"
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if not requirement.specifier.contains(deltaprop_version(), prereleases=True):
            return f"deltaprop{requirement.specifier}"
    return None


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


def create(name: str, /, **config: Any) -> Layer:
    """Make a layer by registry name: ``create("dense", units=10)``."""
    return get_registry().create(name, **config)


def create_loss(name: str, /, **config: Any) -> Loss:
    return get_registry().create_loss(name, **config)


def create_optimizer(name: str, /, **config: Any) -> Optimizer:
    return get_registry().create_optimizer(name, **config)


def get_initializer(name: str) -> Callable[..., Any]:
    return get_registry().get("initializer", name)


use_initializers(get_initializer)  # layers find initializers by name through the registry
