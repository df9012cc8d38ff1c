"""iis.torch.IISMonitor over a short real training run (plain PyTorch loop, real digits)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

if os.environ.get("CI") or os.environ.get("IIS_REQUIRE_TORCH"):
    import torch  # CI installs the torch extra: these tests must run, never skip
else:  # pragma: no cover
    torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import iis  # noqa: E402
import iis.torch as it  # noqa: E402
from iis.datasets import load_digits_images, train_eval_split  # noqa: E402
from iis.elements import segments  # noqa: E402

NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


@pytest.fixture(scope="module")
def digits():
    imgs, y = load_digits_images(size=16)
    tr, ev = train_eval_split(y, 0.3, seed=0)
    ds = it.ImageDataset(imgs, size=16, **NORM)
    x = torch.stack([ds[i] for i in range(len(ds))])
    el = segments(imgs[tr], y[tr], per_class=4, n_segments=(10, 20), seed=0)
    return imgs, y, tr, ev, x, el


@pytest.fixture(scope="module")
def trained_run(digits):
    """Four epochs of Adam on 1258 real digits with IIS monitored every 2 epochs."""
    imgs, y, tr, ev, x, el = digits
    torch.manual_seed(0)
    model = _small_cnn()
    mtr, mev = tr[::3], ev[::2]  # held sets for the monitor
    monitor = it.IISMonitor(x[mtr], y[mtr], x[mev], y[mev], el, n_concepts=40, every=2, size=16, **NORM)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    yt = torch.from_numpy(y)

    def val_acc():
        model.eval()
        with torch.no_grad():
            a = (model(x[ev]).argmax(1) == yt[ev]).float().mean().item()
        model.train()
        return a

    checks = []
    for epoch in range(5):
        if epoch > 0:
            model.train()
            perm = torch.randperm(len(tr))
            for i in range(0, len(tr), 64):
                b = torch.from_numpy(tr)[perm[i : i + 64]]
                loss = nn.functional.cross_entropy(model(x[b]), yt[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        acc = val_acc()
        rng = torch.random.get_rng_state()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        out = monitor(model, epoch, val_accuracy=acc)
        checks.append(dict(
            computed=out is not None,
            training=model.training,
            rng_same=torch.equal(rng, torch.random.get_rng_state()),
            state_same=all(torch.equal(v, state[k]) for k, v in model.state_dict().items()),
        ))
    return model, monitor, checks, (mtr, mev)


def test_history_is_recorded_every_n_epochs(trained_run):
    _, monitor, checks, _ = trained_run
    assert monitor.epochs == [0, 2, 4]
    assert [c["computed"] for c in checks] == [True, False, True, False, True]
    for rec in monitor.history:
        assert 0.0 < rec["iis"] < 1.2 and np.isfinite(rec["iis"])
        assert rec["n_concepts"] == 40 and len(rec["arr"]) == len(iis.DEFAULT_GRID)
        assert rec["seconds_total"] > 0
        np.testing.assert_allclose(rec["iis_normalized"], rec["iis"] / 0.98)
    assert len(monitor.results) == 3 and isinstance(monitor.results[0], iis.IISResult)


def test_history_is_sensible_over_training(trained_run):
    _, monitor, _, _ = trained_run
    val = monitor.series("val_accuracy")
    iis_values = monitor.series("iis")
    assert val[0] < 0.3 and val[-1] > val[0] + 0.3, val  # the model really learns
    assert monitor.series("probe_accuracy")[-1] >= monitor.series("probe_accuracy")[0] - 0.02
    # The paper's finding on a training run: interpretability rises with classifiability.
    assert iis_values[-1] > iis_values[0], iis_values


def test_monitor_leaves_training_untouched(trained_run):
    _, _, checks, _ = trained_run
    for c in checks:
        assert c["training"], "the model must be back in train mode"
        assert c["rng_same"], "monitoring must not advance the global torch RNG"
        assert c["state_same"], "monitoring must not change weights or BatchNorm statistics"


def test_record_equals_direct_computation(trained_run, digits):
    model, monitor, _, (mtr, mev) = trained_run
    imgs, y, tr, ev, x, el = digits
    f_tr = it.extract_features(model, x[mtr], progress=False)
    f_ev = it.extract_features(model, x[mev], progress=False)
    # The same 40 prototypes ConceptLibrary.prototype would pick from all element embeddings.
    emb = it.embed_elements(el, model, size=16, progress=False, **NORM)
    lib = iis.ConceptLibrary.prototype(emb, el.labels, n_concepts=40, seed=0)
    again = monitor(model, 5, force=True)
    direct = iis.score(f_tr, y[mtr], f_ev, y[mev], lib)
    np.testing.assert_allclose(again.iis, direct.iis, atol=1e-6)
    np.testing.assert_allclose(again.arr, direct.arr, atol=1e-6)
    monitor.history.pop()
    monitor.results.pop()


def test_plot_and_json(trained_run, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    _, monitor, _, _ = trained_run
    ax, ax2 = monitor.plot()
    assert [ln.get_label() for ln in ax.get_lines()] == ["IIS"]
    assert {ln.get_label() for ln in ax2.get_lines()} == {"probe accuracy", "val_accuracy"}
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), monitor.series("iis"))
    assert len(monitor.plot_arr().get_lines()) == 3
    text = monitor.to_json(tmp_path / "h.json")
    loaded = json.loads((tmp_path / "h.json").read_text())
    assert loaded == json.loads(text) and [r["epoch"] for r in loaded["history"]] == [0, 2, 4]
    assert "IISMonitor(every=2" in repr(monitor)


def test_cluster_fixed_and_callable_libraries(digits):
    imgs, y, tr, ev, x, el = digits
    torch.manual_seed(1)
    model = _small_cnn().eval()
    mtr, mev = tr[::6], ev[::4]
    elem_x = torch.stack([it.ImageDataset(el.images, size=16, **NORM)[i] for i in range(len(el))])
    cl = it.IISMonitor(x[mtr], y[mtr], x[mev], y[mev], elem_x, element_labels=el.labels,
                       library="cluster", n_concepts=20)
    res = cl(model)
    assert res.library_kind == "cluster" and res.n_concepts == 20
    emb = it.extract_features(model, elem_x, progress=False)
    lib = iis.ConceptLibrary.cluster(emb, n_concepts=20, seed=0, element_labels=el.labels)
    np.testing.assert_allclose(res.iis, iis.score(
        it.extract_features(model, x[mtr], progress=False), y[mtr],
        it.extract_features(model, x[mev], progress=False), y[mev], lib).iis, atol=1e-6)
    fixed = it.IISMonitor(x[mtr], y[mtr], x[mev], y[mev], lib)
    np.testing.assert_allclose(fixed(model).iis, res.iis, atol=1e-6)
    calls = []

    def factory(m):
        calls.append(m)
        return lib

    fn = it.IISMonitor(x[mtr], y[mtr], x[mev], y[mev], factory, every=3)
    assert fn(model) is not None and fn(model) is None and fn(model) is None and fn(model) is not None
    assert len(calls) == 2 and fn.epochs == [0, 3]


def test_bad_arguments(digits):
    imgs, y, tr, ev, x, el = digits
    model = _small_cnn()
    with pytest.raises(TypeError, match="concepts"):
        it.IISMonitor(x[:10], y[:10], x[10:20], y[10:20], "prototypes")
    with pytest.raises(ValueError, match="every"):
        it.IISMonitor(x[:10], y[:10], x[10:20], y[10:20], el, every=0)
    with pytest.raises(ValueError, match="library"):
        it.IISMonitor(x[:10], y[:10], x[10:20], y[10:20], el, library="text")
    with pytest.raises(ValueError, match="train_labels has 9 entries"):
        it.IISMonitor(x[:10], y[:9], x[10:20], y[10:20], el)
    shuffled = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:10]), batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match="shuffling"):
        it.IISMonitor(shuffled, y[:10], x[10:20], y[10:20], el)
    mon = it.IISMonitor(x[:10], y[:10], x[10:20], y[10:20], el, n_concepts=5)
    with pytest.raises(TypeError, match="metric"):
        mon(model, 0, val_accuracy="high")
    with pytest.raises(TypeError, match="Module"):
        mon("model", 0)
    with pytest.raises(ValueError, match="nothing recorded"):
        mon.plot()
    with pytest.raises(TypeError, match="ConceptLibrary"):
        it.IISMonitor(x[:10], y[:10], x[10:20], y[10:20], lambda m: np.ones((3, 32)))(model)
