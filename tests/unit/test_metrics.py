import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import average_precision_score

from pipeline import metrics as M


@pytest.mark.parametrize("n", [1, 2, 5, 512])
def test_gini_uniform_is_zero_and_one_hot_is_max(n):
    assert M.gini(np.full(n, 0.3))[0] == pytest.approx(0.0, abs=1e-12)
    onehot = np.zeros(n)
    onehot[n // 2] = 2.0
    assert M.gini(onehot)[0] == pytest.approx((n - 1) / n)


@pytest.mark.parametrize("n,k", [(10, 1), (10, 3), (64, 16), (512, 511)])
def test_gini_of_k_equal_nonzeros(n, k):
    w = np.zeros(n)
    w[:k] = 0.7
    assert M.gini(w)[0] == pytest.approx(1 - k / n)


@pytest.mark.parametrize("n", [1, 2, 7, 512])
def test_gini_of_one_to_n(n):
    assert M.gini(np.arange(1, n + 1))[0] == pytest.approx((n - 1) / (3 * n))


def test_gini_is_scale_invariant_and_uses_magnitudes():
    rng = np.random.default_rng(0)
    w = rng.random((20, 64))
    np.testing.assert_allclose(M.gini(w), M.gini(37.5 * w))
    np.testing.assert_allclose(M.gini(-w), M.gini(w))
    assert 0 <= M.gini(np.array([-1.0, 2.0]))[0] <= 0.5  # the notebook's formula gives 1.5 here
    assert M.notebook_gini([-1.0, 2.0]) == pytest.approx(1.5)


def test_gini_matches_the_notebook_formula_on_nonnegative_weights():
    rng = np.random.default_rng(1)
    w = rng.random((5, 128))
    w[w < 0.4] = 0
    np.testing.assert_allclose(M.gini(w), [M.notebook_gini(row) for row in w])


def test_all_zero_rows_are_nan_not_numbers():
    w = np.zeros((2, 8))
    w[1, 3] = 1.0
    assert np.isnan(M.gini(w)[0]) and M.gini(w)[1] == pytest.approx(7 / 8)
    assert np.isnan(M.entropy(w)[0]) and M.entropy(w)[1] == 0.0
    assert np.isnan(M.near_zero_pct(w)[0])
    assert M.sparsity(w)[0] == 1.0 and M.avg_score(w)[0] == 0.0


def test_entropy_closed_forms_and_scipy():
    assert M.entropy(np.full(16, 0.2))[0] == pytest.approx(1.0)
    onehot = np.eye(16)[3]
    assert M.entropy(onehot)[0] == 0.0  # 0 log 0 = 0, not NaN
    rng = np.random.default_rng(2)
    w = rng.random((10, 32))
    expected = scipy.stats.entropy(w, axis=1) / np.log(32)
    np.testing.assert_allclose(M.entropy(w), expected)
    assert M.entropy(np.array([[5.0]]))[0] == 0.0  # one channel


def test_focus_and_means():
    n = 10
    onehot = np.eye(n)[0]
    assert M.focus_pct(onehot)[0] == pytest.approx(100.0 / n)
    assert M.focus_pct(np.full(n, 0.5))[0] == 0.0
    assert M.avg_score(np.array([[1.0, 2.0, 3.0, -2.0]]))[0] == pytest.approx(1.0)
    assert M.focus_pct(np.array([1.0, 2.0, 3.0, 4.0]))[0] == 50.0


def test_sparsity_near_zero_and_negative():
    w = np.array([[0.0, 0.0, 1e-5, 0.5, 1.0, -0.2, 0.3, 0.0]])
    assert M.sparsity(w)[0] == pytest.approx(3 / 8)
    assert M.near_zero_pct(w)[0] == pytest.approx(100 * 4 / 8)  # 3 zeros and 1e-5 < 1e-3 * 1.0
    assert M.negative_pct(w)[0] == pytest.approx(100 / 8)
    softmaxish = np.full((1, 512), 1e-7)
    softmaxish[0, 0] = 1.0
    assert M.sparsity(softmaxish)[0] == 0.0 and M.near_zero_pct(softmaxish)[0] == pytest.approx(100 * 511 / 512)


def test_focus_area_ratio():
    m = np.zeros((2, 4, 4))
    m[0, :2, :] = 1.0  # half the pixels at the maximum, the rest at 0
    m[0, 2, 0] = 0.5  # exactly 50 % of the maximum is not above it
    m[1] = 0.3  # constant map: every pixel is above half the maximum
    np.testing.assert_allclose(M.focus_area_ratio(m), [0.5, 1.0])
    assert np.isnan(M.focus_area_ratio(np.zeros((1, 2, 2)))[0])


def test_single_image_and_constant_rows_work_everywhere():
    for w in (np.full((1, 4), 0.25), np.array([0.1, 0.9])):
        values = M.per_image_metrics(w, np.ones((1, 3, 3)))
        assert set(values) == set(M.METRIC_NAMES)
        assert all(v.shape == (1,) for v in values.values())


def test_summarise_ignores_nan_rows():
    s = M.summarise({"gini": np.array([0.2, np.nan, 0.4])})["gini"]
    assert s["mean"] == pytest.approx(0.3) and s["std"] == pytest.approx(0.1) and s["n_defined"] == 2
    assert np.isnan(M.summarise({"gini": np.array([np.nan])})["gini"]["mean"])


def test_mean_average_precision_equals_scikit_learn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 200)
    scores = rng.random((200, 5)) + 0.5 * np.eye(5)[labels]
    expected = average_precision_score(np.eye(5)[labels], scores, average="macro")
    assert M.mean_average_precision(labels, scores) == pytest.approx(expected)
    perfect = np.eye(5)[labels]
    assert M.mean_average_precision(labels, perfect) == pytest.approx(1.0)
    # a class absent from the probed labels is left out, not counted as AP 0
    present = labels[labels != 4]
    sub = scores[labels != 4]
    expected_present = average_precision_score(np.eye(5)[present][:, :4], sub[:, :4], average="macro")
    assert M.mean_average_precision(present, sub, num_classes=5) == pytest.approx(expected_present)
    # one class present: every image is a positive, so its AP is 1 whatever the scores: undefined
    assert np.isnan(M.mean_average_precision(np.array([3]), np.array([[0.9, 0.1, 0.0, -5.0, 0.0]])))
    assert np.isnan(M.mean_average_precision(np.array([1, 1, 1]), scores[:3]))
    two = M.mean_average_precision(np.array([0, 1]), np.array([[0.2, 0.8], [0.9, 0.1]]))  # both ranked last
    assert two == pytest.approx(average_precision_score(np.eye(2)[[0, 1]], [[0.2, 0.8], [0.9, 0.1]]))


def test_a_constant_row_has_no_focus_even_when_its_mean_rounds_below_it():
    row = np.full((1, 100), 0.1, dtype=np.float32)  # float64 mean of these is a hair below 0.1 + 1.5e-9
    assert M.focus_pct(row)[0] == 0.0
    assert M.focus_pct(np.full((1, 512), 1 / 512))[0] == 0.0
    one_hot = np.zeros((1, 8))
    one_hot[0, 3] = 1e-12  # a tiny peak is still a peak: the tolerance is relative to the row
    assert M.focus_pct(one_hot)[0] == pytest.approx(100 / 8)


def test_a_row_with_nan_is_nan_for_every_metric():
    weights = np.full((3, 6), 0.5)
    weights[1, 2] = np.nan
    weights[2, 0] = np.inf
    maps = np.full((3, 2, 2), 0.5)
    maps[1, 0, 0] = np.nan
    values = M.per_image_metrics(weights, maps)
    for name, v in values.items():
        assert np.isfinite(v[0]), name
        assert np.isnan(v[1]), name
        if name != "focus_area_ratio":
            assert np.isnan(v[2]), name


def test_exact_zeros_of_bounded_gates_are_float32_underflow():
    import torch

    from pipeline.gates import GATES

    x = torch.tensor([[-9.0, -9.5, -10.0, -88.0, -89.0, -104.0]], dtype=torch.float32)
    tanh = GATES["scaled_tanh"]()(x)[0]
    assert tanh[0] > 0 and tanh[1] == 0 and tanh[2] == 0  # (tanh(s x) + 1) / 2: exactly 0 from s x ~ -9.1
    sigmoid = GATES["sigmoid"]()(x)[0]
    assert sigmoid[3] > 0 and sigmoid[4] == 0 and sigmoid[5] == 0  # exactly 0 below about -88.7
    sparse = GATES["sparsemax"]()(torch.tensor([[3.0, 1.0, 0.2]]))[0]
    assert sparse[2] == 0 and sparse[1] == 0  # sparsemax: zero by construction


def test_class_means_match_a_loop_and_empty_classes_are_nan():
    rng = np.random.default_rng(0)
    weights = rng.random((30, 8))
    labels = rng.integers(0, 3, 30)
    means, counts = M.class_means(weights, labels, 4)
    for k in range(3):
        np.testing.assert_allclose(means[k], weights[labels == k].mean(axis=0))
        assert counts[k] == (labels == k).sum()
    assert counts[3] == 0 and np.isnan(means[3]).all() and np.isnan(M.gini(means)[3])
