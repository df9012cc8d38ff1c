"""iis.sweep / iis sweep (issue 20): a grid of cells from one spec, features cached on disk
under content keys, results resumable after SIGKILL, failures recorded, the report's
statistics equal scipy's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

if os.environ.get("CI") or os.environ.get("IIS_REQUIRE_TORCH"):
    import torch  # CI installs the torch extra: these tests must run, never skip
else:  # pragma: no cover - local runs without torch
    torch = pytest.importorskip("torch")
pd = pytest.importorskip("pandas")

import iis  # noqa: E402
import iis.elements  # noqa: E402
import iis._sweep as sw  # noqa: E402
from iis.datasets import load_digits_images, select_per_class, train_eval_split  # noqa: E402

TIMES = ["time_extract", "time_probe", "time_library", "time_score", "time_total"]


def base_spec(tmp_path, **over):
    """resnet18 (random weights, seed 0) on 80 real digits at 32 px: seconds per cell."""
    spec = {
        "out": str(tmp_path / "out"), "sparsities": [0.0, 0.5, 0.9], "threads": 1,
        "models": [{"name": "resnet18", "layers": ["layer3"], "image_size": 32}],
        "datasets": [{"source": "digits", "size": 32, "n_per_class": 8}],
        "libraries": [{"kind": "prototype", "n_concepts": 12, "elements": "patches", "grid": 2, "per_class": 2},
                      {"kind": "cluster", "n_concepts": 6, "elements": "features"}],
    }
    spec.update(over)
    return spec


def read_table(out):
    return pd.read_csv(os.path.join(out, "results.csv"), keep_default_na=False, na_values=[""])


def numeric(df):
    """The table without times and Ray placement (what differs from run to run)."""
    return df.drop(columns=[c for c in TIMES + ["ray_extract", "ray_score"] if c in df])


def probe_files(out):
    """The dense probes kept in a sweep's cache."""
    return sum(f.endswith(".probe.json") for _, _, fs in os.walk(os.path.join(out, "cache")) for f in fs)


@pytest.fixture
def count_extract(monkeypatch):
    calls = []
    real = sw._extract

    def counting(*args, **kw):
        calls.append(args[3])  # the layer
        return real(*args, **kw)

    monkeypatch.setattr(sw, "_extract", counting)
    return calls


def test_cells_equal_the_pipeline_written_by_hand(tmp_path, count_extract):
    df = iis.sweep(base_spec(tmp_path), progress=False)
    assert list(df["library"]) == ["prototype:12/patches", "cluster:6/features"]
    assert (df["status"] == "ok").all() and len(count_extract) == 3  # train, eval, elements

    import iis.torch as it
    from iis.elements import patches

    images, labels = load_digits_images(size=32)
    keep = select_per_class(labels, 8, seed=0)
    images, labels = images[keep], labels[keep]
    tr, ev = train_eval_split(labels, 0.3, seed=0)
    torch.manual_seed(0)
    model = it.load_model("resnet18")
    cfg = it.data_config(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def feats(x):
            ds = it.ImageDataset(x, size=32, mean=cfg["mean"], std=cfg["std"])
            return it.extract_features(model, ds, "layer3", progress=False)

        ftr, fev = feats(images[tr]), feats(images[ev])
        sel = select_per_class(labels[tr], 2, seed=0)
        el = patches(list(images[tr][sel]), labels[tr][sel], grid=2)
        fel = feats(el.images)
    finally:
        torch.set_num_threads(threads)
    libs = [iis.ConceptLibrary.prototype(fel, el.labels, n_concepts=12, seed=0),
            iis.ConceptLibrary.cluster(ftr, n_concepts=6, seed=0, element_labels=labels[tr], n_threads=1)]
    probe = iis.probe(ftr, labels[tr], fev, labels[ev], n_threads=1)  # one for both libraries
    assert probe_files(tmp_path / "out") == 1 and df["time_probe"].nunique() == 1
    for (_, row), lib in zip(df.iterrows(), libs):
        res = iis.score(ftr, labels[tr], fev, labels[ev], lib, sparsities=[0, 0.5, 0.9], n_threads=1, probe=probe)
        assert row["iis"] == res.iis and row["probe_accuracy"] == res.probe_accuracy == probe.accuracy
        assert row["iis_normalized"] == res.iis_normalized
        assert [row["arr@0"], row["arr@0.5"], row["arr@0.9"]] == list(res.arr)
        assert (row["n_train"], row["n_eval"], row["dim"]) == (len(tr), len(ev), 256)
    out = str(tmp_path / "out")
    assert read_table(out)["iis"].tolist() == df["iis"].tolist()  # CSV keeps every bit


def test_cache_hits_only_for_unchanged_inputs(tmp_path, count_extract, monkeypatch):
    images, labels = load_digits_images(size=32, n_per_class=8)
    npz = tmp_path / "digits.npz"
    np.savez(npz, images=images, labels=labels)
    cache = str(tmp_path / "cache")
    spec = base_spec(tmp_path, cache=cache, datasets=[{"source": "npz", "path": str(npz), "name": "d"}])
    first = iis.sweep(spec, progress=False)
    assert len(count_extract) == 3
    # a new results folder, the same inputs: every feature comes from the cache
    again = iis.sweep(dict(spec, out=str(tmp_path / "out2")), progress=False)
    assert len(count_extract) == 3
    pd.testing.assert_frame_equal(numeric(first), numeric(again))
    # another layer: only its features are extracted, from the elements already cut
    spec["models"] = [dict(spec["models"][0], layers=["layer3", "layer2"])]
    cuts = []
    real_patches = iis.elements.patches
    monkeypatch.setattr(iis.elements, "patches", lambda *a, **k: cuts.append(1) or real_patches(*a, **k))
    iis.sweep(dict(spec, out=str(tmp_path / "out3")), progress=False)
    assert count_extract[3:] == ["layer2"] * 3 and cuts == []
    # the dataset's content changes (one pixel of one image): both layers are extracted again
    images[0, 0, 0, 0] ^= 1
    np.savez(npz, images=images, labels=labels)
    iis.sweep(dict(spec, out=str(tmp_path / "out4")), progress=False)
    assert sorted(count_extract[6:]) == ["layer2"] * 3 + ["layer3"] * 3 and cuts == [1]
    # the same per-class subset under another seed is another dataset too
    spec["datasets"] = [dict(spec["datasets"][0], n_per_class=6, split_seed=1)]
    iis.sweep(dict(spec, out=str(tmp_path / "out5")), progress=False)
    assert len(count_extract) == 18


def test_bytes_labels_are_refused_with_their_cure(tmp_path):
    images, labels = load_digits_images(size=32, n_per_class=3)
    npz = tmp_path / "digits.npz"
    np.savez(npz, images=images, labels=labels.astype("S1"))
    df = iis.sweep(base_spec(tmp_path, datasets=[{"source": "npz", "path": str(npz), "name": "d"}]), progress=False)
    assert (df["status"] == "error").all()
    assert df["error"].str.contains("'labels' are bytes").all() and df["error"].str.contains("store them as str").all()


def test_image_folder_files_and_their_mtimes_key_the_cache(tmp_path, count_extract):
    from PIL import Image

    images, labels = load_digits_images(size=32, n_per_class=5)
    root = tmp_path / "folder"
    for i, (img, lab) in enumerate(zip(images, labels)):
        (root / f"digit{lab}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"digit{lab}" / f"{i}.png")
    spec = base_spec(tmp_path, cache=str(tmp_path / "cache"),
                     datasets=[{"source": "imagefolder", "path": str(root)}],
                     libraries=[{"kind": "cluster", "n_concepts": 6, "elements": "features"}])
    df = iis.sweep(spec, progress=False)
    assert df["status"].tolist() == ["ok"] and df["n_classes"].tolist() == [10]
    assert df["n_train"].iloc[0] + df["n_eval"].iloc[0] == 50 and len(count_extract) == 2
    iis.sweep(dict(spec, out=str(tmp_path / "o2")), progress=False)
    assert len(count_extract) == 2
    first = next(root.glob("digit0/*.png"))
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: maybe another image
    iis.sweep(dict(spec, out=str(tmp_path / "o3")), progress=False)
    assert len(count_extract) == 4


def test_a_failing_cell_is_recorded_and_the_others_go_on(tmp_path):
    spec = base_spec(tmp_path, libraries=[
        {"kind": "prototype", "n_concepts": 10000, "elements": "features", "label": "too many"},
        {"kind": "cluster", "n_concepts": 6, "elements": "features"}])
    df = iis.sweep(spec, progress=False)
    assert df["status"].tolist() == ["error", "ok"]
    assert "n_concepts=10000 exceeds" in df["error"].iloc[0] and np.isnan(df["iis"].iloc[0])
    assert df["iis"].iloc[1] > 0
    # a rerun tries the failed cell again, and only it
    bad, ok = (os.path.join(spec["out"], "cells", c + ".json") for c in df["cell_id"])
    before = os.stat(bad).st_mtime_ns, os.stat(ok).st_mtime_ns
    again = iis.sweep(spec, progress=False)
    assert again["status"].tolist() == ["error", "ok"]
    assert os.stat(bad).st_mtime_ns > before[0] and os.stat(ok).st_mtime_ns == before[1]
    spec["libraries"][0]["n_concepts"] = 10  # a fixed spec is a new cell
    assert iis.sweep(spec, progress=False)["status"].tolist() == ["ok", "ok"]


KILLER = r"""
import os, signal, sys
import iis._sweep as sw
real, calls = sw._extract, []
def extract_then_die(*args, **kw):
    real(*args, **kw)  # the features are written to a temporary name ...
    calls.append(1)
    if len(calls) == 4:  # ... of the second unit's train split: die before the rename
        os.kill(os.getpid(), signal.SIGKILL)
sw._extract = extract_then_die
sw.sweep(sys.argv[1], progress=False)
"""


def test_sigkill_halfway_then_restart_gives_the_uninterrupted_table(tmp_path):
    spec = base_spec(tmp_path / "a")
    spec["models"][0]["layers"] = ["layer3", "layer2"]
    text = "\n".join([f'out = "{spec["out"]}"', "sparsities = [0.0, 0.5, 0.9]", "threads = 1",
                      "[[models]]", 'name = "resnet18"', 'layers = ["layer3", "layer2"]', "image_size = 32",
                      "[[datasets]]", 'source = "digits"', "size = 32", "n_per_class = 8",
                      "[[libraries]]", 'kind = "prototype"', "n_concepts = 12", 'elements = "patches"',
                      "grid = 2", "per_class = 2",
                      "[[libraries]]", 'kind = "cluster"', "n_concepts = 6", 'elements = "features"'])
    toml = tmp_path / "spec.toml"
    toml.write_text(text)
    assert sw.load_spec(str(toml)) == sw.load_spec(spec)
    p = subprocess.run([sys.executable, "-c", KILLER, str(toml)], capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    cells = os.path.join(spec["out"], "cells")
    done = {f: os.stat(os.path.join(cells, f)).st_mtime_ns for f in os.listdir(cells)}
    assert len(done) == 2 and all(f.endswith(".json") for f in done)  # the first unit's two cells
    cache = os.path.join(spec["out"], "cache")
    left = [f for _, _, fs in os.walk(cache) for f in fs if f.startswith(".tmp-")]
    assert len(left) == 1  # the killed extraction's file, never renamed into the cache
    p = subprocess.run([sys.executable, "-m", "iis", "sweep", str(toml), "--quiet"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert {f: os.stat(os.path.join(cells, f)).st_mtime_ns for f in done} == done  # not redone
    assert len(os.listdir(cells)) == 4
    iis.sweep(dict(spec, out=str(tmp_path / "b")), progress=False)
    pd.testing.assert_frame_equal(numeric(read_table(spec["out"])), numeric(read_table(tmp_path / "b")),
                                  check_exact=True)


def test_ctrl_c_stops_cleanly_and_the_rerun_finishes(tmp_path, monkeypatch, capsys):
    spec = base_spec(tmp_path)
    real, calls = sw.run_cell, []

    def interrupted_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(sw, "run_cell", interrupted_second)
    from iis import cli

    assert cli.main(["sweep", str(_write_toml(tmp_path, spec))]) == 130
    assert "1/2 cells done" in capsys.readouterr().err
    cells = os.listdir(os.path.join(spec["out"], "cells"))
    assert len(cells) == 1 and not cells[0].startswith(".tmp-")
    monkeypatch.setattr(sw, "run_cell", real)
    assert iis.sweep(spec, progress=False)["status"].tolist() == ["ok", "ok"]


def _write_toml(tmp_path, spec):
    def value(v):
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in spec.items() if not isinstance(v, list) or k == "sparsities"]
    for key in ("models", "datasets", "libraries"):
        for entry in spec[key]:
            lines.append(f"[[{key}]]")
            lines += [f"{k} = {value(v)}" for k, v in entry.items()]
    path = tmp_path / "spec.toml"
    path.write_text("\n".join(lines))
    return path


def test_progress_lines_count_cells_and_estimate_the_rest(tmp_path, capsys):
    iis.sweep(base_spec(tmp_path), progress=True)
    err = [ln for ln in capsys.readouterr().err.splitlines() if "cells done" in ln]
    assert err[0].startswith("[iis sweep] 0/2 cells done") and "ETA ?" in err[0]
    assert err[1].startswith("[iis sweep] 1/2 cells done") and err[1].endswith("s")
    assert err[2].startswith("[iis sweep] 2/2 cells done") and err[2].endswith("ETA 0s")


@pytest.mark.parametrize("change, message", [
    ({"unknown": 1}, "unknown keys ['unknown']"),
    ({"models": []}, "at least one [[models]]"),
    ({"datasets": [{"source": "mnist"}]}, "source must be digits, imagefolder or npz"),
    ({"libraries": [{"kind": "concepts"}]}, "kind must be one of prototype, cluster, end2end, text, infodisent"),
    ({"libraries": [{"kind": "cluster", "elements": "pixels"}]}, "elements must be patches"),
    ({"models": [{"name": "resnet18", "pretrained": True, "weights": "w.pth"}]}, "excludes weights"),
    ({"libraries": [{"kind": "cluster"}, {"kind": "cluster"}]}, "labels must be distinct"),
    ({"threads": 0}, "threads must be an integer >= 1"),
    ({"sparsities": [0.5, 1.0]}, "sparsities must lie in [0, 1)"),
    ({"models": [{"name": "efficientnet_lite9", "source": "packaged"}]}, "packaged models are efficientnet_lite0"),
])
def test_bad_specs_are_named(tmp_path, change, message):
    with pytest.raises(ValueError, match=None) as err:
        sw.load_spec(base_spec(tmp_path, **change))
    assert message in str(err.value)


def test_requests_no_ray_node_meets_are_errors_not_pending_tasks(tmp_path):
    """Ray keeps a task pending forever when no node has the GPUs or CPUs it asks for."""
    spec = sw.load_spec(base_spec(tmp_path, models=[{"name": "resnet18", "gpus": 1}]))
    units = sw._units(spec)
    cpu_node = {"Alive": True, "Resources": {"CPU": 8.0, "memory": 2.0**34}}
    with pytest.raises(ValueError, match=r"'resnet18'.*1 GPU\(s\).*no node of the Ray cluster has that many"):
        sw._check_feasible([cpu_node], spec, units)
    gpu_node = {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}}
    sw._check_feasible([cpu_node, gpu_node], spec, units)  # the GPU node takes it
    with pytest.raises(ValueError, match="no node"):
        sw._check_feasible([cpu_node, dict(gpu_node, Alive=False)], spec, units)
    with pytest.raises(ValueError, match=r"4 CPU\(s\) \(threads\)"):
        sw._check_feasible([gpu_node], dict(spec, threads=4), units)


def test_two_names_for_the_same_data_are_two_rows_from_one_extraction(tmp_path, count_extract):
    d = {"source": "digits", "size": 32, "n_per_class": 8}
    spec = base_spec(tmp_path, datasets=[dict(d, name="a"), dict(d, name="b")],
                     libraries=[{"kind": "cluster", "n_concepts": 6, "elements": "features"}])
    df = iis.sweep(spec, progress=False)
    assert df["dataset"].tolist() == ["a", "b"] and df["cell_id"].nunique() == 2
    assert df["iis"].iloc[0] == df["iis"].iloc[1] and len(count_extract) == 2


def test_a_missing_dataset_file_is_named_before_any_cell_runs(tmp_path):
    absent = str(tmp_path / "absent.npz")
    spec = base_spec(tmp_path, datasets=[{"source": "npz", "path": absent}])
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        iis.sweep(spec, progress=False)
    assert not os.path.exists(spec["out"])


def test_torchvision_and_packaged_models(tmp_path):
    spec = base_spec(tmp_path, libraries=[{"kind": "cluster", "n_concepts": 6, "elements": "features"}],
                     models=[{"name": "resnet18", "source": "torchvision", "num_classes": 10, "image_size": 32},
                             {"name": "efficientnet_lite0", "source": "packaged", "image_size": 32}])
    df = iis.sweep(spec, progress=False)
    assert df["status"].tolist() == ["ok", "ok"], df["error"].tolist()
    assert df["dim"].tolist() == [512, 1280]  # the inputs of their classifiers


def test_correlation_matches_scipy():
    from scipy import stats

    from iis._sweep_report import correlation

    rng = np.random.default_rng(3)
    x = rng.normal(size=12)
    y = 0.6 * x + rng.normal(size=12)
    c = correlation(x, y)
    pr = stats.pearsonr(x, y)
    ci = pr.confidence_interval(0.95)  # scipy's interval is the Fisher-z one as well
    assert np.allclose([c["pearson_r"], c["pearson_p"], c["pearson_lo"], c["pearson_hi"]],
                       [pr.statistic, pr.pvalue, ci.low, ci.high], rtol=1e-12, atol=0)
    sr = stats.spearmanr(x, y)
    h = stats.norm.ppf(0.975) * np.sqrt(1.06 / 9)
    assert np.allclose([c["spearman_r"], c["spearman_p"], c["spearman_lo"], c["spearman_hi"]],
                       [sr.statistic, sr.pvalue, np.tanh(np.arctanh(sr.statistic) - h),
                        np.tanh(np.arctanh(sr.statistic) + h)], rtol=1e-12, atol=0)
    assert c["n"] == 12 and c["pearson_lo"] < c["pearson_r"] < c["pearson_hi"]
    assert np.isnan(correlation(x[:3], y[:3])["pearson_lo"])  # no interval below 4 points
    assert np.isnan(correlation(np.ones(5), y[:5])["spearman_r"])  # a constant has no correlation


def test_report_draws_the_figures_of_a_checkpoint_sweep(tmp_path, capsys):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        import iis.torch as it

        paths.append(str(tmp_path / f"epoch{seed}.pth"))
        torch.save(it.load_model("resnet18").state_dict(), paths[-1])
    spec = base_spec(tmp_path, libraries=[{"kind": "cluster", "n_concepts": 6, "elements": "features"}],
                     models=[{"name": "resnet18", "checkpoints": paths, "layers": ["layer2", "layer3"],
                              "image_size": 32}])
    toml = _write_toml(tmp_path, spec)
    from iis import cli

    assert cli.main(["sweep", str(toml), "--quiet"]) == 0
    df = read_table(spec["out"])
    assert df["checkpoint"].tolist() == ["epoch0.pth", "epoch0.pth", "epoch1.pth", "epoch1.pth"]
    assert df["iis"].iloc[0] != df["iis"].iloc[2]  # the checkpoints' weights differ
    capsys.readouterr()
    assert cli.main(["sweep", str(toml), "--report"]) == 0
    assert "pearson_r" in capsys.readouterr().out
    from iis._sweep_report import correlation

    want = correlation(df["probe_accuracy"], df["iis"])
    got = pd.read_csv(os.path.join(spec["out"], "correlations.csv")).iloc[0]
    assert got["library"] == "cluster:6/features"
    assert np.allclose([got[k] for k in want], list(want.values()), rtol=1e-12, atol=0, equal_nan=True)
    import matplotlib.image

    for name in ("iis_vs_accuracy", "arr_curves", "iis_over_checkpoints"):
        img = matplotlib.image.imread(os.path.join(spec["out"], "figures", name + ".png"))
        assert img.shape[0] > 100 and img.std() > 0  # drawn, not blank


def test_progress_lines_show_the_running_cells_fits(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(iis._sweep._Progress, "every", 0.0)  # every event of the fits prints
    df = iis.sweep(base_spec(tmp_path), progress=True)
    err = capsys.readouterr().err.splitlines()
    for i, (_, r) in enumerate(df.iterrows()):
        prefix = f"[iis sweep] cell {i + 1}/2 {r['model']}/{r['layer']}/{r['dataset']}/{r['library']}: "
        mine = [ln[len(prefix):] for ln in err if ln.startswith(prefix)]
        assert any(ln.startswith("s=0 (1/") and "  it 1  f=" in ln for ln in mine), mine
        # the first cell fits the probe both cells share
        fit = any(ln.startswith("probe  done: accuracy " + f"{r['probe_accuracy']:.4f}") for ln in mine)
        assert fit == (i == 0), mine
    # the cell lines sit between the cells' count lines
    counts = [i for i, ln in enumerate(err) if "cells done" in ln]
    assert all(ln.startswith("[iis sweep] cell 1/2") for ln in err[counts[0] + 1:counts[1]])


def test_one_probe_per_representation_kept_across_runs_and_refit_for_new_options(tmp_path, monkeypatch):
    """The dense probe depends on the features and the solver's l2, tol and max_iter only:
    fitted once per (model, layer, dataset) for all libraries, found again by a restarted
    sweep, fitted anew when one of its options changes (never a stale hit)."""
    fits = []
    real = iis.probe
    monkeypatch.setattr(iis, "probe", lambda *a, **k: fits.append(k) or real(*a, **k))
    spec = base_spec(tmp_path)
    spec["models"][0]["layers"] = ["layer3", "layer2"]
    df = iis.sweep(spec, progress=False)
    assert (df["status"] == "ok").all() and len(df) == 4
    assert len(fits) == 2 and probe_files(spec["out"]) == 2  # two layers, two libraries each
    for _, unit in df.groupby("layer"):
        assert unit["probe_accuracy"].nunique() == 1 and unit["time_probe"].nunique() == 1
    # a restarted sweep (its cells' results deleted) reuses the stored probes
    for f in os.listdir(os.path.join(spec["out"], "cells")):
        os.remove(os.path.join(spec["out"], "cells", f))
    again = iis.sweep(spec, progress=False)
    assert len(fits) == 2
    pd.testing.assert_frame_equal(numeric(df), numeric(again), check_exact=True)
    assert again["time_probe"].tolist() == df["time_probe"].tolist()  # the stored probe's time
    # an option of the probe is a new key: refitted; one it does not depend on is not
    spec["solver"] = {"tol": 1e-4}
    iis.sweep(spec, progress=False)
    assert len(fits) == 4 and fits[-1]["tol"] == 1e-4 and probe_files(spec["out"]) == 4
    spec["solver"] = {"tol": 1e-4, "mask": "soft"}
    iis.sweep(spec, progress=False)
    assert len(fits) == 4


def test_a_failing_probe_fails_its_cells(tmp_path):
    spec = base_spec(tmp_path, solver={"max_iter": 0})
    df = iis.sweep(spec, progress=False)
    assert df["status"].tolist() == ["error", "error"]
    assert all("max_iter" in e for e in df["error"])
