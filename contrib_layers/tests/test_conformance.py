"""Every layer and loss this distribution registers passes the deltaprop conformance
kit, through the kit's pytest plugin: a new layer is checked as soon as it is listed in
a plugin module's hook and declares ``examples``."""

import pytest

pytestmark = pytest.mark.deltaprop_distribution("deltaprop-contrib")


def test_layer_conformance(deltaprop_layer_case):
    report = deltaprop_layer_case.check()
    assert report.gradients.max_rel_error < 1e-4


def test_loss_gradients(deltaprop_loss_case):
    assert deltaprop_loss_case.check().max_rel_error < 1e-4
