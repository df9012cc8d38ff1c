"""The Ray backend of iis.sweep (issue 20) on a local Ray cluster that the test starts and
stops, with one logical GPU: the same table as the local backend, bit for bit (times and
placement excepted), for every library kind; a GPU request reaches the extraction task,
and requests that no node can meet are errors, not tasks pending forever."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

if os.environ.get("CI") or os.environ.get("IIS_REQUIRE_TORCH"):
    import torch  # CI installs the torch and ray extras: these tests must run
    import ray
else:  # pragma: no cover - local runs without the extras
    torch = pytest.importorskip("torch")
    ray = pytest.importorskip("ray")
pd = pytest.importorskip("pandas")

import iis  # noqa: E402
import iis._sweep as sw  # noqa: E402
from test_sweep import _write_toml, base_spec, numeric, read_table  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)  # a logical GPU
    yield
    ray.shutdown()


def test_ray_backend_gives_the_local_table_bit_for_bit(tmp_path, cluster):
    spec = base_spec(tmp_path / "local")
    spec["models"][0]["layers"] = ["layer3", "layer2"]
    iis.sweep(spec, progress=False)
    remote = base_spec(tmp_path / "ray")  # its own results and its own feature cache
    remote["models"] = spec["models"]
    toml = _write_toml(tmp_path, remote)
    from iis import cli

    assert cli.main(["sweep", str(toml), "--ray", "local", "--quiet"]) == 0  # the running cluster
    a, b = read_table(spec["out"]), read_table(remote["out"])
    assert len(a) == 4 and (a["status"] == "ok").all()
    pd.testing.assert_frame_equal(numeric(a), numeric(b), check_exact=True)
    # the features were extracted by the tasks into the second cache, with the same bits
    files = sorted(os.path.relpath(os.path.join(d, f), spec["out"])
                   for d, _, fs in os.walk(os.path.join(spec["out"], "cache")) for f in fs)
    probes = [f for f in files if f.endswith(".probe.json")]
    assert len(files) - len(probes) == 2 * (3 * 2 + 1)  # (train, eval, elements) x 2 layers + the element images
    assert len(probes) == 2  # one dense probe per layer, for both libraries
    for f in files:
        if f in probes:  # the same probe, fitted by a Ray task (its time aside)
            here, there = (json.load(open(os.path.join(o, f))) for o in (spec["out"], remote["out"]))
            assert here["probe"] == there["probe"]
            continue
        assert np.array_equal(np.load(os.path.join(spec["out"], f)), np.load(os.path.join(remote["out"], f)))
    # a rerun on Ray finds every cell done
    assert (iis.sweep(remote, backend="ray", progress=False)["iis"] == b["iis"]).all()


def test_a_failing_extraction_fails_its_cells_on_ray(tmp_path, cluster):
    spec = base_spec(tmp_path, models=[{"name": "resnet18", "layers": ["no_such_layer"], "image_size": 32}])
    df = iis.sweep(spec, backend="ray", progress=False)
    assert df["status"].tolist() == ["error", "error"]
    assert all("feature extraction failed" in e and "no_such_layer" in e for e in df["error"])


def test_ctrl_c_on_ray_cancels_and_the_rerun_finishes(tmp_path, cluster, monkeypatch):
    spec = base_spec(tmp_path)
    real, calls = ray.wait, []

    def interrupted_wait(*args, **kw):
        calls.append(1)
        if len(calls) == 2:  # the extraction is done, the probe task is submitted
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(ray, "wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        iis.sweep(spec, backend="ray", progress=False)
    monkeypatch.setattr(ray, "wait", real)
    df = iis.sweep(spec, backend="ray", progress=False)
    assert df["status"].tolist() == ["ok", "ok"]
    local = iis.sweep(dict(spec, out=str(tmp_path / "local")), progress=False)
    pd.testing.assert_frame_equal(numeric(df), numeric(local), check_exact=True)


def test_every_library_kind_on_ray_gives_the_local_table(tmp_path, cluster):
    pytest.importorskip("open_clip")
    from test_sweep_kinds import kinds_spec

    local = iis.sweep(kinds_spec(tmp_path / "local"), progress=False)
    remote = iis.sweep(kinds_spec(tmp_path / "ray"), backend="ray", progress=False)  # its own cache
    assert (local["status"] == "ok").all() and len(local) == 4
    pd.testing.assert_frame_equal(numeric(local), numeric(remote), check_exact=True)


def test_a_gpu_request_reaches_the_extraction_task_and_scoring_asks_for_cpus_and_memory(tmp_path, cluster):
    spec = base_spec(tmp_path / "ray", models=[{"name": "resnet18", "layers": ["layer3"], "image_size": 32,
                                                "gpus": 1}], device="cpu")  # extract on the CPU all the same
    df = iis.sweep(spec, backend="ray", progress=False)
    assert (df["status"] == "ok").all()
    for extract, score in zip(df["ray_extract"].map(json.loads), df["ray_score"].map(json.loads)):
        assert extract["gpu_ids"] == ["0"] and extract["resources"]["GPU"] == 1 and extract["resources"]["CPU"] == 1
        assert score["gpu_ids"] == [] and "GPU" not in score["resources"] and score["resources"]["CPU"] == 1
        assert score["resources"]["memory"] > 2 * 56 * 256 * 4  # twice the train features, at least
    local = iis.sweep(dict(spec, out=str(tmp_path / "local")), progress=False)
    pd.testing.assert_frame_equal(numeric(df), numeric(local), check_exact=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees CUDA")
def test_a_task_given_a_gpu_that_torch_cannot_use_fails_clearly(tmp_path, cluster):
    spec = base_spec(tmp_path, models=[{"name": "resnet18", "layers": ["layer3"], "image_size": 32, "gpus": 1}])
    df = iis.sweep(spec, backend="ray", progress=False)  # device = "auto"
    assert df["status"].tolist() == ["error", "error"]
    assert all("given GPU(s) ['0'] but torch" in e and "sees no CUDA device" in e and 'device = "cpu"' in e
               for e in df["error"])


def test_more_gpus_than_any_node_has_is_an_error_not_a_hang(tmp_path, cluster):
    spec = base_spec(tmp_path, models=[{"name": "resnet18", "layers": ["layer3"], "image_size": 32, "gpus": 2}])
    with pytest.raises(ValueError, match=r"2 GPU\(s\) \(gpus\), but no node of the Ray cluster has that many"):
        iis.sweep(spec, backend="ray", progress=False)


def test_scoring_memory_no_node_has_fails_its_cells(tmp_path, cluster, monkeypatch):
    monkeypatch.setattr(sw, "_MEMORY_SLACK", 1 << 60)
    df = iis.sweep(base_spec(tmp_path), backend="ray", progress=False)
    assert df["status"].tolist() == ["error", "error"]
    assert all("GiB of memory" in e and "no node of the Ray cluster has that much" in e for e in df["error"])


@pytest.fixture
def submitted(monkeypatch):
    """The Ray tasks the sweep submits: (function name, options, arguments)."""
    real_remote, submitted = ray.remote, []

    class Spy:
        def __init__(self, fn):
            self.fn, self.name = real_remote(fn), fn.__name__

        def options(self, **opts):
            inner, name = self.fn.options(**opts), self.name

            class Submit:
                def remote(self, *args):
                    submitted.append((name, opts, args))
                    return inner.remote(*args)
            return Submit()

    monkeypatch.setattr(ray, "remote", Spy)
    return submitted


def test_one_probe_task_per_representation(tmp_path, cluster, submitted):
    """Two layers, two libraries each: two probe tasks, each before its layer's two scoring
    tasks, which read the probe it stored and record its time."""
    spec = base_spec(tmp_path)
    spec["models"][0]["layers"] = ["layer3", "layer2"]
    df = iis.sweep(spec, backend="ray", progress=False)
    assert (df["status"] == "ok").all() and len(df) == 4
    names = [name for name, _, _ in submitted]
    assert names.count("_probe_task") == 2 and names.count("_score_task") == 4
    order = [(name, args[1 if name == "_probe_task" else 2]["layer"]) for name, _, args in submitted
             if name != "_extract_task"]
    assert sorted(layer for name, layer in order if name == "_probe_task") == ["layer2", "layer3"]
    for layer in ("layer2", "layer3"):  # its probe task is submitted before its scoring tasks
        assert order.index(("_probe_task", layer)) < order.index(("_score_task", layer))
    for _, unit in df.groupby("layer"):
        assert unit["time_probe"].nunique() == 1 and unit["probe_accuracy"].nunique() == 1


def test_clip_embeddings_are_one_task_for_all_units(tmp_path, cluster, submitted):
    """CLIP embeddings do not depend on the model: two layers (two units running at once)
    share one extraction task for them instead of computing them twice."""
    pytest.importorskip("open_clip")
    from test_sweep_kinds import LIBRARIES

    spec = base_spec(tmp_path, libraries=[dict(LIBRARIES[2])])
    spec["models"][0]["layers"] = ["layer3", "layer2"]
    df = iis.sweep(spec, backend="ray", progress=False)
    assert (df["status"] == "ok").all() and len(df) == 2
    jobs = [set(args[1]["keys"]) for name, _, args in submitted if name == "_extract_task"]
    clip = [n for keys in jobs for n in keys if n.startswith("clip-")]
    assert len(jobs) == 4 and sorted(k[:10] for k in clip) == ["clip-image", "clip-text-"]
    assert sum(1 for keys in jobs if keys == {"train", "eval"}) == 2  # one per layer
    scoring = [opts for name, opts, _ in submitted if name == "_score_task"]
    assert len(scoring) == 2 and all(o["num_cpus"] == 1 and o["memory"] > 0 and "num_gpus" not in o for o in scoring)
