"""Feature taps and batched extraction, end to end through analyze_checkpoint: every checkpoint format analyzes on
small real models, reports do not depend on batch size or workers, and class-count mismatches are clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nc_probe.analysis.features import analyze_features, analyze_file
from nc_probe.analysis.inspection import inspect_checkpoint
from nc_probe.analysis.pipeline import analyze_checkpoint, extract_features
from nc_probe.core.devices import resolve_device
from nc_probe.core.errors import InputError
from nc_probe.extract.extraction import extract, fit_stats
from nc_probe.stats.class_stats import ClassStats
from nc_probe.taps import ExportTap, ModuleTap, ScriptTap, make_tap

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

ARCH = f"{Path(__file__)}:mlp"  # the file.py:factory form, independent of how pytest imports this file


def mlp(num_classes=4, in_dim=6, feat=5):
    return nn.Sequential(nn.Linear(in_dim, 16), nn.ReLU(), nn.Linear(16, feat), nn.ReLU(), nn.Linear(feat, num_classes))


class Conv(nn.Module):
    """A small conv net; the classifier is registered first but runs last."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.fc = nn.Linear(8, num_classes)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())

    def forward(self, x):
        return self.fc(self.body(x))


def conv(num_classes=3):
    return Conv(num_classes)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a busy 2-core machine: OpenMP's second thread only adds waiting (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def blobs():
    """60 samples of 4 separable classes (inputs of dimension 6) and an MLP trained a little on them."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 4
    x = 3 * torch.eye(6)[y] + 0.3 * torch.randn(60, 6, generator=g)
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return x, y, model.eval()


@pytest.fixture
def saved(tmp_path, blobs):
    """A state_dict checkpoint with metadata pointing at an arrays file."""
    x, y, model = blobs
    data = tmp_path / "blobs.npz"
    np.savez(data, x=x.numpy(), y=y.numpy())
    ckpt = tmp_path / "mlp.pt"
    torch.save({"state_dict": model.state_dict(), "nc_probe": {"data": str(data)}}, ckpt)
    return ckpt, data


def _penultimate(model, x):
    with torch.no_grad():
        return model[:-1](x)


def _close(a, b, rtol=1e-6):
    for key, va in a.metrics.items():
        vb = b.metrics[key]
        if va is None or vb is None:
            assert va is vb, key
        else:
            assert vb == pytest.approx(va, rel=rtol, abs=1e-9), key


# ------------------------------------------------------------------------------------------ taps
def test_default_tap_is_input_of_the_final_linear(blobs):
    x, _, model = blobs
    with make_tap(model) as tap:
        feats, logits = tap(x)
    assert not model[4]._forward_pre_hooks
    assert isinstance(tap, ModuleTap) and tap.layer == "4 (input)"
    torch.testing.assert_close(feats, _penultimate(model, x))
    torch.testing.assert_close(logits, model(x))  # the model's output, for its predictions in pass 2
    np.testing.assert_allclose(tap.W, model[4].weight.detach().double().numpy())
    np.testing.assert_allclose(tap.b, model[4].bias.detach().double().numpy())
    assert tap.num_outputs == 4


def test_final_linear_is_the_last_to_run_and_layer_outputs_are_copies():
    torch.manual_seed(0)
    model = conv().eval()
    x = torch.randn(5, 3, 8, 8)
    tap = make_tap(model)
    feats, _ = tap(x)
    assert tap.layer == "fc (input)"
    torch.testing.assert_close(feats, model.body(x))
    with make_tap(model, layer="body.1") as bn:  # the BatchNorm output, later changed in place by ReLU(inplace=True)
        feats, logits = bn(x)
    expected = model.body[1](model.body[0](x)).flatten(1)
    torch.testing.assert_close(feats, expected)
    assert bn.W is None and logits.shape == (5, 3)
    with pytest.raises(InputError, match="body.6"):
        make_tap(model, layer="body.7")


def test_no_linear_needs_layer():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(InputError, match="layer="):
        make_tap(model)
    feats, _ = make_tap(model, layer="0")(torch.randn(2, 3, 4, 4))
    assert feats.shape == (2, 32)


def test_torchscript_and_export_taps_match_eager(blobs, tmp_path):
    x, _, model = blobs
    expected = _penultimate(model, x)
    for scripted in (torch.jit.script(model), torch.jit.trace(model, x[:4])):
        tap = make_tap(scripted)
        assert isinstance(tap, ScriptTap) and tap.tap_module == "4"
        torch.testing.assert_close(tap(x)[0], expected)
        np.testing.assert_allclose(tap.W, model[4].weight.detach().double().numpy())
        torch.testing.assert_close(make_tap(scripted, layer="2")(x)[0], model[:3](x))
        with pytest.raises(InputError, match="top-level"):
            make_tap(scripted, layer="2.weight")
    dynamic = torch.export.export(model, (x[:8],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    static = torch.export.export(model, (x[:8],))
    for program in (dynamic, static):
        tap = make_tap(program)
        assert isinstance(tap, ExportTap) and tap.layer == "4 (input)"
        for n in (1, 7, 8, 20):  # the static program runs padded batches of 8
            torch.testing.assert_close(tap(x[:n])[0], expected[:n])
        torch.testing.assert_close(make_tap(program, layer="2")(x[:3])[0], model[:3](x[:3]))
    assert make_tap(static).static_batch == 8 and make_tap(dynamic).static_batch is None


def test_compiled_taps_copy_before_in_place_ops():
    """A BatchNorm output that a later ReLU(inplace=True) overwrites: every tap returns the BatchNorm's values."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(inplace=True), nn.Linear(6, 3)).eval()
    model[1].running_mean.fill_(0.5)
    x = torch.randn(5, 4)
    with torch.no_grad():
        expected = model[1](model[0](x))
    assert bool((expected < 0).any())
    for program in (model, torch.jit.script(model), torch.jit.trace(model, x), torch.export.export(model, (x,))):
        with make_tap(program, layer="1") as tap:
            torch.testing.assert_close(tap(x)[0], expected)
    conv_model = conv().eval()
    xc = torch.randn(2, 3, 8, 8)
    with make_tap(torch.export.export(conv_model, (xc,)), layer="body.1") as tap, torch.no_grad():
        torch.testing.assert_close(tap(xc)[0], conv_model.body[1](conv_model.body[0](xc)).flatten(1))


# ------------------------------------------------------------------------------------------ extraction
def test_extraction_stats_equal_a_fresh_analysis(saved, blobs):
    ckpt, _ = saved
    x, y, model = blobs
    report = analyze_checkpoint(ckpt, arch=ARCH, device="cpu", batch_size=16)
    W, b = model[4].weight.detach().numpy(), model[4].bias.detach().numpy()
    _close(report, analyze_features(_penultimate(model, x).numpy(), y.numpy(), W, b))
    inputs = report.inputs
    assert inputs["source"] == str(ckpt) and len(inputs["sha256"]) == 64 and inputs["layer"] == "4 (input)"
    assert inputs["data"].endswith("blobs.npz") and inputs["split"] is None and inputs["num_samples"] == 60
    assert report.metrics["acc_model"] > 0.9 and report.timings["extraction_samples_per_s"] > 0


def test_report_does_not_depend_on_batch_size_or_workers(tmp_path):
    from nc_probe.load import samples

    torch.manual_seed(0)
    model = samples.digits_net(num_classes=10)
    ckpt = tmp_path / "digits.pt"
    torch.save({"state_dict": model.state_dict(), "nc_probe": {"arch": "nc_probe.samples:digits_net",
                                                               "arch_kwargs": {"num_classes": 10},
                                                               "data": "sample:digits", "split": "test"}}, ckpt)
    base = analyze_checkpoint(ckpt, batch_size=256, device="cpu", limit=300)
    assert base.inputs["num_samples"] == 300
    for bs, workers in ((1, 0), (7, 0), (7, 2), (256, 2)):
        _close(base, analyze_checkpoint(ckpt, batch_size=bs, workers=workers, device="cpu", limit=300))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_every_format_analyzes(tmp_path, blobs, kind):
    """The same model saved in every format gives the same report (an MLP, and a conv net with BatchNorm)."""
    if kind == "mlp":
        x, y, model = blobs
    else:
        torch.manual_seed(1)
        model = conv(num_classes=3).eval()
        x, y = torch.randn(30, 3, 8, 8), torch.arange(30) % 3
    arch = f"{Path(__file__)}:{kind}"
    data = tmp_path / "data.npz"
    np.savez(data, x=x.numpy(), y=y.numpy())
    state = model.state_dict()
    reference = analyze_checkpoint(model, data=str(data))
    files = {}
    torch.save({"state_dict": state, "nc_probe": {"arch": arch}}, tmp_path / "sd.pt")
    files["state_dict"] = (tmp_path / "sd.pt", {"arch": arch})
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "pytorch-lightning_version": "2.4",
                "hyper_parameters": {}}, tmp_path / "l.ckpt")
    files["lightning"] = (tmp_path / "l.ckpt", {"arch": arch})
    torch.save({f"module._orig_mod.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    files["prefixed"] = (tmp_path / "ddp.pt", {"arch": arch})
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "w.safetensors"))
    files["safetensors"] = (tmp_path / "w.safetensors", {"arch": arch})
    torch.jit.save(torch.jit.script(model), str(tmp_path / "ts.pt"))
    files["torchscript"] = (tmp_path / "ts.pt", {"trust_checkpoint": True})  # programs are code
    torch.export.save(torch.export.export(model, (x[:5],)), str(tmp_path / "m.pt2"))  # fixed batch of 5
    files["export"] = (tmp_path / "m.pt2", {"trust_checkpoint": True})
    torch.save(model, tmp_path / "full.pt")
    files["pickled"] = (tmp_path / "full.pt", {"trust_checkpoint": True})
    for name, (path, kwargs) in files.items():
        report = analyze_checkpoint(path, data=str(data), batch_size=16, **kwargs)
        _close(reference, report, rtol=1e-5)
        assert report.inputs["source"] == str(path) and report.inputs["format"] == (
            name if name in ("lightning", "safetensors", "torchscript", "export", "pickled") else "state_dict")


def test_conv_net_on_an_image_array(tmp_path):
    torch.manual_seed(0)
    model = conv(num_classes=3).eval()
    x = torch.randn(24, 3, 8, 8)
    y = torch.arange(24) % 3
    report = analyze_checkpoint(model, data=(x, y), batch_size=5, device="cpu", amp="bf16")
    assert report.inputs["layer"] == "fc (input)" and report.inputs["dim"] == 8
    exact = analyze_checkpoint(model, data=(x, y), batch_size=5, device="cpu")
    assert report.metrics["nc1"] == pytest.approx(exact.metrics["nc1"], rel=0.1)
    layered = analyze_checkpoint(model, data=(x, y), layer="body.4", device="cpu")
    assert layered.inputs["dim"] == 8 * 4 * 4 and layered.metrics["nc3"] is None
    assert layered.metrics["acc_model"] == pytest.approx(exact.metrics["acc_model"])  # from the kept logits


def test_save_features_then_analyze_without_the_model(saved, tmp_path):
    ckpt, _ = saved
    out = tmp_path / "feats.safetensors"
    report = analyze_checkpoint(ckpt, arch=ARCH, save_features=out, progress=True)
    again = analyze_file(out)
    _close(report, again)
    assert again.inputs["metadata"]["source"] == str(ckpt) and again.inputs["layer"] == "4 (input)"
    assert again.inputs["metadata"]["sha256"] == report.inputs["sha256"]
    store = extract_features(ckpt, arch=ARCH, limit=8, device="cpu")
    assert store.num_samples == 8 and store.W.shape == (4, 5)


def test_data_classes_and_layer_without_classifier(saved):
    ckpt, _ = saved
    report = analyze_checkpoint(ckpt, arch=ARCH, data_classes=[1, 2], limit=20, classes=[1])
    assert report.inputs["class_ids"] == [1, 2] and report.inputs["num_samples"] == 20
    assert report.per_class["subspace_class_ids"] == [1]
    layered = analyze_checkpoint(ckpt, arch=ARCH, layer="1", data_classes=[0, 1])
    assert layered.inputs["dim"] == 16 and layered.inputs["num_labels"] == 4  # logits keep all 4 classes


# ------------------------------------------------------------------------------------------ errors
def test_label_and_class_count_mismatch_name_the_checkpoint(tmp_path, blobs):
    x, _, model = blobs
    ckpt = tmp_path / "four.pt"
    torch.save(model.state_dict(), ckpt)
    data = tmp_path / "six.npz"
    np.savez(data, x=x.numpy(), y=np.arange(60) % 6)
    with pytest.raises(InputError, match="label 5 but the classifier") as err:
        analyze_checkpoint(ckpt, arch=ARCH, data=str(data))
    assert str(ckpt) in str(err.value) and "\n" not in str(err.value)
    np.savez(data, x=x.numpy(), y=np.arange(60) % 4, class_names=["a", "b", "c", "d", "e"])
    with pytest.raises(InputError, match="5 classes but the classifier") as err:
        analyze_checkpoint(ckpt, arch=ARCH, data=str(data))
    assert str(ckpt) in str(err.value)
    with pytest.raises(InputError, match="no data") as err:
        analyze_checkpoint(ckpt, arch=ARCH)
    assert str(ckpt) in str(err.value)


def test_nan_features_and_bad_options(saved):
    ckpt, data = saved

    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            return self.fc(x * float("nan"))

    with pytest.raises(InputError, match="NaN"):
        analyze_checkpoint(Bad(), data=str(data))
    with pytest.raises(InputError, match="amp "):
        analyze_checkpoint(ckpt, arch=ARCH, amp="fp8")
    with pytest.raises(InputError, match="device "):
        resolve_device("tpu")
    state = torch.load(ckpt)["state_dict"]
    torch.save({"state_dict": state, "nc_probe": {"data": ARCH}}, ckpt)
    with pytest.raises(InputError, match="consent"):
        analyze_checkpoint(ckpt, arch=ARCH)


def test_fit_stats_drops_empty_top_classes():
    rng = np.random.default_rng(0)
    h, y = rng.normal(size=(40, 3)), np.arange(40) % 3
    big = ClassStats(5, 3, subspace_classes=[0, 2, 4]).update(torch.tensor(h), torch.tensor(y))
    small = fit_stats(big, 3)
    ref = ClassStats(3, 3, subspace_classes=[0, 2]).update(torch.tensor(h), torch.tensor(y))
    for name in ("count", "mean", "m2", "scatter", "zz", "zz_total"):
        torch.testing.assert_close(getattr(small, name), getattr(ref, name))
    assert fit_stats(big, 2) is None and fit_stats(big, 6) is None


def test_extract_without_declared_classes_leaves_stats_to_the_analysis(blobs):
    x, y, model = blobs
    with make_tap(model, layer="2") as tap:
        ext = extract(tap, [(x[:30], y[:30]), (x[30:], y[30:])])
    assert ext.stats is not None  # the logits tell C = 4
    with make_tap(nn.Sequential(nn.Flatten()), layer="0") as tap:  # no nn.Linear: no logits, C unknown
        plain = extract(tap, [(x, y)])
    assert plain.stats is None and plain.store.num_samples == 60


# ------------------------------------------------------------------------------------------ inspect
def test_inspect_rows(saved, tmp_path, blobs):
    ckpt, _ = saved
    x, _, model = blobs
    rows = inspect_checkpoint(ckpt, arch=ARCH)
    assert [r["name"] for r in rows] == ["", "0", "1", "2", "3", "4"]
    assert rows[0]["params"] == sum(p.numel() for p in model.parameters()) and rows[0]["output_shape"] == [4]
    assert [r["name"] for r in rows if r["default_tap"]] == ["4"] and rows[3]["output_shape"] == [5]
    torch.jit.save(torch.jit.script(model), str(tmp_path / "ts.pt"))
    rows = inspect_checkpoint(tmp_path / "ts.pt", input_shape=(6,), trust_checkpoint=True)
    assert [r["name"] for r in rows if r["default_tap"]] == ["4"] and rows[0]["output_shape"] == [4]
    torch.export.save(torch.export.export(model, (x[:5],)), str(tmp_path / "m.pt2"))
    rows = inspect_checkpoint(tmp_path / "m.pt2", trust_checkpoint=True)
    by = {r["name"]: r for r in rows}
    assert by["4"]["default_tap"] and by["2"]["output_shape"] == [5] and by["2"]["type"] == "Linear"
    assert by[""]["params"] == rows[0]["params"] == sum(p.numel() for p in model.parameters())
    conv_rows = inspect_checkpoint(conv())
    assert [r["name"] for r in conv_rows if r["default_tap"]] == ["fc"]
    assert {r["name"]: r["output_shape"] for r in conv_rows}["body.2"] == [8, 32, 32]


def test_a_float64_model_takes_float32_data_and_stays_float64():
    """Float inputs are cast to the model's own dtype (a float64 live model failed on its first layer with the
    float32 sample data); the model is left as it was, and the features are those of the float32 model to float32
    rounding."""
    from nc_probe.load import samples

    m32 = samples.digits_net()
    m64 = samples.digits_net().double()
    m64.load_state_dict({k: v.double() for k, v in m32.state_dict().items()})
    a = analyze_checkpoint(m32, data="sample:digits", device="cpu")
    b = analyze_checkpoint(m64, data="sample:digits", device="cpu")
    assert next(m64.parameters()).dtype == torch.float64
    assert b.metrics["nc1"] == pytest.approx(a.metrics["nc1"], rel=1e-5)
    assert b.metrics["acc_model"] == pytest.approx(a.metrics["acc_model"], abs=2 / a.inputs["num_samples"])
