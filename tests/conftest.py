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


def pytest_runtest_makereport(item, call):
    """On CI every optional dependency is installed by .ci/run: a test skipped
    because an import failed is a broken install, so it fails there instead."""
    import os

    if not os.environ.get("CI") or call.excinfo is None:
        return None
    exc = call.excinfo.value
    if call.excinfo.typename == "Skipped" and "could not import" in str(exc):
        from _pytest.reports import TestReport

        rep = TestReport.from_item_and_call(item, call)
        rep.outcome = "failed"
        rep.longrepr = f"required dependency missing on CI: {exc}"
        return rep
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a module-level importorskip (a skip at collection time)."""
    import os

    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("CI") and rep.skipped and "could not import" in str(rep.longrepr):
        rep.outcome = "failed"
