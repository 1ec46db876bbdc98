import math

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.gates import GATES, NOTEBOOK_GATES, create_gate


def channels(values):
    """A (1, C, 1, 1) logit tensor, the shape the channel attention hands its gate."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def test_registry_holds_the_notebook_gates_and_the_entmax_family():
    assert set(NOTEBOOK_GATES) <= set(GATES)
    assert {"entmax15", "alpha_entmax"} <= set(GATES)


def test_unknown_gate_lists_the_valid_names():
    with pytest.raises(PipelineError) as err:
        create_gate("relu")
    assert "'relu'" in str(err.value)
    for name in GATES:
        assert name in str(err.value)


def test_sparsemax_closed_form():
    out = create_gate("sparsemax")(channels([1.0, 0.8, 0.1])).flatten()
    torch.testing.assert_close(out, torch.tensor([0.6, 0.4, 0.0]), atol=1e-6, rtol=0)


def test_sparsemax_matches_the_notebooks_sparsemax_package():
    from sparsemax import Sparsemax as NotebookSparsemax

    x = torch.randn(16, 512, generator=torch.Generator().manual_seed(0)) * 3
    ours = create_gate("sparsemax")(x.view(16, 512, 1, 1)).view(16, 512)
    theirs = NotebookSparsemax(dim=1)(x)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-6, rtol=0)
    assert (ours == 0).float().mean() > 0.5  # it really is sparse


def test_softmax_is_over_channels():
    x = torch.randn(4, 8, 1, 1)
    out = create_gate("softmax")(x)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(4, 1, 1))
    torch.testing.assert_close(out, torch.softmax(x, dim=1))


def test_scaled_tanh_with_half_scale_equals_sigmoid():
    gate = create_gate("scaled_tanh")
    assert gate.learnable_values() == {"gate_scale": 1.0}
    with torch.no_grad():
        gate.scale.fill_(0.5)
    x = torch.linspace(-6, 6, 25).view(1, -1, 1, 1)
    torch.testing.assert_close(gate(x), torch.sigmoid(x))
    # and at its initial scale 1, (tanh(x)+1)/2 = sigmoid(2x)
    with torch.no_grad():
        gate.scale.fill_(1.0)
    torch.testing.assert_close(gate(x), torch.sigmoid(2 * x))


def test_parametric_sigmoid_temperature():
    gate = create_gate("parametric_sigmoid")
    x = torch.linspace(-6, 6, 25).view(1, -1, 1, 1)
    assert gate.learnable_values() == pytest.approx({"gate_temperature": 1.0})
    torch.testing.assert_close(gate(x), torch.sigmoid(x))
    with torch.no_grad():
        gate.log_temperature.fill_(math.log(2.0))
    torch.testing.assert_close(gate(x), torch.sigmoid(x / 2))
    with torch.no_grad():  # however far the optimiser pushes it, T stays positive
        gate.log_temperature.fill_(-50.0)
    assert gate.learnable_values()["gate_temperature"] > 0


def test_swish_closed_form_and_negative_values():
    out = create_gate("swish")(channels([-1.0, 0.0, 2.0])).flatten()
    expected = torch.tensor([-1.0 / (1 + math.e), 0.0, 2.0 / (1 + math.exp(-2.0))])
    torch.testing.assert_close(out, expected)
    assert out[0] < 0


def test_sigmoid_closed_form():
    out = create_gate("sigmoid")(channels([0.0, math.log(3.0)])).flatten()
    torch.testing.assert_close(out, torch.tensor([0.5, 0.75]))


def test_entmax15_closed_form():
    # 1.5-entmax: p_i = [x_i / 2 - tau]_+^2 with tau such that sum(p) = 1.
    gate = create_gate("entmax15")
    torch.testing.assert_close(gate(channels([0.0, 0.0])).flatten(), torch.tensor([0.5, 0.5]))
    # x = [1, 0]: (1/2 - tau)^2 + tau^2 = 1  =>  tau = (1 - sqrt(7)) / 4, both channels non-zero
    tau = (1 - math.sqrt(7)) / 4
    out = gate(channels([1.0, 0.0])).flatten()
    torch.testing.assert_close(out, torch.tensor([(0.5 - tau) ** 2, tau ** 2]), atol=1e-6, rtol=0)
    # a gap of 5 > 2 / (alpha - 1) = 4 puts all mass on one channel
    torch.testing.assert_close(gate(channels([5.0, 0.0, 0.0])).flatten(), torch.tensor([1.0, 0.0, 0.0]))


def test_alpha_entmax_starts_at_entmax15_and_learns_alpha():
    gate = create_gate("alpha_entmax")
    assert gate.learnable_values()["gate_alpha"] == pytest.approx(1.5, abs=1e-6)
    x = torch.randn(8, 32, 1, 1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(gate(x), create_gate("entmax15")(x), atol=1e-5, rtol=0)
    loss = (gate(x) * torch.arange(32.0).view(1, 32, 1, 1)).sum()
    loss.backward()
    assert gate.raw_alpha.grad is not None and gate.raw_alpha.grad.abs().item() > 0
    with torch.no_grad():  # alpha = 2 is sparsemax
        gate.raw_alpha.fill_(math.log(math.expm1(1.0)))
    torch.testing.assert_close(gate(x), create_gate("sparsemax")(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(GATES))
def test_gates_compute_in_float32_under_autocast(name):
    gate = create_gate(name)
    x = torch.randn(2, 16, 1, 1).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gate(x)
    assert out.dtype == torch.float32
    assert out.shape == x.shape


@pytest.mark.parametrize("name,param", [("scaled_tanh", "scale"), ("parametric_sigmoid", "log_temperature"),
                                         ("alpha_entmax", "raw_alpha")])
def test_learnable_parameters_get_gradients(name, param):
    gate = create_gate(name)
    x = torch.randn(4, 16, 1, 1, generator=torch.Generator().manual_seed(2))
    (gate(x) * torch.randn(4, 16, 1, 1, generator=torch.Generator().manual_seed(3))).sum().backward()
    grad = getattr(gate, param).grad
    assert grad is not None and grad.abs().item() > 0
