"""Drawings deltaprop makes itself, as standalone SVG: no plotting library, no Graphviz."""
