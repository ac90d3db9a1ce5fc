"""Reading and writing what a user hands deltaprop: spec files, model files, data sets."""

from .model import load, save

__all__ = ["load", "save"]
