"""Checkpoint loading: every format on small real models built here, prefix handling, the trust rules, and the
one-line errors for damaged files and wrong architectures."""

from __future__ import annotations

import argparse
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from nc_probe.core.errors import InputError
from nc_probe.load.checkpoint import build_model, is_checkpoint, load_model, match_state_dict, sniff

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

MODELS_PY = '''
import torch
from torch import nn


def mlp(num_classes=3, in_dim=8, hidden=16):
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 12), nn.ReLU(),
                         nn.Linear(12, num_classes))


class SmallConv(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def conv(num_classes=4):
    return SmallConv(num_classes)
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Path of a models file and its module, so that ``--arch FILE.py:mlp`` works."""
    import importlib.util

    path = tmp_path_factory.mktemp("models") / "nets.py"
    path.write_text(MODELS_PY)
    spec = importlib.util.spec_from_file_location("nc_probe_test_nets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def _same_outputs(a: nn.Module, b, x) -> bool:
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b(x), atol=1e-6)


def _one_line(err: pytest.ExceptionInfo, path) -> str:
    text = str(err.value)
    assert "\n" not in text
    assert str(path) in text
    return text


# ------------------------------------------------------------------------------------------ state dicts
@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "model_state_dict", "net", "ddp", "compiled",
                                    "ddp+compiled", "legacy"])
def test_state_dict_layouts(tmp_path, models, layout):
    path_py, nets = models
    torch.manual_seed(0)
    m = nets.mlp()
    sd = m.state_dict()
    if "ddp" in layout:
        sd = {f"module.{k}": v for k, v in sd.items()}
    if "compiled" in layout:
        sd = {f"_orig_mod.{k}": v for k, v in sd.items()}
    obj = sd if layout in ("bare", "ddp", "compiled", "ddp+compiled", "legacy") else {layout: sd, "epoch": 7}
    f = tmp_path / "ckpt.pt"
    torch.save(obj, f, _use_new_zipfile_serialization=layout != "legacy")
    loaded = load_model(f, arch=f"{path_py}:mlp")
    assert loaded.format == "state_dict"
    assert _same_outputs(m, loaded.model, torch.randn(5, 8))
    if "ddp" in layout or "compiled" in layout:
        assert any("prefix" in n for n in loaded.notes)


def test_lightning_checkpoint(tmp_path, models):
    path_py, nets = models
    m = nets.mlp()
    state = {f"model.{k}": v for k, v in m.state_dict().items()}
    state["criterion.weight"] = torch.ones(3)  # other attributes of the LightningModule are ignored
    f = tmp_path / "epoch=3.ckpt"
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.4.0", "epoch": 3, "global_step": 30,
                "hyper_parameters": {"lr": 0.1}, "optimizer_states": [], "lr_schedulers": []}, f)
    loaded = load_model(f, arch=f"{path_py}:mlp")
    assert loaded.format == "lightning"
    assert _same_outputs(m, loaded.model, torch.randn(4, 8))


def test_strip_prefix_option(tmp_path, models):
    path_py, nets = models
    m = nets.mlp()
    state = {f"wrapper.inner.{k}": v for k, v in m.state_dict().items()}
    state["wrapper.other.weight"] = torch.ones(2)
    f = tmp_path / "w.pt"
    torch.save(state, f)
    with pytest.raises(InputError) as err:
        load_model(f, arch=f"{path_py}:mlp")
    assert "strip_prefix" in _one_line(err, f)
    loaded = load_model(f, arch=f"{path_py}:mlp", strip_prefix="wrapper.inner.")
    assert _same_outputs(m, loaded.model, torch.randn(3, 8))
    with pytest.raises(InputError, match="no key starts with"):
        load_model(f, arch=f"{path_py}:mlp", strip_prefix="nothing.")


def test_metadata_supplies_arch_and_data(tmp_path):
    from nc_probe.load import samples

    m = samples.digits_net(num_classes=10)
    f = tmp_path / "meta.pt"
    torch.save({"state_dict": m.state_dict(), "nc_probe": {"arch": "nc_probe.samples:digits_net",
                                                           "arch_kwargs": {"num_classes": 10},
                                                           "data": "sample:digits", "split": "test"}}, f)
    loaded = load_model(f)
    assert loaded.arch == "nc_probe.samples:digits_net" and loaded.metadata["split"] == "test"
    assert _same_outputs(m, loaded.model, torch.randn(3, 64))


def test_metadata_arch_outside_safe_namespaces_needs_consent(tmp_path, models):
    path_py, nets = models
    m = nets.mlp()
    f = tmp_path / "foreign.pt"
    torch.save({"state_dict": m.state_dict(), "nc_probe": {"arch": f"{path_py}:mlp"}}, f)
    with pytest.raises(InputError) as err:
        load_model(f)
    text = _one_line(err, f)
    assert f"'{path_py}:mlp'" in text and "same name as arch" in text and "trust_checkpoint=True" in text
    assert _same_outputs(m, load_model(f, arch=f"{path_py}:mlp").model, torch.randn(2, 8))
    assert _same_outputs(m, load_model(f, trust_checkpoint=True).model, torch.randn(2, 8))


def test_plain_data_objects_load_without_trust(tmp_path, models):
    """argparse.Namespace and numpy values are common in training checkpoints: read as inert placeholders."""
    path_py, nets = models
    m = nets.mlp()
    f = tmp_path / "ns.pt"
    torch.save({"state_dict": m.state_dict(), "args": argparse.Namespace(lr=0.1), "best": np.float64(0.9),
                "hist": np.ones(3)}, f)
    loaded = load_model(f, arch=f"{path_py}:mlp")
    assert _same_outputs(m, loaded.model, torch.randn(2, 8))
    assert any("ignored" in n for n in loaded.notes)


def test_safetensors_weights(tmp_path, models):
    from safetensors.torch import save_file

    path_py, nets = models
    m = nets.conv()
    f = tmp_path / "w.safetensors"
    save_file(m.state_dict(), str(f), metadata={"nc_probe": '{"arch_kwargs": {"num_classes": 4}}'})
    assert sniff(f) == "safetensors" and is_checkpoint(f)
    loaded = load_model(f, arch=f"{path_py}:conv")
    assert loaded.format == "safetensors"
    assert _same_outputs(m, loaded.model, torch.randn(2, 3, 8, 8))
    with pytest.raises(InputError) as err:
        load_model(f)
    assert "arch=" in _one_line(err, f)


# ------------------------------------------------------------------------------------------ programs
def test_torchscript_is_code_trusted_it_needs_no_arch(tmp_path, models):
    _, nets = models
    m = nets.conv().eval()
    x = torch.randn(2, 3, 8, 8)
    for kind, scripted in (("script", torch.jit.script(m)), ("trace", torch.jit.trace(m, x))):
        f = tmp_path / f"{kind}.pt"
        torch.jit.save(scripted, str(f), _extra_files={"nc_probe.json": '{"data": "sample:digits"}'})
        assert sniff(f) == "torchscript" and is_checkpoint(f)
        with pytest.raises(InputError) as err:
            load_model(f)
        assert "TorchScript archive" in _one_line(err, f) and "trust_checkpoint=True" in str(err.value)
        loaded = load_model(f, trust_checkpoint=True)
        assert loaded.format == "torchscript" and loaded.metadata == {"data": "sample:digits"}
        assert _same_outputs(m, loaded.model, x)


def test_export_program_is_code_trusted_it_needs_no_arch(tmp_path, models):
    _, nets = models
    m = nets.mlp().eval()
    x = torch.randn(4, 8)
    f = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(m, (x,)), str(f))
    assert sniff(f) == "export" and is_checkpoint(f)
    with pytest.raises(InputError) as err:
        load_model(f)
    assert "torch.export program" in _one_line(err, f) and "trust_checkpoint=True" in str(err.value)
    loaded = load_model(f, trust_checkpoint=True)
    assert loaded.format == "export"
    assert torch.allclose(loaded.model.module()(x), m(x), atol=1e-6)


def test_pickled_module_refused_unless_trusted(tmp_path, models):
    _, nets = models
    m = nets.mlp()
    for name, obj in (("full.pt", m), ("nested.pt", {"model": m, "epoch": 1})):
        f = tmp_path / name
        torch.save(obj, f)
        assert is_checkpoint(f)
        with pytest.raises(InputError) as err:
            load_model(f)
        text = _one_line(err, f)
        assert "trust_checkpoint=True" in text and "arbitrary code" in text
        loaded = load_model(f, trust_checkpoint=True)
        assert loaded.format == "pickled"
        assert _same_outputs(m, loaded.model, torch.randn(2, 8))


# ------------------------------------------------------------------------------------------ architectures
def test_fake_torchvision_and_missing_timm(tmp_path, monkeypatch, models):
    """torchvision:NAME builds with weights=None (never a download); absent packages give a clear error."""
    path_py, nets = models
    calls = []

    def get_model(name, weights="DEFAULT", **kw):
        calls.append((name, weights, kw))
        return nets.mlp(**kw)

    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(get_model=get_model, get_model_builder=lambda name: get_model)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv.models)
    m = nets.mlp(num_classes=5)
    f = tmp_path / "tv.pt"
    torch.save({"arch": "resnet18", "state_dict": m.state_dict()}, f)  # the PyTorch ImageNet example's layout
    loaded = load_model(f, arch_kwargs={"num_classes": 5, "pretrained": True})
    assert calls == [("resnet18", None, {"num_classes": 5})] * 2  # on the meta device, then for real
    assert _same_outputs(m, loaded.model, torch.randn(2, 8))
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(InputError) as err:
        load_model(f, arch="timm:resnet18")
    assert "pip install timm" in _one_line(err, f).lower()


def test_wrong_architecture_lists_keys(tmp_path, models):
    path_py, nets = models
    f = tmp_path / "conv.pt"
    torch.save(nets.conv().state_dict(), f)
    with pytest.raises(InputError) as err:
        load_model(f, arch=f"{path_py}:mlp")
    text = _one_line(err, f)
    assert "missing" in text and "unexpected" in text and "0.weight" in text and "features.0.weight" in text


def test_class_count_mismatch_suggests_num_classes(tmp_path, models):
    path_py, nets = models
    f = tmp_path / "c10.pt"
    torch.save(nets.mlp(num_classes=10).state_dict(), f)
    with pytest.raises(InputError) as err:
        load_model(f, arch=f"{path_py}:mlp")
    text = _one_line(err, f)
    assert "shape mismatch for '4.weight'" in text and '"num_classes": 10' in text
    assert load_model(f, arch=f"{path_py}:mlp", arch_kwargs='{"num_classes": 10}').model[4].out_features == 10


@pytest.mark.parametrize("arch,match", [(None, "no architecture"), ("nope", "no ':'"),
                                        ("nc_probe.nothing_here:f", "cannot import"),
                                        ("nc_probe.load.samples:no_such", "no attribute"),
                                        ("nc_probe.load.samples:DIGITS_PATH", "not callable"),
                                        ("nc_probe.load.samples:sample_checkpoints", "not a torch.nn.Module")])
def test_bad_arch_specs(tmp_path, models, arch, match):
    _, nets = models
    f = tmp_path / "m.pt"
    torch.save(nets.mlp().state_dict(), f)
    with pytest.raises(InputError, match=match) as err:
        load_model(f, arch=arch)
    _one_line(err, f)


def test_build_model_bad_kwargs():
    with pytest.raises(InputError, match="rejected its arguments"):
        build_model("nc_probe.samples:digits_net", {"wings": 2})


# ------------------------------------------------------------------------------------------ damaged files
def test_damaged_files_name_the_file(tmp_path, models):
    path_py, nets = models
    good = tmp_path / "good.pt"
    torch.save(nets.mlp().state_dict(), good)
    blob = good.read_bytes()
    cases = {
        "empty.pt": b"",
        "truncated.pt": blob[: len(blob) // 2],
        "garbage.pt": bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),
        "flipped.pt": blob[:200] + bytes(100) + blob[300:],
    }
    for name, data in cases.items():
        f = tmp_path / name
        f.write_bytes(data)
        with pytest.raises(InputError) as err:
            load_model(f, arch=f"{path_py}:mlp")
        _one_line(err, f)
    st = tmp_path / "cut.safetensors"
    from safetensors.torch import save_file

    save_file(nets.mlp().state_dict(), str(st))
    st.write_bytes(st.read_bytes()[:-50])
    with pytest.raises(InputError) as err:
        load_model(st, arch=f"{path_py}:mlp")
    _one_line(err, st)
    ts = tmp_path / "cut_ts.pt"
    torch.jit.save(torch.jit.script(nets.mlp()), str(ts))
    ts.write_bytes(ts.read_bytes()[:-300])
    with pytest.raises(InputError) as err:
        load_model(ts, trust_checkpoint=True)
    _one_line(err, ts)
    with pytest.raises(InputError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="folder"):
        load_model(tmp_path)


def test_feature_files_are_not_checkpoints(tmp_path):
    from nc_probe.extract.store import write_store

    H, y = np.random.default_rng(0).normal(size=(6, 3)), np.arange(6) % 2
    write_store(tmp_path / "f.safetensors", H, y)
    np.savez(tmp_path / "f.npz", H=H, y=y)
    torch.save({"features": torch.tensor(H), "labels": torch.tensor(y)}, tmp_path / "f.pt")
    for name in ("f.safetensors", "f.npz", "f.pt"):
        assert not is_checkpoint(tmp_path / name)
    torch.save({"fc.weight": torch.ones(2, 2)}, tmp_path / "sd.pt")
    assert is_checkpoint(tmp_path / "sd.pt")
    assert not is_checkpoint(tmp_path / "absent.pt")
    for name in ("f.safetensors", "f.pt"):
        with pytest.raises(InputError, match="feature file"):
            load_model(tmp_path / name, arch="nc_probe.samples:digits_net")


def test_match_state_dict_ignores_missing_bn_counters():
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    state = {k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    out, _ = match_state_dict(state, m.state_dict())
    assert set(out) == set(state)
