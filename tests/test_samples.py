"""The shipped samples: digits data, the model factory, and the checkpoints ce.pt / ce_epoch*.pt / mcr2.pt.

The metric checks assert the shapes the papers describe, with thresholds set well inside what the shipped files
measure (values in comments, measured on the train split, tap = input of the final nn.Linear):

- cross-entropy in its terminal phase collapses each class to a point (Papyan et al. 2020);
- MCR^2 keeps each class a low-dimensional subspace, the subspaces near orthogonal (Yu et al. 2020).

The slow test retrains with ``scripts/train_samples.py`` (about 15-25 s on one CPU thread) and checks the retrained
files' metrics against the shipped ones within a tolerance that holds across CPUs; bit-identical retraining is
checked on one machine only, with a short schedule.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import nc_probe
from nc_probe import analyze_features
from nc_probe.analysis.pipeline import analyze_checkpoint
from nc_probe.load import samples

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "train_samples.py"
CE_EPOCHS = [1, 5, 20, 100, 300]  # snapshots; ce.pt is epoch 350
CE_FINAL_EPOCH = 350
ALL_SAMPLES = ["ce", "mcr2"] + [f"ce_epoch{e}" for e in CE_EPOCHS]
META_KEYS = {"arch", "arch_kwargs", "data", "split", "class_names", "loss", "epoch", "seed", "dataset"}
COMPARED = ("nc1", "nc1_cdnv", "nc2_etf_M", "nc3", "nc4", "acc_model", "acc_ncc", "coding_rate",
            "coding_rate_within", "rate_reduction", "angle_min_mean", "angle_min_min")


def _final_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def analyze_sample(path):
    """Reference report of a sample checkpoint, independent of the pipeline: the train-split features tapped at the
    input of the final nn.Linear with a forward pre-hook, ``W, b`` = that Linear, then ``analyze_features``."""
    model, meta = samples.load_sample_checkpoint(path)
    x, y = samples.digits_arrays(meta["split"])
    head = _final_linear(model)
    taps = []
    handle = head.register_forward_pre_hook(lambda mod, args: taps.append(args[0].detach()))
    with torch.no_grad():
        model(torch.from_numpy(x))
    handle.remove()
    return analyze_features(taps[0].numpy(), y, head.weight.detach().numpy(), head.bias.detach().numpy(),
                            class_names=meta["class_names"])


def analyze(path):
    """What a user gets from ``nc-probe analyze PATH`` with no other flag."""
    return analyze_checkpoint(path, device="cpu")


@functools.cache
def report(name: str):
    return analyze(samples.sample_path(name))


def mean_rank95(name: str) -> float:
    return float(np.mean(report(name).per_class["rank_energy95"]))


# ---------------------------------------------------------------------------------------------------------- data
def test_digits_npz_contents_and_split():
    with np.load(samples.DIGITS_PATH, allow_pickle=False) as z:
        x, y, tr, te = z["x"], z["y"], z["train_idx"], z["test_idx"]
    assert samples.DIGITS_PATH.stat().st_size < 1 << 20
    assert x.shape == (1797, 64) and x.dtype == np.uint8 and x.max() == 16 and x.min() == 0
    assert y.shape == (1797,) and np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert len(tr) == 1347 and len(te) == 450
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)
    assert np.intersect1d(tr, te).size == 0 and np.array_equal(np.union1d(tr, te), np.arange(1797))
    # stratified: each class contributes round(25%) of its rows to test
    counts = np.bincount(y)
    assert np.bincount(y[te], minlength=10).tolist() == [int(round(0.25 * n)) for n in counts]


@pytest.mark.parametrize("split,n", [("train", 1347), ("test", 450), ("all", 1797)])
def test_digits_arrays_and_dataset(split, n):
    x, y = samples.digits_arrays(split)
    assert x.shape == (n, 64) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))
    ds = samples.digits_dataset(split)
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == n
    xi, yi = ds[3]
    assert xi.shape == (64,) and xi.dtype == torch.float32 and int(yi) == y[3]
    assert ds.classes == [str(i) for i in range(10)]
    assert len(samples.sample_dataset("sample:digits", split)) == n


def test_digits_bad_split():
    with pytest.raises(ValueError, match="split"):
        samples.digits_arrays("val")


# --------------------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("normalize", [False, True])
def test_digits_net_head_is_last_linear(normalize):
    model = samples.digits_net(normalize=normalize).eval()
    assert isinstance(list(model.children())[-1], nn.Linear)
    assert _final_linear(model) is model.head is model[-1]
    x = torch.from_numpy(samples.digits_arrays("test")[0][:32])
    with torch.no_grad():
        h, logits = model.features(x), model(x)
    assert h.shape == (32, 64) and logits.shape == (32, 10)
    torch.testing.assert_close(model.head(h), logits)
    if normalize:
        torch.testing.assert_close(h.norm(dim=1), torch.ones(32))
    else:
        assert bool((h >= 0).all())  # ReLU features


# --------------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", ALL_SAMPLES)
def test_checkpoint_format(name):
    path = samples.sample_path(name)
    assert path.stat().st_size < 512 * 1024
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["nc_probe"]
    assert META_KEYS <= set(meta)
    assert meta["arch"] == "nc_probe.samples:digits_net" and meta["data"] == "sample:digits"
    assert meta["split"] == "train" and meta["class_names"] == [str(i) for i in range(10)]
    assert meta["dataset"] == "digits 8x8 (UCI via scikit-learn)"
    loss = "mcr2" if name == "mcr2" else "ce"
    assert meta["loss"] == loss
    assert meta["arch_kwargs"] == (samples.MCR2_KWARGS if loss == "mcr2" else samples.CE_KWARGS)
    if loss == "mcr2":
        assert meta["eps2"] == 0.5
    else:
        assert meta["epoch"] == (CE_FINAL_EPOCH if name == "ce" else int(name.removeprefix("ce_epoch")))
    model = samples.digits_net(**meta["arch_kwargs"])
    model.load_state_dict(ckpt["state_dict"])  # strict


def test_deep_sample_checkpoint():
    path = samples.sample_path("deep")
    assert path.stat().st_size < 512 * 1024
    meta = torch.load(path, map_location="cpu", weights_only=True)["nc_probe"]
    assert META_KEYS <= set(meta) and meta["arch"] == "nc_probe.samples:digits_deep_net"
    assert meta["arch_kwargs"] == samples.DEEP_KWARGS and meta["loss"] == "ce" and meta["data"] == "sample:digits"
    model, _ = samples.load_sample_checkpoint(path)  # strict load
    assert len(model.blocks) == samples.DEEP_KWARGS["depth"]
    x, y = samples.digits_arrays("test")
    with torch.no_grad():
        acc = (model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert acc >= 0.95  # measured: 0.976


def test_same_backbone_for_both_losses():
    ce, mcr2 = samples.CE_KWARGS, samples.MCR2_KWARGS
    assert {k: v for k, v in ce.items() if k != "normalize"} == {k: v for k, v in mcr2.items() if k != "normalize"}
    assert ce["normalize"] is False and mcr2["normalize"] is True


@pytest.mark.parametrize("name", ["ce", "mcr2"])
def test_samples_generalize(name):
    model, _ = samples.load_sample_checkpoint(samples.sample_path(name))
    x, y = samples.digits_arrays("test")
    with torch.no_grad():
        acc = (model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert acc >= 0.95  # measured: ce 0.989, mcr2 0.973


# ------------------------------------------------------------------------------------------------------- metrics
def test_ce_collapses_to_points():
    m, pc = report("ce").metrics, report("ce").per_class
    assert m["acc_model"] == 1.0  # terminal phase
    assert m["nc1"] < 0.02  # 0.0026
    assert m["nc1_cdnv"] < 0.02  # 0.0027
    assert m["nc2_etf_M"] < 0.25  # 0.136
    assert m["nc3"] < 0.1  # 0.018
    assert m["nc4"] < 0.005  # 0
    assert np.mean(pc["rank_energy95"]) <= 1.3 and max(pc["rank_energy95"]) <= 2  # all 1
    # the class means, seen as 1-D subspaces, sit at the ETF angle arccos(1/(C-1)) = 83.6 degrees
    assert abs(m["angle_min_mean"] - math.degrees(math.acos(1 / 9))) < 8  # 84.4


def test_mcr2_keeps_orthogonal_subspaces():
    m, pc = report("mcr2").metrics, report("mcr2").per_class
    assert np.mean(pc["rank_energy95"]) >= 4.5 and min(pc["rank_energy95"]) >= 3  # 6.4 (6..7)
    assert m["angle_min_mean"] >= 80  # 89.2
    assert m["angle_min_min"] >= 70  # 88.4
    assert m["nc3"] is not None and m["acc_model"] >= 0.99 and m["nc4"] <= 0.01  # the fitted head: 1.0, 0
    assert m["nc1_cdnv"] > 1.0  # 2.87: classes are spread out, not collapsed


def test_mcr2_vs_ce():
    ce, mcr2 = report("ce").metrics, report("mcr2").metrics
    assert mcr2["rate_reduction"] > 2 * ce["rate_reduction"]  # 25.15 vs 10.43
    assert mcr2["coding_rate"] > 2 * ce["coding_rate"]  # 35.1 vs 13.1
    assert mcr2["nc1_cdnv"] > 100 * ce["nc1_cdnv"]  # 2.87 vs 0.0027
    assert mcr2["nc1"] > 5 * ce["nc1"]  # 0.061 vs 0.0026
    assert mean_rank95("mcr2") >= mean_rank95("ce") + 3  # 6.4 vs 1.0


def test_ce_trajectory_collapses():
    names = [f"ce_epoch{e}" for e in CE_EPOCHS] + ["ce"]
    nc1 = [report(n).metrics["nc1"] for n in names]  # 0.34, 0.078, 0.048, 0.014, 0.0062, 0.0026
    assert all(a > b for a, b in zip(nc1, nc1[1:])), nc1
    assert nc1[-1] < nc1[0] / 50
    nc3 = [report(n).metrics["nc3"] for n in names]  # 0.45, 0.16, 0.12, 0.072, 0.022, 0.018
    assert all(a > b for a, b in zip(nc3, nc3[1:])), nc3
    ranks = [mean_rank95(n) for n in names]  # 3.9, 2.9, 2.1, 1.0, 1.0, 1.0
    assert all(a >= b for a, b in zip(ranks, ranks[1:])) and ranks[0] >= 2.5, ranks
    acc = [report(n).metrics["acc_model"] for n in names]  # 0.82 at epoch 1, then 1.0
    assert acc[0] < 0.95 and all(a == 1.0 for a in acc[1:]), acc


def test_pipeline_matches_reference_helper():
    """The pipeline's default (metadata data/split, tap = input of the final nn.Linear) equals a hand-made hook."""
    for name in ("ce", "mcr2"):
        got, want = report(name), analyze_sample(samples.sample_path(name))
        assert got.inputs["num_samples"] == 1347 and got.inputs["dim"] == 64 and got.inputs["split"] == "train"
        for key in COMPARED:
            assert got.metrics[key] == pytest.approx(want.metrics[key], rel=1e-6, abs=1e-9), (name, key)
        assert got.per_class["rank_energy95"] == want.per_class["rank_energy95"]


# --------------------------------------------------------------------------------------------------- retraining
#: How far a retrained sample's metrics may drift from the shipped ones on another CPU (or torch build): 350 epochs
#: amplify float rounding, and BLAS kernels differ between CPUs. Measured: AMD EPYC vs the Intel Xeon that trained
#: the shipped files, at most 2.7% (mcr2 angle_min_min), 1.7% (ce_epoch300 nc1_cdnv), 1.5% (ce nc2_etf_M).
RETRAIN_REL_TOL = 0.15


#: Metadata the training run measures (not its configuration): floats of training, different on another CPU (the
#: deep sample's train_acc read 0.9985 after retraining on an Intel Xeon, 1.0 on the AMD EPYC that trained it).
MEASURED_METADATA = {"train_acc": 0.01, "first_epoch_100pct_train": 3}


def _same_metadata(new_path, old_path) -> None:
    """A retrained checkpoint's metadata against the shipped one's: its configuration identical, what training
    measured within MEASURED_METADATA (absolute)."""
    new, old = (torch.load(p, weights_only=True)["nc_probe"] for p in (new_path, old_path))
    assert set(new) == set(old), new_path
    for key, value in old.items():
        if key in MEASURED_METADATA and value is not None and new[key] is not None:
            assert new[key] == pytest.approx(value, abs=MEASURED_METADATA[key]), (new_path, key)
        else:
            assert new[key] == value, (new_path, key)


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("nc_probe_train_samples", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_is_deterministic_on_this_machine(tmp_path, monkeypatch):
    """The same machine and torch build give bit-identical checkpoints (a short schedule of the real script)."""
    script = _load_script()
    monkeypatch.setitem(script.CE, "epochs", 6)
    monkeypatch.setitem(script.CE, "snapshots", (1, 5))
    monkeypatch.setitem(script.MCR2, "epochs", 15)
    monkeypatch.setitem(script.MCR2, "head_epochs", 10)
    monkeypatch.setitem(script.DEEP, "epochs", 4)
    threads = torch.get_num_threads()
    try:
        for run in ("a", "b"):
            script.train_all(tmp_path / run, threads=1, log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    names = sorted(p.name for p in (tmp_path / "a").glob("*.pt"))
    assert names == ["ce.pt", "ce_epoch1.pt", "ce_epoch5.pt", "deep.pt", "mcr2.pt"]
    for name in names:
        a, b = (torch.load(tmp_path / run / name, weights_only=True) for run in ("a", "b"))
        assert a["nc_probe"] == b["nc_probe"]
        for key, value in a["state_dict"].items():
            assert torch.equal(value, b["state_dict"][key]), (name, key)


@pytest.mark.slow
def test_retraining_reproduces_shipped_samples(tmp_path):
    """scripts/train_samples.py rebuilds every shipped checkpoint, on any CPU: the same metadata, every compared
    metric within RETRAIN_REL_TOL of the shipped file's, per-class ranks within 1, and the shapes the papers
    describe (the checks above, on the retrained files). Bit-identical files are promised on the same machine
    only (test_training_is_deterministic_on_this_machine)."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    retrained = {}
    for name in ALL_SAMPLES:
        new = retrained[name] = analyze(tmp_path / f"{name}.pt")
        old = report(name)
        for key in COMPARED:
            assert new.metrics[key] == pytest.approx(old.metrics[key], rel=RETRAIN_REL_TOL, abs=1e-6), (name, key)
        assert np.abs(np.subtract(new.per_class["rank_energy95"], old.per_class["rank_energy95"])).max() <= 1, name
        _same_metadata(tmp_path / f"{name}.pt", samples.sample_path(name))
    ce, mcr2 = retrained["ce"].metrics, retrained["mcr2"].metrics
    assert ce["nc1"] < 0.02 and ce["acc_model"] >= 0.99 and max(retrained["ce"].per_class["rank_energy95"]) <= 2
    assert mcr2["angle_min_mean"] >= 80 and np.mean(retrained["mcr2"].per_class["rank_energy95"]) >= 4.5
    assert mcr2["rate_reduction"] > 2 * ce["rate_reduction"]
    nc1 = [retrained[f"ce_epoch{e}"].metrics["nc1"] for e in CE_EPOCHS] + [ce["nc1"]]
    assert all(a > b for a, b in zip(nc1, nc1[1:])), nc1
    # the deep sample: its layer report's depth law within the same tolerance, and the same shape
    new, old = (nc_probe.analyze_layers(p, device="cpu") for p in (tmp_path / "deep.pt", samples.sample_path("deep")))
    _same_metadata(tmp_path / "deep.pt", samples.sample_path("deep"))
    assert new.laws["D_l"]["rho"] == pytest.approx(old.laws["D_l"]["rho"], rel=RETRAIN_REL_TOL)
    # ``a`` is the intercept of ln D_l: a log, so its tolerance is absolute (0.3 = a factor 1.35 on D_1). Measured:
    # a = 0.457 (AMD EPYC, shipped) vs 0.664 (Intel Xeon, retrained) with rho 0.372 vs 0.399 - the first layer's
    # D_l moves most between CPUs' BLAS; a relative tolerance on a number near 0 failed on Intel.
    assert new.laws["D_l"]["a"] == pytest.approx(old.laws["D_l"]["a"], abs=0.3)
    D = new.values("D_l")
    assert all(a > b for a, b in zip(D, D[1:])) and new.laws["D_l"]["r2"] > 0.9, D
