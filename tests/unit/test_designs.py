"""The attention designs (CBAM, SE, ECA), CBAM's spatial gates and the backbones
(pipeline.models): hooks see the documented shapes, every configured gate is used, sum-to-one
gates sum to one in every design, the default is the notebook's model, and SE / ECA under
sigmoid are timm's reference blocks."""
import numpy as np
import pytest
import torch
from torch import nn

from pipeline.contracts import ATTENTIONS, BACKBONES, stage_channels
from pipeline.errors import PipelineError
from pipeline.models import AttentionBlock, ModelConfig, build_model, eca_kernel_size

SIZE = 64


def _model(attention="cbam", activation="sigmoid", position="late", backbone="resnet18", spatial_gate="sigmoid"):
    torch.manual_seed(0)
    return build_model(ModelConfig(activation, position, 10, attention=attention, backbone=backbone,
                                   spatial_gate=spatial_gate)).eval()


def _gate_outputs(model, x):
    seen = {}
    hooks = [model.cbam.channel.gate.register_forward_hook(lambda m, i, out: seen.__setitem__("channel", out))]
    if model.cbam.spatial is not None:
        hooks.append(model.cbam.spatial.gate.register_forward_hook(lambda m, i, out: seen.__setitem__("spatial", out)))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return logits, seen


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_hooks_record_the_documented_shapes(attention, backbone):
    x = torch.randn(2, 3, SIZE, SIZE)
    for position, side in (("early", SIZE // 4), ("late", SIZE // 32)):
        model = _model(attention, position=position, backbone=backbone)
        _, seen = _gate_outputs(model, x)
        channels = stage_channels(backbone, position)
        assert seen["channel"].shape == (2, channels, 1, 1) and model.cbam.channels == channels
        if attention == "cbam":
            assert seen["spatial"].shape == (2, 1, side, side)
        else:
            assert model.cbam.spatial is None and "spatial" not in seen
    assert stage_channels("resnet50", "early") == 256 and stage_channels("resnet50", "late") == 2048


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_swapping_the_channel_gate_changes_the_block_output(attention):
    """A configured gate that is silently unused (timm's LightChannelAttn) fails here: the same
    weights under another gate must give another output."""
    x = torch.randn(2, 128, 8, 8)
    outputs = {}
    for gate in ("sigmoid", "softmax", "sparsemax", "swish"):
        torch.manual_seed(0)
        block = AttentionBlock(128, gate, design=attention).eval()
        with torch.no_grad():
            outputs[gate] = block(x)
    for gate in ("softmax", "sparsemax", "swish"):
        assert not torch.allclose(outputs[gate], outputs["sigmoid"]), gate


def test_swapping_the_spatial_gate_changes_the_block_output():
    x = torch.randn(2, 128, 8, 8)
    outputs = {}
    for gate in ("sigmoid", "softmax", "sparsemax"):
        torch.manual_seed(0)
        block = AttentionBlock(128, "sigmoid", spatial_gate=gate).eval()
        with torch.no_grad():
            outputs[gate] = block(x)
    assert not torch.allclose(outputs["softmax"], outputs["sigmoid"])
    assert not torch.allclose(outputs["sparsemax"], outputs["softmax"])


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("gate", ["softmax", "sparsemax", "entmax15"])
def test_sum_to_one_channel_weights_sum_to_one_in_every_design(attention, gate):
    _, seen = _gate_outputs(_model(attention, gate, position="middle"), torch.randn(3, 3, SIZE, SIZE))
    np.testing.assert_allclose(seen["channel"].sum(dim=(1, 2, 3)).numpy(), 1.0, atol=1e-5)


@pytest.mark.parametrize("gate", ["softmax", "sparsemax"])
def test_sum_to_one_spatial_maps_sum_to_one_over_positions(gate):
    _, seen = _gate_outputs(_model("cbam", position="middle", spatial_gate=gate), torch.randn(3, 3, SIZE, SIZE))
    maps = seen["spatial"]
    assert maps.shape == (3, 1, 8, 8)
    np.testing.assert_allclose(maps.sum(dim=(1, 2, 3)).numpy(), 1.0, atol=1e-5)
    if gate == "sparsemax":
        assert (maps == 0).any()  # sparse over positions, not per position


# --- the notebook's model, as its code builds it (reference/seed-notebook.txt, sigmoid gate) --------

class NotebookSpatialAttention(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=3, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out, _ = torch.max(x, dim=1, keepdim=True)
        return self.sigmoid(self.conv1(torch.cat([avg_out, max_out], dim=1)))


class NotebookChannelAttention(nn.Module):
    def __init__(self, in_planes, ratio=16):
        super().__init__()
        self.avg_pool, self.max_pool = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(in_planes, in_planes // ratio, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(in_planes // ratio, in_planes, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        avg_out = self.fc2(self.relu(self.fc1(self.avg_pool(x))))
        max_out = self.fc2(self.relu(self.fc1(self.max_pool(x))))
        return self.sigmoid(avg_out + max_out)


class NotebookCBAM(nn.Module):
    def __init__(self, planes):
        super().__init__()
        self.ca, self.sa = NotebookChannelAttention(planes), NotebookSpatialAttention()

    def forward(self, x):
        x = x * self.ca(x)
        return x * self.sa(x)


@pytest.mark.parametrize("position,channels", [("early", 64), ("middle", 128), ("late", 512)])
def test_the_default_model_is_the_notebooks(position, channels):
    ours = _model(position=position)
    assert (ours.config.attention, ours.config.backbone, ours.config.spatial_gate) == ("cbam", "resnet18", "sigmoid")
    theirs = NotebookCBAM(channels).eval()
    mapping = {"ca.fc1.weight": "channel.mlp.0.weight", "ca.fc2.weight": "channel.mlp.2.weight",
               "sa.conv1.weight": "spatial.conv.weight"}
    ours_state = ours.cbam.state_dict()
    theirs.load_state_dict({k: ours_state[v] for k, v in mapping.items()})
    assert set(ours_state) == set(mapping.values())  # nothing else learns in the block
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        features = ours.stem(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            features = getattr(ours, name)(features)
            if name == ours.cbam_after:
                features = theirs(features)
        expected = ours.fc(torch.flatten(ours.avgpool(features), 1))
        torch.testing.assert_close(ours(x), expected)


def test_se_and_eca_under_sigmoid_are_timms_blocks():
    timm_layers = pytest.importorskip("timm.layers")
    x = torch.randn(2, 512, 4, 4)
    torch.manual_seed(0)
    se = AttentionBlock(512, "sigmoid", design="se").eval()
    reference = timm_layers.SEModule(512, rd_channels=32).eval()
    reference.load_state_dict({k.removeprefix("channel."): v for k, v in se.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(se(x), reference(x))
    for channels in (64, 128, 256, 512, 1024, 2048):
        eca = AttentionBlock(channels, "sigmoid", design="eca").eval()
        reference = timm_layers.EcaModule(channels).eval()
        assert reference.conv.kernel_size[0] == eca_kernel_size(channels) == eca.channel.conv.kernel_size[0]
        reference.load_state_dict({k.removeprefix("channel."): v for k, v in eca.state_dict().items()})
        y = torch.randn(2, channels, 4, 4)
        with torch.no_grad():
            torch.testing.assert_close(eca(y), reference(y))
    assert [eca_kernel_size(c) for c in (64, 128, 512, 2048)] == [3, 5, 5, 7]


def test_bad_designs_backbones_and_spatial_gates_are_one_line_errors():
    with pytest.raises(PipelineError, match="unknown attention 'cbam2'; valid: cbam, se, eca"):
        ModelConfig("sigmoid", "late", 10, attention="cbam2")
    with pytest.raises(PipelineError, match="unknown backbone 'resnet101'; valid: resnet18, resnet34, resnet50"):
        ModelConfig("sigmoid", "late", 10, backbone="resnet101")
    with pytest.raises(PipelineError, match="unknown spatial_gate 'tanh'; valid: sigmoid, softmax, sparsemax"):
        ModelConfig("sigmoid", "late", 10, spatial_gate="tanh")
    with pytest.raises(PipelineError, match="spatial_gate softmax needs attention cbam: se has no spatial branch"):
        ModelConfig("sigmoid", "late", 10, attention="se", spatial_gate="softmax")
