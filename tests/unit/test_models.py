import pytest
import torch
from torchvision.models import resnet18

from pipeline.checkpoint import load_model, save_checkpoint
from pipeline.errors import PipelineError
from pipeline.gates import GATES
from pipeline.models import AttentionResNet, ModelConfig, build_model, load_backbone

# (stage, channels, map side at 64 px, map side at 224 px): the ResNet18 stem divides by 4,
# each later stage by 2 more.
EXPECTED = {"early": (64, 16, 56), "middle": (128, 8, 28), "late": (512, 2, 7)}


def make(activation, position, seed=0):
    torch.manual_seed(seed)
    return AttentionResNet(ModelConfig(activation, position, num_classes=10)).eval()


@pytest.mark.parametrize("position", ["early", "middle", "late"])
@pytest.mark.parametrize("size", [64, 224])
def test_attention_map_sizes(position, size):
    model = make("sigmoid", position)
    seen = {}
    model.cbam.channel.gate.register_forward_hook(lambda m, i, o: seen.setdefault("channel", o))
    model.cbam.spatial.gate.register_forward_hook(lambda m, i, o: seen.setdefault("spatial", o))
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
    channels, side64, side224 = EXPECTED[position]
    side = side64 if size == 64 else side224
    assert logits.shape == (2, 10)
    assert seen["channel"].shape == (2, channels, 1, 1)
    assert seen["spatial"].shape == (2, 1, side, side)
    assert ((seen["spatial"] > 0) & (seen["spatial"] < 1)).all()


@pytest.mark.parametrize("position", ["early", "middle", "late"])
def test_changing_the_gate_changes_the_output(position):
    """The configured gate is really used (timm's LightChannelAttn bug): same weights, other gate."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference = make("sigmoid", position)
    state = {k: v for k, v in reference.state_dict().items()}
    outputs = {}
    with torch.no_grad():
        base = reference(x)
        for name in GATES:
            if name == "sigmoid":
                continue
            other = make(name, position)
            other.load_state_dict(state, strict=False)  # gate parameters keep their init
            # at init parametric_sigmoid is sigmoid and alpha_entmax is entmax15: move them off
            if name == "parametric_sigmoid":
                other.gate.log_temperature.fill_(0.7)
            if name == "alpha_entmax":
                other.gate.raw_alpha.fill_(0.3)
            out = other(x)
            assert not torch.allclose(out, base, atol=1e-4), name
            outputs[name] = out
        # and every gate gives its own output, not one of the others'
        names = sorted(outputs)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                assert not torch.allclose(outputs[a], outputs[b], atol=1e-5), (a, b)


def test_position_none_has_no_cbam_and_matches_the_plain_resnet():
    torch.manual_seed(0)
    model = AttentionResNet(ModelConfig("sigmoid", "none", num_classes=10)).eval()
    assert model.cbam is None and model.gate is None
    plain = resnet18(weights=None)
    plain.fc = torch.nn.Linear(512, 10)
    plain.load_state_dict({k.replace("stem.0", "conv1").replace("stem.1", "bn1"): v
                           for k, v in model.state_dict().items()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain.eval()(x))


def test_unknown_position_and_activation():
    with pytest.raises(PipelineError, match="valid: early, middle, late, none"):
        ModelConfig("sigmoid", "top", 10)
    with pytest.raises(PipelineError, match="unknown activation 'gelu'"):
        ModelConfig("gelu", "late", 10)


def test_local_state_dict_weights(tmp_path):
    source = resnet18(weights=None)
    path = tmp_path / "r18.pt"
    torch.save(source.state_dict(), path)
    loaded = load_backbone(str(path))
    torch.testing.assert_close(loaded.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    model = build_model(ModelConfig("swish", "late", 7), str(path))
    torch.testing.assert_close(model.layer1[0].conv2.weight, source.layer1[0].conv2.weight)
    assert model.fc.out_features == 7


def test_bad_weights(tmp_path):
    with pytest.raises(PipelineError, match="is a directory"):
        load_backbone(str(tmp_path))
    with pytest.raises(PipelineError, match="valid: imagenet, none"):
        load_backbone("resnet50")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match="cannot read weights file"):
        load_backbone(str(junk))
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(PipelineError, match="not a ResNet18 state dict"):
        load_backbone(str(wrong))


def test_imagenet_weights_offline_and_uncached_name_the_alternatives():
    with pytest.raises(PipelineError) as err:
        load_backbone("imagenet")
    message = str(err.value)
    assert "\n" not in message
    assert "weights=none" in message and "local state-dict file" in message


def test_checkpoint_rebuilds_the_model_without_the_cli(tmp_path):
    model = make("scaled_tanh", "middle")
    with torch.no_grad():
        model.gate.scale.fill_(0.7)
    save_checkpoint(tmp_path / "best.pt", model, epoch=3)
    rebuilt, ckpt = load_model(tmp_path / "best.pt")
    assert ckpt["epoch"] == 3 and ckpt["model_config"]["activation"] == "scaled_tanh"
    assert rebuilt.gate.learnable_values() == pytest.approx({"gate_scale": 0.7})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    # plain torch loading with weights_only=True works: nothing but data inside
    assert set(torch.load(tmp_path / "best.pt", weights_only=True)) >= {"state_dict", "model_config"}


@pytest.mark.parametrize("activation", ["softmax", "sparsemax", "entmax15", "alpha_entmax"])
def test_gate_norm_mean_one_makes_sum_to_one_weights_average_one(activation):
    from pipeline.contracts import SUM_TO_ONE_GATES

    assert activation in SUM_TO_ONE_GATES and GATES[activation].sums_to_one
    seen = {}
    for norm in ("none", "mean_one"):
        torch.manual_seed(0)
        model = AttentionResNet(ModelConfig(activation, "late", num_classes=10, gate_norm=norm)).eval()
        hook = model.gate.register_forward_hook(lambda m, i, out, norm=norm: seen.__setitem__(norm, out.flatten(1)))
        with torch.no_grad():
            model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
        hook.remove()
    # the probe's hook sees the weights that multiply the features: 1/C on average, or 1
    assert seen["none"].mean(dim=1).tolist() == pytest.approx([1 / 512] * 2, rel=1e-5)
    assert seen["mean_one"].mean(dim=1).tolist() == pytest.approx([1.0] * 2, rel=1e-5)
    assert torch.allclose(seen["mean_one"], 512 * seen["none"], rtol=1e-5)


def test_gate_norm_leaves_gates_that_do_not_sum_to_one_unchanged():
    from pipeline.contracts import SUM_TO_ONE_GATES

    assert set(SUM_TO_ONE_GATES) == {name for name, gate in GATES.items() if gate.sums_to_one}
    outputs = []
    for norm in ("none", "mean_one"):
        torch.manual_seed(0)
        model = AttentionResNet(ModelConfig("sigmoid", "late", num_classes=10, gate_norm=norm)).eval()
        with torch.no_grad():
            outputs.append(model(torch.ones(1, 3, 64, 64)))
    assert torch.equal(outputs[0], outputs[1])
    with pytest.raises(PipelineError, match="unknown gate_norm 'mean'"):
        ModelConfig("softmax", "late", num_classes=10, gate_norm="mean")


def test_the_initial_model_is_what_training_starts_from_and_leaves_the_random_state_alone():
    from pipeline.models import initial_model
    from pipeline.randomness import seed_everything

    config = ModelConfig("sigmoid", "middle", 10)
    seed_everything(7)
    started = build_model(config, "none").state_dict()  # as the train step builds it
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again = initial_model(config, 7)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in started.items())
    assert not torch.equal(initial_model(config, 8).layer1[0].conv1.weight, again.layer1[0].conv1.weight)

