"""Linear probe equals scikit-learn's LogisticRegression on the same standardised features."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from evaluation.linear import LinearProbeConfig, fit_linear_probe, linear_probe_evaluate


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    centers = torch.randn(6, 20, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 6, (n,), generator=g)
    x = centers[y] + 2.0 * torch.randn(n, 20, generator=g)
    return torch.nn.functional.normalize(x, dim=1), y


@pytest.mark.parametrize("c", [0.05, 1.0])
def test_probe_equals_sklearn_logistic_regression(c):
    train_x, train_y = _data(800, 0)
    test_x, test_y = _data(300, 1)
    cfg = LinearProbeConfig(c=c, tolerance=1e-9)
    probe = fit_linear_probe(train_x, train_y, cfg)

    xs_train = ((train_x.double() - probe.mean) / probe.std).numpy()
    xs_test = ((test_x.double() - probe.mean) / probe.std).numpy()
    ref = LogisticRegression(C=c, tol=1e-10, max_iter=5000).fit(xs_train, train_y.numpy())

    np.testing.assert_allclose(probe.weight.numpy(), ref.coef_, atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(probe.bias.numpy(), ref.intercept_, atol=2e-4, rtol=1e-3)
    ref_pred = ref.predict(xs_test)
    ours = linear_probe_evaluate(train_x, train_y, test_x, test_y, cfg)
    assert ours.top1 == pytest.approx((ref_pred == test_y.numpy()).mean(), abs=1e-9)
    proba = ref.predict_proba(xs_test)
    ref_top5 = np.mean([y in np.argsort(-p)[:5] for p, y in zip(proba, test_y.numpy())])
    assert ours.top5 == pytest.approx(ref_top5, abs=1e-9)
    assert ours.top1 > 0.5 and ours.top5 >= ours.top1


def test_choosing_c_is_deterministic_and_from_the_grid():
    train_x, train_y = _data(300, 2)
    test_x, test_y = _data(100, 3)
    cfg = LinearProbeConfig(c_grid=(0.001, 1.0), seed=5)
    a = linear_probe_evaluate(train_x, train_y, test_x, test_y, cfg)
    b = linear_probe_evaluate(train_x, train_y, test_x, test_y, cfg)
    assert a == b
    assert a.c in cfg.c_grid and a.c != 0.001  # a near-zero C cannot fit this separable-ish data best
