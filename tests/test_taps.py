"""Feature taps recorded by module path on an unmodified model."""

import pytest
import torch
from torch import nn

from kdcore.errors import KdcoreError
from kdcore.distill.taps import FeatureRecorder, feature_shapes


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU())
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.body(x))


PATHS = {"stages": ("body.1", "body.3"), "pooled": "fc:input", "preact": "body.2"}


def test_recorder_returns_logits_and_requested_taps():
    net = Net()
    x = torch.randn(2, 4)
    features = FeatureRecorder(net, PATHS, ["logits", "stages", "pooled"])(x)
    hidden = torch.relu(net.body[0](x))
    assert torch.equal(features["logits"], net(x))
    assert torch.equal(features["stages"][0], hidden)
    assert torch.equal(features["pooled"], net.body(x))
    assert "preact" not in features
    assert feature_shapes(features) == {"logits": (3,), "stages": [(6,), (5,)], "pooled": (5,)}


def test_recorded_features_keep_the_graph_for_backward():
    net = Net()
    features = FeatureRecorder(net, PATHS, ["pooled"])(torch.randn(2, 4))
    features["pooled"].sum().backward()
    assert net.body[0].weight.grad is not None


def test_unknown_tap_and_bad_path_are_clear_errors():
    with pytest.raises(KdcoreError, match=r"Net has no feature tap 'stem' \(available: logits, pooled, preact, stages\)"):
        FeatureRecorder(Net(), PATHS, ["stem"])
    with pytest.raises(KdcoreError, match="Net has no module 'body.9' for tap x"):
        FeatureRecorder(Net(), {"x": "body.9"}, ["x"])


def test_remove_detaches_hooks():
    net = Net()
    recorder = FeatureRecorder(net, PATHS, ["pooled"])
    recorder.remove()
    assert not net.fc._forward_hooks
