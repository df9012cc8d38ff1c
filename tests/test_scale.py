"""Features read in place at any size: ``iis.score`` on a memory-mapped ``.npy`` gives the
same result as in memory, and its memory peak stays far below n_train x K (the solver's
passes hold one block of logits per thread, never all of them)."""
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import iis


def _data(n, n_ev, d, k, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)).astype(np.float32)
    ytr, yev = np.arange(n) % k, np.arange(n_ev) % k
    ftr = np.maximum(centres[ytr] + rng.normal(size=(n, d)).astype(np.float32), 0)
    fev = np.maximum(centres[yev] + rng.normal(size=(n_ev, d)).astype(np.float32), 0)
    return ftr, ytr, fev, yev


def test_memmap_score_equals_in_memory(tmp_path):
    ftr, ytr, fev, yev = _data(3000, 600, 24, 12)
    lib = iis.ConceptLibrary.prototype(ftr, ytr, n_concepts=16, seed=0)
    np.save(tmp_path / "tr.npy", ftr)
    np.save(tmp_path / "ev.npy", fev)
    mtr, mev = (np.load(tmp_path / f, mmap_mode="r") for f in ("tr.npy", "ev.npy"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = iis.score(ftr, ytr, fev, yev, lib, n_threads=2)
        b = iis.score(mtr, ytr, mev, yev, lib, n_threads=2)
    assert isinstance(mtr, np.memmap) and not mtr.flags.writeable
    assert b.iis == a.iis and b.probe_accuracy == a.probe_accuracy
    np.testing.assert_array_equal(b.ip_accuracy, a.ip_accuracy)
    np.testing.assert_array_equal(b.n_iter, a.n_iter)
    assert b.probe_n_iter == a.probe_n_iter


# In a fresh process: the memory peak of one iis.score on memory-mapped features, from the
# high-water mark reset (clear_refs) after loading, so imports and the data do not count.
_CHILD = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np
    import iis
    folder = sys.argv[1]
    ftr = np.load(folder + "/tr.npy", mmap_mode="r")
    fev = np.load(folder + "/ev.npy", mmap_mode="r")
    ytr, yev = np.load(folder + "/ytr.npy"), np.load(folder + "/yev.npy")
    lib = iis.ConceptLibrary(np.load(folder + "/p.npy"))

    def status():
        out = {}
        for line in open("/proc/self/status"):
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        iis.score(ftr[:500], ytr[:500], fev, yev, lib, n_threads=2, max_iter=5)  # warm: pools, BLAS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = status()["VmRSS"]
        res = iis.score(ftr, ytr, fev, yev, lib, n_threads=2, tol=1e-3, max_iter=5)
    print(json.dumps({"peak": status()["VmHWM"] - before, "n_iter": res.n_iter.tolist()}))
""")


def _can_reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_hwm(),
                    reason="needs /proc/self/clear_refs to reset the high-water mark")
def test_score_peak_memory_far_below_train_logits(tmp_path):
    # n x K logits in float32 would be 160 MB; the features 12.8 MB, the activations as much.
    # max_iter=5 passes iteration 3, where the class-block preconditioner is built from the
    # curvatures of every (row, class) (n / K = 1,000 rows per class: the blocks are on).
    n, n_ev, d, k, m = 200_000, 2_000, 16, 200, 16
    ftr, ytr, fev, yev = _data(n, n_ev, d, k, seed=1)
    for name, arr in (("tr", ftr), ("ev", fev), ("ytr", ytr), ("yev", yev), ("p", ftr[:m])):
        np.save(tmp_path / f"{name}.npy", arr)
    del ftr, fev
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(iis.__file__)), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    logits_bytes = n * k * 4
    assert r["peak"] < logits_bytes / 2, (r, logits_bytes)


def _digits64():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return np.ascontiguousarray(x, dtype=np.float64), y.astype(np.int32)


@pytest.mark.parametrize("rows", [200, 100])  # one level of warm start (1797 -> 225 rows), two (-> 29)
def test_probe_warm_start_reaches_the_same_optimum(monkeypatch, rows):
    """A probe started from every 8th row's fit meets the full fit's stopping rule, and
    its weights and objective agree with a probe from zero within what that rule bounds."""
    from iis import _api
    from iis._reference import assert_same_optimum

    x, y = _digits64()
    args = (x, y, 10, 1e-3, 1e-6, 1000, 2)
    fits = []
    for warm_rows in (10**9, rows):
        monkeypatch.setattr(_api, "_WARM_ROWS", warm_rows)
        events = []
        w, b, mu, sigma, _, conv, _, gmax, stop = _api._probe_fit(*args, event=lambda *e: events.append(e))
        assert conv and stop == 0 and gmax <= 1e-6
        warm = [e for e in events if e[0] == "warm"]
        assert (len(warm) > 0) == (warm_rows == rows), "the start is fitted only above _WARM_ROWS rows"
        if warm_rows == 100:  # two fits of the start, each counting its iterations from 1
            assert sum(e[1] == 1 for e in warm) == 2
        fits.append((w, b))
    xs = (x - mu) / sigma
    assert_same_optimum(fits, xs, y, 1e-3)


def test_probe_warm_start_events_before_the_full_fit(monkeypatch):
    from iis import _api

    x, y = _digits64()
    x = x[:, 8:40]  # n_train x K above a quarter of the features' bytes: no start from the IP's logits
    monkeypatch.setattr(_api, "_WARM_ROWS", 200)
    monkeypatch.setattr(_api, "_WARM_START_MAX_BYTES", 0)
    events = []
    res = iis.score(x[:1500], y[:1500], x[1500:], y[1500:], iis.ConceptLibrary.prototype(x[:1500], y[:1500], 20),
                    sparsities=(0.0, 0.5), n_threads=1, progress=events.append)
    probe = [e.event for e in events if e.stage == "probe"]
    assert probe[0] == "start" and probe[-1] == "end" and "warm" in probe
    assert probe.index("iteration") > max(i for i, e in enumerate(probe) if e == "warm")
    assert events[-1].iteration == res.probe_n_iter
