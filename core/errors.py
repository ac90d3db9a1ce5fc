"""Error types: every bad input raises a subclass of DeltapropError with a message
that names the thing at fault, so the CLI can print one line and exit."""

from __future__ import annotations

import contextlib
import sys


class DeltapropError(Exception):
    """Base of every error deltaprop raises for bad input."""


class ConfigError(DeltapropError, ValueError):
    """A layer, loss or optimizer was given an unknown key or a bad value."""


class ShapeError(DeltapropError, ValueError):
    """Arrays or symbolic shapes that do not fit a layer or a network."""


class GraphError(DeltapropError, ValueError):
    """A network whose graph is malformed: a cycle, an unconnected output, duplicate names."""


class RegistryError(DeltapropError, LookupError):
    """An unknown registry name, or two providers of one name."""


class PluginError(DeltapropError):
    """A plugin failed to import or its hook raised (raised only in strict mode)."""


class SpecError(DeltapropError, ValueError):
    """A malformed network spec file or dict."""


class ModelFileError(DeltapropError, ValueError):
    """A model file that cannot be loaded: truncated, wrong arrays, unsafe content."""


class DataError(DeltapropError, ValueError):
    """Training or evaluation data that is malformed or inconsistent."""


class TrainingError(DeltapropError, RuntimeError):
    """Training that cannot go on, for example because the loss became non-finite."""


def add_context(exc: BaseException, context: str) -> None:
    """Prefix ``exc``'s message with ``context`` (which node, which file) in place.

    Re-raising the same object with a bare ``raise`` keeps its class, its other
    arguments and its traceback, so ``--debug`` still shows the plugin's own frame.
    An error whose first argument is not its message gets the context as a note.
    """
    if exc.args and isinstance(exc.args[0], str) and not isinstance(exc, KeyError):
        exc.args = (f"{context}: {exc.args[0]}", *exc.args[1:])
    elif sys.version_info >= (3, 11):
        exc.add_note(context)
    else:  # Python 3.10 prints no notes, but keeps them for whoever reads the error
        exc.__notes__ = [*getattr(exc, "__notes__", ()), context]  # type: ignore[attr-defined]


class FileError(DeltapropError, OSError):
    """A file deltaprop was asked to read or write that it refuses or cannot use: not a
    regular file, larger than the read limit, a write that failed (the old file stays)."""


_BLAME = "_deltaprop_blame"


def blame(exc: BaseException, culprit: str) -> None:
    """Record on ``exc`` (kept as it is: class, object, traceback) which layer and plugin
    raised it, for the command line's one-line message."""
    with contextlib.suppress(AttributeError):  # a type that takes no attributes
        setattr(exc, _BLAME, culprit)


def blamed_on(exc: BaseException) -> str | None:
    """The culprit ``blame`` recorded on ``exc``, or None."""
    culprit = getattr(exc, _BLAME, None)
    return culprit if isinstance(culprit, str) else None


class LayerError(DeltapropError, RuntimeError):
    """A layer broke its protocol at run time (raised, returned gradients of the wrong
    shape or count); the message names the node, the layer and its plugin."""
