"""Every library kind in a sweep (issue 20): text (LF-CBM with an open_clip model), End2End
and InfoDisent beside Prototype, on real digits. Each row equals the pipeline written by
hand (features, CLIP embeddings, spatial maps, the library, iis.probe, iis.score), libraries see train
data only, and their options are in the cache keys: a changed option reruns its cell, an
unchanged one is a hit."""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("CI") or os.environ.get("IIS_REQUIRE_TORCH"):
    import torch  # CI installs the torch extra: these tests must run, never skip
    import open_clip
else:  # pragma: no cover - local runs without torch
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
pd = pytest.importorskip("pandas")

import iis  # noqa: E402
import iis._sweep as sw  # noqa: E402
from iis.datasets import load_digits_images, select_per_class, train_eval_split  # noqa: E402
from test_sweep import base_spec, numeric  # noqa: E402

CONCEPTS = ["a loop", "a straight line", "a curve", "two loops", "a corner", "a cross", "a hook", "a circle"]
PATCHES = {"elements": "patches", "grid": 2, "per_class": 2}
LIBRARIES = [
    dict(kind="prototype", n_concepts=12, **PATCHES),
    dict(kind="end2end", n_concepts=6, steps=40, eval_every=10, patience=2, **PATCHES),  # the prototype's elements
    # a random-init CLIP: no concept would pass LF-CBM's cut-offs, so they are lowered
    dict(kind="text", concepts=CONCEPTS, clip_model="ViT-S-32", top5_cutoff=-1.0, interpretability_cutoff=-1.0,
         steps=40, eval_every=10),
    dict(kind="infodisent", n_concepts=16, steps=30, batch_size=16),
]


def kinds_spec(tmp_path, **over):
    return base_spec(tmp_path, libraries=[dict(lib) for lib in LIBRARIES], **over)


@pytest.fixture
def count(monkeypatch):
    """Calls of the feature extraction (the layer, 'spatial' for maps), the CLIP
    extraction (images/text) and of run_cell (the library kind)."""
    calls = {"extract": [], "clip": [], "cells": []}
    real_extract, real_clip, real_cell = sw._extract, sw._clip_extract, sw.run_cell

    def extract(*a, **k):
        calls["extract"].append("spatial" if k.get("spatial") else a[3])
        return real_extract(*a, **k)

    def clip(*a, **k):
        calls["clip"].append(a[2])
        return real_clip(*a, **k)

    def cell(spec, c, *a, **k):
        calls["cells"].append(c["library"]["kind"])
        return real_cell(spec, c, *a, **k)

    monkeypatch.setattr(sw, "_extract", extract)
    monkeypatch.setattr(sw, "_clip_extract", clip)
    monkeypatch.setattr(sw, "run_cell", cell)
    return calls


@pytest.fixture(scope="module")
def by_hand():
    """The four libraries and features computed by hand, outside iis.sweep."""
    import iis.torch as it
    from PIL import Image

    from iis.elements import patches

    images, labels = load_digits_images(size=32)
    keep = select_per_class(labels, 8, seed=0)
    images, labels = images[keep], labels[keep]
    tr, ev = train_eval_split(labels, 0.3, seed=0)
    ytr, yev = labels[tr], labels[ev]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = it.load_model("resnet18")
        cfg = it.data_config(model)

        def feats(x, spatial=False):
            ds = it.ImageDataset(x, size=32, mean=cfg["mean"], std=cfg["std"])
            return it.extract_features(model, ds, "layer3", progress=False, spatial=spatial)

        ftr, fev, maps = feats(images[tr]), feats(images[ev]), feats(images[tr], spatial=True)
        sel = select_per_class(ytr, 2, seed=0)
        el = patches(list(images[tr][sel]), ytr[sel], grid=2)
        fel = feats(el.images)
        torch.manual_seed(0)
        clip, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32")
        pil = [Image.fromarray(a) for a in images[tr]]
        img, _ = it.clip_embeddings(clip, pil, CONCEPTS[:1], preprocess=preprocess,
                                    tokenizer=open_clip.get_tokenizer("ViT-S-32"))
        _, txt = it.clip_embeddings(clip, pil[:1], CONCEPTS, preprocess=preprocess,
                                    tokenizer=open_clip.get_tokenizer("ViT-S-32"))
    finally:
        torch.set_num_threads(threads)
    classes = np.unique(ytr)
    info = iis.InfoDisent(len(classes), steps=30, batch_size=16, seed=0, n_threads=1)
    info.fit(maps, np.searchsorted(classes, ytr))
    top = np.sort(np.argsort(-info.coef_.sum(axis=0), kind="stable")[:16])
    libs = [iis.ConceptLibrary.prototype(fel, el.labels, n_concepts=12, seed=0),
            iis.ConceptLibrary.end2end(fel, ftr, ytr, n_concepts=6, steps=40, eval_every=10, patience=2, seed=0,
                                       n_threads=1),
            iis.ConceptLibrary.text(CONCEPTS, ftr, img, txt, top5_cutoff=-1.0, interpretability_cutoff=-1.0,
                                    steps=40, eval_every=10, seed=0, n_threads=1),
            iis.ConceptLibrary.from_infodisent(info).subset(top)]
    return {"ftr": ftr, "fev": fev, "ytr": ytr, "yev": yev, "maps": maps, "libs": libs, "n_elements": len(fel)}


def test_every_kind_equals_the_pipeline_by_hand(tmp_path, count, by_hand):
    df = iis.sweep(kinds_spec(tmp_path), progress=False)
    assert df["library_kind"].tolist() == ["prototype", "end2end", "text", "infodisent"]
    assert df["library"].tolist() == ["prototype:12/patches", "end2end:6/patches", "text:8", "infodisent:16"]
    assert (df["status"] == "ok").all(), df["error"].tolist()
    # train, eval, the elements shared by prototype and end2end, the spatial train maps; CLIP images and text
    assert sorted(count["extract"]) == ["layer3"] * 3 + ["spatial"] and sorted(count["clip"]) == ["images", "text"]
    # the maps pool to the features: InfoDisent's channels live in the space iis.score reads
    np.testing.assert_allclose(by_hand["maps"].mean(axis=1), by_hand["ftr"], rtol=1e-4, atol=1e-5)
    h = by_hand
    probe = iis.probe(h["ftr"], h["ytr"], h["fev"], h["yev"], n_threads=1)  # one for the four libraries
    for (_, row), lib in zip(df.iterrows(), h["libs"]):
        res = iis.score(h["ftr"], h["ytr"], h["fev"], h["yev"], lib, sparsities=[0, 0.5, 0.9], n_threads=1,
                        probe=probe)
        assert row["iis"] == res.iis and row["probe_accuracy"] == res.probe_accuracy == probe.accuracy
        assert row["iis_normalized"] == res.iis_normalized
        assert [row["arr@0"], row["arr@0.5"], row["arr@0.9"]] == list(res.arr)
        assert row["n_concepts"] == lib.n_concepts
    assert df["n_elements"].tolist() == [h["n_elements"], h["n_elements"], 0, 0]


def test_learned_options_are_in_the_keys(tmp_path, count):
    spec = kinds_spec(tmp_path)
    first = iis.sweep(spec, progress=False)
    assert len(count["extract"]) == 4 and len(count["clip"]) == 2 and len(count["cells"]) == 4
    # unchanged: every cell is done, nothing runs
    again = iis.sweep(spec, progress=False)
    pd.testing.assert_frame_equal(numeric(first), numeric(again), check_exact=True)
    assert len(count["cells"]) == 4
    # an option of each learned kind changes: only those cells run, from cached features
    spec["libraries"][1]["steps"] = 20
    spec["libraries"][2]["steps"] = 20
    spec["libraries"][3]["lr"] = 0.02
    df = iis.sweep(spec, progress=False)
    assert count["cells"][4:] == ["end2end", "text", "infodisent"]
    assert len(count["extract"]) == 4 and len(count["clip"]) == 2
    assert df["iis"].iloc[0] == first["iis"].iloc[0] and (df["iis"].iloc[1:] != first["iis"].iloc[1:]).any()
    # other concepts: only their CLIP text embeddings are computed; the images are cached
    spec["libraries"][2]["concepts"] = CONCEPTS[:6]
    df = iis.sweep(spec, progress=False)
    assert count["cells"][7:] == ["text"] and count["clip"][2:] == ["text"] and len(count["extract"]) == 4
    assert df["library"].iloc[2] == "text:6" and df["n_concepts"].iloc[2] == 6


def test_concepts_from_a_file_are_keyed_by_content(tmp_path, count):
    path = tmp_path / "concepts.txt"
    path.write_text("\n".join(CONCEPTS) + "\n")
    listed = base_spec(tmp_path, libraries=[dict(LIBRARIES[2])])
    from_file = base_spec(tmp_path, libraries=[dict(LIBRARIES[2], concepts_file=str(path))])
    del from_file["libraries"][0]["concepts"]
    a = iis.sweep(listed, progress=False)
    b = iis.sweep(dict(from_file, out=str(tmp_path / "b"), cache=str(tmp_path / "out" / "cache")), progress=False)
    assert len(count["clip"]) == 2  # the same concepts: the file's entries are the cached ones
    assert a["iis"].tolist() == b["iis"].tolist() and a["cell_id"].tolist() == b["cell_id"].tolist()


def test_clip_weights_from_a_file(tmp_path, count):
    """clip_weights loads a local open_clip checkpoint and its content keys the embeddings:
    the seeded random model's weights saved to a file are a new key with the same numbers."""
    spec = base_spec(tmp_path, libraries=[dict(LIBRARIES[2])])
    seeded = iis.sweep(spec, progress=False)
    torch.manual_seed(0)
    path = tmp_path / "clip.pt"
    torch.save(open_clip.create_model("ViT-S-32").state_dict(), path)
    spec = dict(spec, out=str(tmp_path / "b"), cache=str(tmp_path / "out" / "cache"),
                libraries=[dict(LIBRARIES[2], clip_weights=str(path))])
    df = iis.sweep(spec, progress=False)
    assert len(count["extract"]) == 2 and count["clip"] == ["images", "text"] * 2  # only CLIP again
    assert df["status"].tolist() == ["ok"] and df["iis"].tolist() == seeded["iis"].tolist()
    bad = base_spec(tmp_path, libraries=[dict(LIBRARIES[2], clip_weights=str(tmp_path / "absent.pt"))])
    with pytest.raises(ValueError, match="clip_weights .*absent.pt does not exist"):
        sw.load_spec(bad)


@pytest.mark.parametrize("library, message", [
    ({"kind": "lfcbm"}, "kind must be one of prototype, cluster, end2end, text, infodisent, got 'lfcbm'"),
    ({"kind": "text", "concepts": ["fur"], "clip_model": "ViT-S-32", "grid": 2},
     "kind = 'text' has unknown keys ['grid']"),
    ({"kind": "infodisent", "elements": "patches"}, "kind = 'infodisent' has unknown keys ['elements']"),
    ({"kind": "text", "concepts_file": "absent.txt", "clip_model": "ViT-S-32"}, "absent.txt does not exist"),
    ({"kind": "text", "concepts": ["fur"]}, "needs clip_model"),
    ({"kind": "text", "clip_model": "ViT-S-32"}, "needs concepts = [...] or concepts_file"),
    ({"kind": "text", "concepts": "fur", "clip_model": "ViT-S-32"}, "concepts must be a list of strings"),
    ({"kind": "text", "concepts": ["fur"], "clip_model": "ViT-S-32", "template": "a photo"}, "template must contain"),
    ({"kind": "end2end", "steps": 1.5}, "kind = 'end2end': steps must be an integer"),
    ({"kind": "end2end", "temperature": "hot"}, "kind = 'end2end': temperature must be a finite number"),
    ({"kind": "infodisent", "parametrization": "qr"}, "parametrization must be one of"),
])
def test_bad_library_options_are_named(tmp_path, library, message):
    with pytest.raises(ValueError) as err:
        sw.load_spec(base_spec(tmp_path, libraries=[library]))
    assert message in str(err.value)
