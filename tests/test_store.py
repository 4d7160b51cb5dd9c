"""FeatureStore files (write/open round trip, chunked reads, safetensors compatibility, npz/pt inputs), the input
errors (InputError naming the file), the memory budget, extracted features over the spill threshold kept on disk,
and the Report JSON round trip."""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import safetensors.numpy as stnp
import torch
from safetensors import safe_open

import nc_probe
from nc_probe import InputError, Report, StoreWriter, open_store, write_store
from nc_probe.stats.moment_plan import subspace_bytes

SPEC_PER_CLASS = ["class_ids", "n", "acc_model", "acc_ncc", "within_class_variance", "mean_norm", "zero_features",
                  "subspace_class_ids", "rank_energy95", "rank_energy99", "rank_effective", "rank_numerical",
                  "coding_rate_class"]


@pytest.fixture
def data(blobs):
    H, y, W, b = blobs(9, {0: 13, 1: 7, 3: 10}, 5)  # labels {0, 1, 3}: class 2 is empty
    return {"H": H.astype(np.float32), "y": y.astype(np.int32), "logits": (H @ W.T + b).astype(np.float32),
            "W": W.astype(np.float32), "b": b.astype(np.float32)}


def same_metrics(r1, r2, rel=1e-12):
    for key, v in r1.metrics.items():
        if v is None:
            assert r2.metrics[key] is None, key
        else:
            assert r2.metrics[key] == pytest.approx(v, rel=rel, abs=1e-14), key
    for key in SPEC_PER_CLASS:
        np.testing.assert_allclose(np.asarray(r2.per_class[key], dtype=float),
                                   np.asarray(r1.per_class[key], dtype=float), rtol=rel, atol=1e-14, err_msg=key)


# ---------------------------------------------------------------------------------------------- round trip
def test_write_open_round_trip(tmp_path, data):
    path = tmp_path / "feats.safetensors"
    names = ["cat", "dog", "émeu", "fox"]
    meta = {"layer": "fc", "epoch": 3, "nested": {"lr": 0.1, "tags": ["a", "b"]}}
    write_store(path, data["H"], data["y"], logits=data["logits"], W=data["W"], b=data["b"], class_names=names,
                metadata=meta)
    s = open_store(path)
    assert s.source == str(path)
    assert (s.num_samples, s.dim, s.has_logits) == (30, 5, True)
    feats = s.read("features")
    assert feats.dtype == np.float32
    np.testing.assert_array_equal(feats, data["H"])
    labels = s.labels()
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, data["y"])
    np.testing.assert_array_equal(s.read("logits"), data["logits"])
    np.testing.assert_array_equal(s.W, data["W"].astype(np.float64))
    np.testing.assert_array_equal(s.b, data["b"].astype(np.float64))
    assert s.class_names == names
    assert s.metadata == meta
    r = nc_probe.analyze_file(path)
    assert r.inputs["class_names"] == ["cat", "dog", "fox"]  # the names of the classes that have samples
    assert r.inputs["empty_classes"] == [2]
    assert r.inputs["layer"] == "fc"
    assert r.inputs["sha256"] is not None and len(r.inputs["sha256"]) == 64


def test_round_trip_float64_and_minimal(tmp_path):
    H = np.random.default_rng(0).normal(size=(9, 3))
    y = np.array([0, 1, 2] * 3)
    path = write_store(tmp_path / "min.st", H, y)
    s = open_store(path)
    assert s.read("features").dtype == np.float64
    np.testing.assert_array_equal(s.read("features"), H)
    assert (s.W, s.b, s.class_names, s.metadata, s.has_logits) == (None, None, None, {}, False)


@pytest.mark.parametrize("rows", [1, 3, 7, 30, 100])
def test_chunked_reads_equal_the_whole(tmp_path, data, rows):
    path = write_store(tmp_path / "f.safetensors", data["H"], data["y"], logits=data["logits"])
    s = open_store(path)
    chunks = list(s.iter_chunks(rows))
    assert [c.start for c in chunks] == list(range(0, 30, rows))
    np.testing.assert_array_equal(np.concatenate([c.features for c in chunks]), data["H"])
    np.testing.assert_array_equal(np.concatenate([c.labels for c in chunks]), data["y"])
    np.testing.assert_array_equal(np.concatenate([c.logits for c in chunks]), data["logits"])
    for a, b in [(0, 1), (5, 17), (29, 30), (3, 3)]:
        np.testing.assert_array_equal(s.read("features", a, b), data["H"][a:b])
        np.testing.assert_array_equal(s.labels_chunk(a, b), data["y"][a:b])


def test_file_is_plain_safetensors(tmp_path, data):
    path = write_store(tmp_path / "f.safetensors", data["H"], data["y"], logits=data["logits"], W=data["W"],
                       b=data["b"], class_names=["a", "b", "c", "d"], metadata={"k": 1})
    loaded = stnp.load_file(str(path))
    assert set(loaded) == {"features", "labels", "logits", "W", "b"}
    np.testing.assert_array_equal(loaded["features"], data["H"])
    np.testing.assert_array_equal(loaded["labels"], data["y"])
    np.testing.assert_array_equal(loaded["logits"], data["logits"])
    np.testing.assert_array_equal(loaded["W"], data["W"])
    np.testing.assert_array_equal(loaded["b"], data["b"])
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
    assert meta["format"] == "nc-probe-features"
    assert meta["class_names"] == '["a", "b", "c", "d"]'


def test_foreign_safetensors_file_with_aliases(tmp_path, data):
    """A file written by the safetensors library itself, with the H / y names, analyzes like the arrays."""
    path = tmp_path / "foreign.safetensors"
    stnp.save_file({"H": data["H"], "y": data["y"].astype(np.int64), "W": data["W"], "b": data["b"]}, str(path))
    same_metrics(nc_probe.analyze_features(data["H"], data["y"], data["W"], data["b"]), nc_probe.analyze_file(path))


def test_stream_writer_equals_write_store(tmp_path, data):
    w = StoreWriter(tmp_path / "streamed.safetensors", class_names=list("abcd"), metadata={"x": 1})
    for a in range(0, 30, 8):
        w.append(data["H"][a:a + 8], data["y"][a:a + 8], data["logits"][a:a + 8])
    w.close(W=data["W"], b=data["b"])
    write_store(tmp_path / "whole.safetensors", data["H"], data["y"], logits=data["logits"], W=data["W"],
                b=data["b"], class_names=list("abcd"), metadata={"x": 1})
    assert (tmp_path / "streamed.safetensors").read_bytes() == (tmp_path / "whole.safetensors").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["streamed.safetensors", "whole.safetensors"]  # no temp files left

    w = StoreWriter(tmp_path / "aborted.safetensors")
    w.append(data["H"], data["y"])
    w.abort()
    assert sorted(os.listdir(tmp_path)) == ["streamed.safetensors", "whole.safetensors"]


@pytest.mark.parametrize("names", [("H", "y"), ("features", "labels")])
@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_npz_and_pt_inputs(tmp_path, data, names, fmt):
    fnames, lname = names
    arrays = {fnames: data["H"], lname: data["y"].astype(np.int64), "W": data["W"], "b": data["b"]}
    path = tmp_path / f"feats.{fmt}"
    if fmt == "npz":
        np.savez(path, class_names=np.array(["a", "b", "c", "d"]), **arrays)
    else:
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()} | {"class_names": ["a", "b", "c", "d"]}, path)
    s = open_store(path)
    np.testing.assert_array_equal(s.read("features"), data["H"])
    np.testing.assert_array_equal(s.labels(), data["y"])
    assert s.class_names == ["a", "b", "c", "d"]
    r = nc_probe.analyze_file(path)
    same_metrics(nc_probe.analyze_features(data["H"], data["y"], data["W"], data["b"]), r)
    assert r.inputs["class_names"] == ["a", "b", "d"]


# ---------------------------------------------------------------------------------------------- input errors
def _st(path, arrays):
    stnp.save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def _npz(path, arrays):
    np.savez(path, **arrays)


def _pt(path, arrays):
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}, path)


def _truncate(path, keep):
    raw = path.read_bytes()
    path.write_bytes(raw[: keep if keep >= 0 else len(raw) + keep])


H0 = np.arange(24, dtype=np.float32).reshape(8, 3)
Y0 = np.array([0, 1, 0, 1, 2, 2, 0, 1], dtype=np.int64)


def _bad_files():
    """(id, file name, writer, what fails: 'open' or 'analyze', words the message must contain)."""
    nan = H0.copy()
    nan[5, 1] = np.nan
    inf = H0.copy()
    inf[2, 0] = -np.inf
    cases = [
        ("unknown-name-npz", "f.npz", lambda p: _npz(p, {"H": H0, "y": Y0, "extra": Y0}), "open", ["extra"]),
        ("unknown-name-st", "f.safetensors", lambda p: _st(p, {"H": H0, "y": Y0, "feats2": H0}), "open", ["feats2"]),
        ("missing-labels-npz", "f.npz", lambda p: _npz(p, {"H": H0}), "open", ["labels"]),
        ("missing-labels-pt", "f.pt", lambda p: _pt(p, {"features": H0}), "open", ["labels"]),
        ("missing-labels-st", "f.safetensors", lambda p: _st(p, {"features": H0}), "open", ["labels"]),
        ("missing-features-npz", "f.npz", lambda p: _npz(p, {"y": Y0}), "open", ["features"]),
        ("two-feature-arrays", "f.npz", lambda p: _npz(p, {"H": H0, "features": H0, "y": Y0}), "open", []),
        ("empty-st", "f.safetensors", lambda p: p.write_bytes(b""), "open", ["empty"]),
        ("empty-npz", "f.npz", lambda p: p.write_bytes(b""), "open", ["empty"]),
        ("empty-pt", "f.pt", lambda p: p.write_bytes(b""), "open", ["empty"]),
        ("length-mismatch-npz", "f.npz", lambda p: _npz(p, {"H": H0, "y": Y0[:-1]}), "open", ["8"]),
        ("length-mismatch-st", "f.safetensors", lambda p: write_store(p, H0, Y0[:-2]), "open", ["8"]),
        ("nan-features", "f.safetensors", lambda p: write_store(p, nan, Y0), "analyze", ["NaN", "row 5"]),
        ("inf-features-npz", "f.npz", lambda p: _npz(p, {"H": inf, "y": Y0}), "analyze", ["row 2"]),
        ("W-wrong-shape", "f.safetensors", lambda p: write_store(p, H0, Y0, W=np.ones((3, 4))), "open", ["W"]),
        ("W-wrong-shape-npz", "f.npz", lambda p: _npz(p, {"H": H0, "y": Y0, "W": np.ones(3)}), "open", ["W"]),
        ("W-too-few-rows", "f.npz", lambda p: _npz(p, {"H": H0, "y": Y0, "W": np.ones((2, 3))}), "analyze", ["W"]),
        ("b-wrong-shape", "f.npz", lambda p: _npz(p, {"H": H0, "y": Y0, "W": np.ones((3, 3)), "b": np.ones(2)}),
         "open", ["b"]),
        ("one-class", "f.safetensors", lambda p: write_store(p, H0, np.zeros(8, dtype=np.int64)), "analyze",
         ["class"]),
        ("one-class-of-three", "f.npz", lambda p: _npz(p, {"H": H0, "y": np.full(8, 2), "W": np.ones((3, 3))}),
         "analyze", ["class"]),
        ("negative-label", "f.npz", lambda p: _npz(p, {"H": H0, "y": Y0 - 1}), "analyze", ["negative"]),
        ("fractional-label", "f.npz", lambda p: _npz(p, {"H": H0, "y": Y0 + 0.5}), "analyze", ["whole"]),
        ("no-rows", "f.npz", lambda p: _npz(p, {"H": np.zeros((0, 3)), "y": np.zeros(0, dtype=int)}), "open", []),
        ("pt-not-a-dict", "f.pt", lambda p: torch.save(torch.zeros(3), p), "open", ["dict"]),
    ]
    for keep in (4, 20, -1, -40):
        cases.append((f"truncated-st-{keep}", "f.safetensors",
                      lambda p, k=keep: (write_store(p, H0, Y0, W=np.ones((3, 3))), _truncate(p, k)), "open",
                      ["truncated"]))
    for fmt, writer in (("npz", _npz), ("pt", _pt)):
        cases.append((f"truncated-{fmt}", f"f.{fmt}",
                      lambda p, w=writer: (w(p, {"H": H0, "y": Y0}), _truncate(p, -30)), "open", ["truncated"]))
    return cases


@pytest.mark.parametrize("case", _bad_files(), ids=lambda c: c[0])
def test_bad_input_raises_input_error_naming_the_file(tmp_path, case):
    _, name, write, stage, words = case
    path = tmp_path / name
    write(path)
    with pytest.raises(InputError) as err:
        if stage == "open":
            open_store(path)
        else:
            open_store(path)  # opening is fine, the analysis finds the problem
            nc_probe.analyze_file(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "\n" not in msg
    for word in words:
        assert word.lower() in msg.lower(), (word, msg)


def test_missing_file_and_folder(tmp_path):
    for path in (tmp_path / "nope.safetensors", tmp_path):
        with pytest.raises(InputError, match=re.escape(str(path))):
            open_store(path)


def test_bad_settings_raise_input_error(data):
    for kw in ({"eps2": 0.0}, {"rank_tol": 1.0}, {"subspace_dim": 6}, {"subspace_dim": 0}):
        with pytest.raises(InputError):
            nc_probe.analyze_features(data["H"], data["y"], **kw)


# ---------------------------------------------------------------------------------------------- memory budget
def test_a_small_memory_budget_costs_passes_not_metrics(blobs):
    """Subspace statistics that do not fit the budget as d x d moments are gathered in groups (rows of classes
    with n_c < d, moments of the others), one more pass each: the same numbers, nothing skipped."""
    H, y, W, b = blobs(2, {0: 20, 1: 30, 2: 15, 3: 25}, 6)
    full = nc_probe.analyze_features(H, y, W, b)
    for budget in (4 * subspace_bytes(1, 6), 4 * 8 * 6 * 30, 8 * subspace_bytes(1, 6)):
        r = nc_probe.analyze_features(H, y, W, b, memory_budget=budget)
        assert r.per_class["subspace_class_ids"] == [0, 1, 2, 3]
        for key, value in full.metrics.items():  # None: not computed by default (acc_nearest_subspace)
            assert r.metrics[key] == (None if value is None else pytest.approx(value, rel=1e-10, abs=1e-12)), \
                (budget, key)
        for key in ("rank_energy95", "rank_energy99", "rank_numerical", "basis_dim"):
            assert r.per_class[key] == full.per_class[key], key
        for key in ("rank_effective", "coding_rate_class"):
            np.testing.assert_allclose(r.per_class[key], full.per_class[key], rtol=1e-10, err_msg=key)
        np.testing.assert_allclose(r.angles["angle_min"], full.angles["angle_min"], rtol=1e-9, atol=1e-9)
    with pytest.raises(InputError, match="memory_budget") as err:
        nc_probe.analyze_features(H, y, W, b, memory_budget=100)  # not even one class's statistics fit
    assert "Raise memory_budget to at least 1.12 KiB" in str(err.value)


def test_features_over_the_spill_threshold_go_to_disk_and_give_the_same_report(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    threshold = 340_000  # sample:ce, 1347 x 64 float32 features (345 kB) and their labels do not fit
    spilled = nc_probe.analyze_checkpoint("sample:ce", device="cpu", spill_threshold=threshold)
    held = nc_probe.analyze_checkpoint("sample:ce", device="cpu")
    assert any("kept on disk" in w for w in spilled.warnings)
    assert not any("kept on disk" in w for w in held.warnings)
    same_metrics(held, spilled, rel=1e-12)
    np.testing.assert_allclose(spilled.angles["angle_min"], held.angles["angle_min"], rtol=1e-12, atol=1e-12)
    assert list(tmp_path.iterdir()) == []  # the spilled file is removed after the analysis


def test_chosen_classes(blobs):
    H, y, W, b = blobs(2, {0: 20, 1: 30, 2: 15, 3: 25}, 6)
    full = nc_probe.analyze_features(H, y, W, b)
    r = nc_probe.analyze_features(H, y, W, b, classes=[0, 1])
    assert r.per_class["subspace_class_ids"] == [0, 1]
    for key in ("rank_energy95", "rank_energy99", "rank_numerical", "rank_effective", "coding_rate_class"):
        np.testing.assert_allclose(r.per_class[key], full.per_class[key][:2], rtol=1e-12, err_msg=key)
    np.testing.assert_allclose(r.angles["angle_min"], np.array(full.angles["angle_min"])[:2, :2], rtol=1e-12)
    assert r.metrics["angle_min_min"] == pytest.approx(full.angles["angle_min"][0][1], rel=1e-12)
    assert r.metrics["coding_rate"] == pytest.approx(full.metrics["coding_rate"], rel=1e-12)
    assert r.metrics["coding_rate_within"] is None and r.metrics["rate_reduction"] is None
    assert any("need every class" in w for w in r.warnings)
    assert r.metrics["nc1"] == pytest.approx(full.metrics["nc1"], rel=1e-12)
    with pytest.raises(InputError):
        nc_probe.analyze_features(H, y, classes=[0, 4])


# ---------------------------------------------------------------------------------------------- report JSON
def test_report_json_round_trip(tmp_path, blobs):
    H, y, W, b = blobs(4, {0: 12, 2: 20, 3: 9}, 7)
    for r in (nc_probe.analyze_features(H, y, W, b, class_names=list("abcd")), nc_probe.analyze_features(H, y),
              nc_probe.analyze_features(H, y, memory_budget=4 * 8 * 7 * 20)):
        back = Report.from_json(r.to_json())
        assert back.to_dict() == r.to_dict()
        assert Report.load(r.save(tmp_path / "r.json")).to_dict() == r.to_dict()
        assert back.to_json() == r.to_json()


def test_report_json_non_finite_becomes_null():
    """Two classes with exactly equal means: nc1 and nc1_cdnv are inf, nc2_etf_M is NaN; JSON has no inf/NaN, so
    they are written as null and read back as None (absent), the other values survive."""
    H = np.array([[1.0, 2.0], [3.0, 5.0], [3.0, 5.0], [1.0, 2.0]])
    y = np.array([0, 0, 1, 1])
    r = nc_probe.analyze_features(H, y)
    assert math.isinf(r.metrics["nc1"]) and math.isinf(r.metrics["nc1_cdnv"])
    back = Report.from_json(r.to_json())
    for key, v in r.metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            assert back.metrics[key] is None, key
        else:
            assert back.metrics[key] == v, key


def test_report_load_rejects_other_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"a": 1}')
    with pytest.raises(InputError, match=re.escape(str(p))):
        Report.load(p)
    p.write_text("{not json")
    with pytest.raises(InputError, match=re.escape(str(p))):
        Report.load(p)


@pytest.mark.parametrize("row, value", [(0, np.nan), (37, np.inf), (130, -np.inf), (199, np.nan), (150, np.nan)])
@pytest.mark.parametrize("min_class_count", [1, 30])
def test_first_non_finite_feature_is_named_by_row(tmp_path, row, value, min_class_count):
    """Pass 1 finds NaN and Inf from its statistics instead of scanning every chunk: the error still names the
    first bad row, in any chunk, in a class of one row (row 150), and in a class left out for having few rows
    (min_class_count=30 drops class 4: its rows are scanned, because pass 2 still reads them)."""
    rng = np.random.default_rng(row)
    y = np.repeat([0, 1, 2, 3], 50)
    y[150] = 4
    H = rng.standard_normal((200, 12)) + 5.0
    H[row, 3] = value
    H[row + 1:, 5] = np.where(rng.random(199 - row) < 0.05, np.nan, 0.0) if row < 199 else H[row + 1:, 5]
    path = tmp_path / "f.npz"
    np.savez(path, H=H, y=y)
    with pytest.raises(InputError, match=rf"NaN or Inf \(first at row {row}\)"):
        nc_probe.analyze_file(str(path), chunk_rows=64, min_class_count=min_class_count)


def test_finite_rows_whose_squares_overflow_are_an_input_error():
    """Rows of 1e200 make the statistics infinite though every entry is finite: one InputError saying so (it was a
    LinAlgError traceback from the eigensolver), not a NaN error naming a row."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    H = rng.standard_normal((120, 6))
    H[50] = 1e200
    with pytest.raises(InputError, match=r"too large for float64 statistics: squares of entries up to 1e\+200"):
        nc_probe.analyze_features(H, y, chunk_rows=32)
