"""The layers in docs/plugins.md run and pass the conformance kit, and the first one is
the layer `deltaprop plugin new` writes (so the docs and the scaffold cannot drift)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

import deltaprop
from deltaprop.testing import CHECKS, check_conformance
from deltaprop.testing.scaffold import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def doc_namespace() -> dict:
    """Run the page's Python blocks that define layers or use them, in order."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    runnable = [b for b in blocks if "(dp.Layer)" in b or "dp.Network(" in b]
    assert len(runnable) >= 4
    namespace: dict = {}
    for block in runnable:
        exec(compile(block, str(DOC), "exec"), namespace)
    return namespace


def test_every_layer_on_the_page_passes_the_kit():
    namespace = doc_namespace()
    layers = [v for v in namespace.values()
              if isinstance(v, type) and issubclass(v, deltaprop.Layer) and v.name]
    assert {cls.name for cls in layers} == {"acme_scale", "acme_center", "acme_sum_product"}
    for cls in layers:
        for example in cls.examples:
            report = check_conformance(cls, example["input_shapes"], **example["config"])
            # only acme_scale converts to ONNX; the others skip that check
            expected = [c for c in CHECKS if c != "onnx_export" or cls.name == "acme_scale"]
            assert report.passed == expected, cls.name


def test_the_two_output_usage_example_returns_one_array_per_output():
    namespace = doc_namespace()
    total, product = namespace["outputs"]
    np.testing.assert_array_equal(total, np.full((2, 3), 2.0))
    assert product.shape == (2, 3)


def _normalized(source: str, class_name: str) -> str:
    """The class's code without docstrings, comments and type annotations."""
    tree = next(node for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ClassDef) and node.name == class_name)
    tree.name = "Layer"
    tree.bases = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                node.body = body[1:]
        if isinstance(node, ast.FunctionDef):
            node.returns = None
            for arg in [*node.args.args, *node.args.kwonlyargs]:
                arg.annotation = None
    return ast.dump(tree)


def test_the_scaffold_writes_the_layer_the_docs_show():
    scaffold = render("acme")["src/acme/layers.py"]
    doc = DOC.read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S)
                 if "class AcmeScale" in b)
    assert _normalized(scaffold, "AcmeScale") == _normalized(block, "AcmeScale")
