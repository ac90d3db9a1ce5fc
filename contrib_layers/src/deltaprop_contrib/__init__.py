"""deltaprop-contrib: layers, an optimizer and a loss for deltaprop, shipped and
discovered exactly as any third-party plugin package (entry-point group ``deltaprop``).

Nothing needs importing from here: once installed, the names are in the registry
(``deltaprop.create("gelu")``, ``layer = "attention"`` in a spec file).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deltaprop-contrib")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
