"""The trace page and the network picture in a real browser: headless Chromium (the
system's, e.g. Debian's ``chromium`` package) driven by playwright. Every node's box
and panel is rendered, a click on a box shows its panel, and the page fetches
nothing but itself. Skipped, with the reason, where either is missing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import deltaprop as dp

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def find_chromium() -> str | None:
    for name in (os.environ.get("DELTAPROP_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install playwright)")
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium executable on PATH (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        try:
            launched = p.chromium.launch(executable_path=CHROMIUM)
        except Exception as exc:  # a browser that cannot start here (sandbox, libraries)
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {str(exc).splitlines()[0]}")
        yield launched
        launched.close()


def open_page(browser, path: Path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    fetched = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(path.as_uri())
    return page, fetched


@pytest.fixture(scope="module")
def cnn_trace(tmp_path_factory):
    net = dp.load_spec(EXAMPLES / "digits_cnn.toml", seed=0)
    data = dp.data.load_data("digits").reshaped(net.input_shapes[0])
    with net.trace() as t:
        net.train_step(data.x_train[:32], data.y_train[:32], loss="softmax_cross_entropy",
                       optimizer="adam")
    path = tmp_path_factory.mktemp("trace") / "trace.html"
    t.save(path)
    return net, t, path


def test_every_node_has_a_box_and_a_panel_and_a_click_shows_it(browser, cnn_trace):
    net, trace, path = cnn_trace
    page, fetched = open_page(browser, path)
    assert "loss" in page.inner_text("#loss")
    n = len(trace.nodes)
    assert n == len(net.plan.steps)
    for k, node in enumerate(trace.nodes):
        box = page.locator(f"#node-{k}")
        panel = page.locator(f"#panel-{k}")
        assert box.is_visible() and panel.is_visible(), node.name
        assert box.bounding_box()["width"] > 100
        assert node.name[:20] in box.text_content()
        assert panel.get_attribute("data-node") == node.name
        assert panel.locator("svg.histogram").count() == 2  # outputs and deltas
    for k in reversed(range(n)):  # from the last, so that each click has to scroll
        page.locator(f"#node-{k}").click()
        panel = page.locator(f"#panel-{k}")
        assert "selected" in panel.get_attribute("class")
        assert page.locator(".panel.selected").count() == 1
        top = panel.bounding_box()["y"]
        assert 0 <= top < 900, f"panel {k} not scrolled into view ({top})"
        assert "backward rule" in panel.inner_text()
    assert all(url.startswith("file:") for url in fetched), fetched


def test_the_network_picture_renders_every_box(browser, tmp_path):
    net = dp.load_spec(EXAMPLES / "two_towers.json", seed=0)
    path = tmp_path / "net.svg"
    path.write_text(net.to_svg())
    page, fetched = open_page(browser, path)
    boxes = page.locator("g.node")
    assert boxes.count() == len(net.steps) + len(net.inputs)
    for k in range(boxes.count()):
        box = boxes.nth(k).bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 40
    for step in net.steps:
        assert page.locator(f'g.node[data-node="{step.name}"]').is_visible()
    assert page.locator("path.edge").count() == sum(len(s.in_slots) for s in net.steps)
    assert all(url.startswith("file:") for url in fetched), fetched
