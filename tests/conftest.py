import numpy as np
import pytest


def make_classes(n=600, d=24, k=4, sep=1.5, seed=0, dtype=np.float64):
    """Gaussian classes around random means: realistic, not separable."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * sep / np.sqrt(d) * 3
    y = rng.integers(0, k, n)
    x = means[y] + rng.normal(size=(n, d))
    return x.astype(dtype), y


@pytest.fixture
def small_problem():
    xtr, ytr = make_classes(600, 24, 4, seed=1)
    xev, yev = make_classes(300, 24, 4, seed=2)
    # eval must share the class means: regenerate with the same means
    rng = np.random.default_rng(1)
    means = rng.normal(size=(4, 24)) * 1.5 / np.sqrt(24) * 3
    r2 = np.random.default_rng(7)
    yev = r2.integers(0, 4, 300)
    xev = means[yev] + r2.normal(size=(300, 24))
    return xtr, ytr, xev, yev
