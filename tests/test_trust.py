"""Nothing a file says may run code without --trust-checkpoint.

A table of hostile checkpoints (metadata naming code through every path a name could take: attribute walks under
nc_probe, dotted module paths, builtins, os, subprocess, a .py file, registry names that are not registry names, and
data specs) is run through every command that reads a checkpoint. Each must exit 2 with one line naming the code it
asked for, and a marker file that the code would create must stay absent. Positive controls show the marker does
appear when the user trusts the file, so the check can fail.
"""

from __future__ import annotations

import os
import pickle
import sys
import types

import pytest
import torch
from typer.testing import CliRunner

from nc_probe.cli.app import app
from nc_probe.core.errors import InputError
from nc_probe.load import samples
from nc_probe.load.checkpoint import load_model
from nc_probe.load.trust import check_file_arch, is_allowlisted_arch, is_allowlisted_data

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
runner = CliRunner()

MARKER = "PWNED"
EVIL_PY = f"open({MARKER!r}, 'w').close()\n\ndef f(**kw):\n    open({MARKER!r}, 'w').close()\n"


def hostile_archs(marker: str) -> dict:
    """arch string -> keyword arguments that would create ``marker`` if the arch were imported and called."""
    shell = {"command": f"touch {marker}"}
    return {
        "nc_probe.load.checkpoint:os.system": shell,  # the reported hole: an attribute walk under a trusted prefix
        "nc_probe.load.samples:torch.os.system": shell,
        "nc_probe.load.samples:np.os.system": shell,
        "nc_probe:loading.os.system": shell,
        "nc_probe.load.checkpoint.os:system": shell,  # a dotted module path under a trusted prefix
        "nc_probe.load.samples.os:system": shell,
        "os:system": shell,
        "posix:system": shell,
        "subprocess:call": {"args": f"touch {marker}", "shell": True},
        "builtins:open": {"file": marker, "mode": "w"},
        "builtins:exec": {"source": f"open({marker!r}, 'w')"},
        "evil.py:f": {},  # importing the file alone would create the marker
        "torchvision:os.system": shell,  # registry names are looked up, never walked
        "timm:os.system": shell,
        "timm:hf-hub:evil/net": {},
    }


HOSTILE_DATA = ["nc_probe.data.datasets:os.getcwd", "evil.py:f", "builtins:open", "os:getcwd",
                "torchvision:os:/tmp"]


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working folder with evil.py, and fake torchvision/timm whose registries know one model and whose modules
    carry ``os`` as an attribute (as the real ones do), so registry look-ups are tested without the packages."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.py").write_text(EVIL_PY)
    built = []

    def tv_get_model(name, weights=None, **kw):
        built.append(("torchvision", name))
        return samples.digits_net()

    def tv_builder(name):
        if name != "resnet18":
            raise ValueError(f"Unknown model {name}")
        return tv_get_model

    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(get_model=tv_get_model, get_model_builder=tv_builder, os=os)
    timm = types.ModuleType("timm")
    timm.is_model = lambda name: name == "resnet18"
    timm.create_model = lambda name, pretrained=False, **kw: built.append(("timm", name)) or samples.digits_net()
    timm.os = os
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    tv.datasets = types.SimpleNamespace(os=os, __all__=[])
    monkeypatch.setitem(sys.modules, "torchvision.models", tv.models)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tv.datasets)
    monkeypatch.setitem(sys.modules, "timm", timm)
    return tmp_path, built


def _checkpoint(path, **meta):
    state = samples.digits_net().state_dict()
    torch.save({"state_dict": state, "nc_probe": {"data": "sample:digits", "split": "train", **meta}}, path)
    return path


COMMANDS = {
    "analyze": lambda f: ["analyze", str(f)],
    "inspect": lambda f: ["inspect", str(f)],
    "gate": lambda f: ["gate", str(f), "--rule", "nc1<=1"],
    "baseline": lambda f: ["baseline", str(f), "-o", "base.json"],
    "compare": lambda f: ["compare", f"a={f}", "b=sample:ce"],
    "layers": lambda f: ["layers", str(f)],
    "compare-layers": lambda f: ["compare", f"a={f}", "b=sample:ce", "--layers", "@blocks"],
    "trajectory": lambda f: ["trajectory", str(f), "sample:ce"],
    "two-splits": lambda f: ["analyze", str(f), "--split", "train,test"],
}


def _refused(result, code: str) -> str:
    """One line, exit 2, naming the code; a name in registry form is looked up there and is simply not found."""
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert len(text.splitlines()) == 1, text
    assert "Traceback" not in text
    scheme, _, name = code.partition(":")
    if scheme in ("torchvision", "timm") and ":" not in name:
        assert f"{scheme} has no model {name!r}" in text, text
    else:
        assert code in text and "--trust-checkpoint" in text, text
    return text


@pytest.mark.parametrize("command", list(COMMANDS))
def test_hostile_architectures_run_nothing(sandbox, command):
    tmp, built = sandbox
    for i, (arch, kwargs) in enumerate(hostile_archs(MARKER).items()):
        f = _checkpoint(tmp / f"h{i}.pt", arch=arch, arch_kwargs=kwargs)
        _refused(runner.invoke(app, COMMANDS[command](f)), arch)
        assert not (tmp / MARKER).exists(), (arch, command)
    assert built == []
    assert not (tmp / "base.json").exists()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_hostile_data_specs_run_nothing(sandbox, command):
    tmp, _ = sandbox
    for i, spec in enumerate(HOSTILE_DATA):
        f = _checkpoint(tmp / f"d{i}.pt", arch="nc_probe.samples:digits_net", data=spec)
        result = runner.invoke(app, COMMANDS[command](f))
        if command == "inspect":  # inspect runs no data: it succeeds without touching the spec
            assert result.exit_code == 0, result.output
        else:  # torchvision:CLASS:ROOT too: some dataset classes unpickle files under ROOT
            _refused(result, spec)
        assert not (tmp / MARKER).exists(), (spec, command)


def test_top_level_arch_string_and_safetensors_and_torchscript_metadata(sandbox):
    tmp, _ = sandbox
    state = samples.digits_net().state_dict()
    torch.save({"arch": "os:system", "state_dict": state}, tmp / "imagenet_example.pt")
    _refused(runner.invoke(app, ["analyze", "imagenet_example.pt", "--data", "sample:digits"]), "os:system")

    import json

    from safetensors.torch import save_file

    save_file(state, str(tmp / "w.safetensors"),
              metadata={"nc_probe": json.dumps({"arch": "nc_probe.load.checkpoint:os.system",
                                                "arch_kwargs": {"command": f"touch {MARKER}"}})})
    _refused(runner.invoke(app, ["analyze", "w.safetensors", "--data", "sample:digits"]),
             "nc_probe.load.checkpoint:os.system")

    scripted = torch.jit.script(samples.digits_net().eval())
    torch.jit.save(scripted, str(tmp / "ts.pt"), _extra_files={"nc_probe.json": json.dumps({"data": "evil.py:f"})})
    _refused(runner.invoke(app, ["analyze", "ts.pt"]), "TorchScript archive")  # code itself: refused before metadata
    assert not (tmp / MARKER).exists()


def test_positive_controls_consent_runs_the_named_code(sandbox):
    """The same hostile files run their code once the user consents: the marker check above can fail."""
    tmp, built = sandbox
    f = _checkpoint(tmp / "open.pt", arch="builtins:open", arch_kwargs={"file": MARKER, "mode": "w"})
    result = runner.invoke(app, ["analyze", str(f), "--trust-checkpoint"])
    assert result.exit_code == 2 and "not a torch.nn.Module" in result.output  # open() ran, returned a file
    assert (tmp / MARKER).exists()
    os.remove(tmp / MARKER)
    f = _checkpoint(tmp / "file.pt", arch="evil.py:f")
    runner.invoke(app, ["analyze", str(f), "--arch", "evil.py:f"])  # typing the same --arch is consent
    assert (tmp / MARKER).exists()


def test_allowlisted_names_still_load_without_flags(sandbox):
    tmp, built = sandbox
    for arch in ("torchvision:resnet18", "timm:resnet18"):
        f = _checkpoint(tmp / "ok.pt", arch=arch, arch_kwargs={"num_classes": 10, "pretrained": True})
        assert load_model(f).arch == arch
    assert built == [("torchvision", "resnet18")] * 2 + [("timm", "resnet18")] * 2  # on the meta device, then real
    f = _checkpoint(tmp / "sample.pt", arch="nc_probe.samples:digits_net", arch_kwargs=samples.CE_KWARGS)
    assert load_model(f).arch == "nc_probe.samples:digits_net"
    result = runner.invoke(app, ["analyze", str(f), "-q"])
    assert result.exit_code == 0, result.output


def test_allowlist_predicates():
    assert is_allowlisted_arch("nc_probe.samples:digits_net")
    assert is_allowlisted_arch("torchvision:resnet18") and is_allowlisted_arch("timm:vit_base_patch16_224.augreg_in21k")
    for bad in ("nc_probe.samples:digits_net.__globals__", "nc_probe.load.samples:os.system", "timm:hf-hub:a/b",
                "torchvision:../x", "torchvision:", "mypkg:net", 3, None):
        assert not is_allowlisted_arch(bad), bad
    assert is_allowlisted_data("sample:digits")
    assert is_allowlisted_data("data/cifar.npz")  # a path: opening it runs nothing (missing -> "no such file")
    for bad in ("mypkg.data:val", "evil.py:f", "torchvision:os.path:/x", "torchvision:CIFAR10:/data", "", 7):
        assert not is_allowlisted_data(bad), bad
    with pytest.raises(InputError, match="not plain values"):
        check_file_arch("timm:resnet18", {"act_layer": object()}, path="x.pt")


# ------------------------------------------------------------------------------------------------ pickles
class _Shell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_raw_and_legacy_pickles_are_refused_by_what_they_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("raw.pkl", "wb") as f:
        pickle.dump({"state_dict": _Shell(f"touch {MARKER}")}, f)
    model = samples.digits_net()
    torch.save(model, "legacy_module.pt", _use_new_zipfile_serialization=False)
    torch.save(model.state_dict(), "legacy_state.pt", _use_new_zipfile_serialization=False)
    for name, imports in (("raw.pkl", "system"), ("legacy_module.pt", "DigitsNet")):
        result = runner.invoke(app, ["analyze", name, "--arch", "nc_probe.samples:digits_net"])
        text = _refused(result, imports)
        assert "would run arbitrary code when loaded" in text and "corrupt" not in text, text
        assert ("raw Python pickle" in text) == (name == "raw.pkl"), text
    assert not (tmp_path / MARKER).exists()
    # a legacy file of plain tensors is data and loads without trust
    assert load_model("legacy_state.pt", arch="nc_probe.samples:digits_net").format == "state_dict"
    # with consent the raw pickle is unpickled, and its code runs
    with pytest.raises(InputError):
        load_model("raw.pkl", arch="nc_probe.samples:digits_net", trust_checkpoint=True)
    assert (tmp_path / MARKER).exists()


def test_torch_errors_are_not_cut_mid_word(tmp_path):
    from nc_probe.core.text import first_line

    text = "Invalid magic number; corrupt file? " + "word " * 60
    cut = first_line(text, 120)
    assert cut.endswith(" ...") and cut[:-4].split()[-1] in ("word", "file?")
    assert len(cut) <= 124
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02" + b"\x00" * 64)
    with pytest.raises(InputError) as err:
        load_model(tmp_path / "garbage.pt", arch="nc_probe.samples:digits_net")
    assert "\n" not in str(err.value)
