"""Networks leaving deltaprop: ONNX export, checked against ONNX Runtime in the tests.

Each node is written by its layer's converter, found through the registry (the
``deltaprop_register_onnx_converters`` hook) or on the layer itself
(``Layer.to_onnx``); see docs/onnx.md.
"""

from .onnx_export import DEFAULT_OPSET, MIN_OPSET, ExportError, export_onnx, find_converter
from .onnx_graph import ExportContext

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "ExportContext", "ExportError", "export_onnx",
           "find_converter"]
