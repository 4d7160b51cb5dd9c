"""Models that are code, and metadata that asks too much: nothing runs and nothing large is built without consent.

TorchScript archives run their own code when loaded (``__setstate__``) and when called (``forward``); a
``torch.export`` program may unpickle objects when loaded. Hostile ones, made here, go through every command that
reads a model, under their own names and renamed: each must exit 2 with one line and no traceback, and the marker
file their code would create must stay absent. Positive controls show that the same files do create the marker once
the user trusts them, so the check can fail. Then: the sniffing paths (``is_checkpoint``, ``input_kind``, a
trajectory's folder) never call the program loaders; safetensors metadata of the wrong types; architecture keyword
arguments from a file that would build a huge model; and file text quoted in the messages.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zipfile

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from nc_probe.analysis.inputs import input_kind
from nc_probe.analysis.trajectory import expand_inputs
from nc_probe.cli.app import app
from nc_probe.core.errors import InputError
from nc_probe.load import samples
from nc_probe.load.checkpoint import is_checkpoint, load_model, sniff

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
runner = CliRunner()


# ---------------------------------------------------------------------------------------------- hostile programs
class SetstateWrites(nn.Module):
    """A TorchScript module whose ``__setstate__``, run by torch.jit.load, creates the file ``path``."""

    def __init__(self, path: str):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.path = path
        self.mapped = torch.zeros(1)

    def forward(self, x):
        return self.fc(x)

    @torch.jit.export
    def __getstate__(self):
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]):
        self.path = state[0]
        self.training = state[1]
        self.mapped = torch.from_file(self.path, shared=True, size=1)  # creates the file


class ForwardWrites(nn.Module):
    """A TorchScript module whose forward creates the file ``path``."""

    def __init__(self, path: str):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.path = path

    def forward(self, x):
        mapped = torch.from_file(self.path, shared=True, size=1)
        return self.fc(x) + mapped.sum() * 0  # used, so that the call is not dropped as dead code


class Shell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def hostile_export(path, marker) -> None:
    """A torch.export program whose first weight is marked ``use_pickle`` and is a pickle that runs a shell
    command: torch.export.load unpickles it with weights_only=False."""
    program = torch.export.export(samples.digits_net().eval(), (torch.randn(4, 64),))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        items = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in items if n.endswith("model_weights_config.json"))
    config = json.loads(items[name])
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    items[name] = json.dumps(config).encode()
    payload = io.BytesIO()
    torch.save(Shell(f"touch {marker}"), payload)
    items[name.rsplit("/", 1)[0] + "/" + first["path_name"]] = payload.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for n, data in items.items():
            z.writestr(n, data)


def make_hostile(folder) -> dict:
    """name -> (file, marker its code creates); the same programs also renamed to other checkpoint suffixes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, cls in (("setstate", SetstateWrites), ("forward", ForwardWrites)):
        marker = folder / f"PWNED-{kind}"
        torch.jit.save(torch.jit.script(cls(str(marker)).eval()), str(folder / f"{kind}.pt"))
        files[f"ts-{kind}.pt"] = (folder / f"{kind}.pt", marker)
    hostile_export(folder / "program.pt2", folder / "PWNED-export")
    files["export.pt2"] = (folder / "program.pt2", folder / "PWNED-export")
    for new, old in (("ts-setstate.ckpt", "ts-setstate.pt"), ("export.ckpt", "export.pt2"), ("export.pt", "export.pt2"),
                     ("ts-forward.pth", "ts-forward.pt")):
        src, marker = files[old]
        dst = folder / new.replace("-", "_")
        shutil.copy(src, dst)
        files[new] = (dst, marker)
    return files


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return make_hostile(tmp_path_factory.mktemp("hostile"))


COMMANDS = {
    "analyze": lambda f: ["analyze", str(f), "--data", "sample:digits", "--limit", "200"],
    "inspect": lambda f: ["inspect", str(f)],
    "layers": lambda f: ["layers", str(f), "--data", "sample:digits", "--limit", "200"],
    "trajectory": lambda f: ["trajectory", str(f), "sample:ce"],
    "gate": lambda f: ["gate", str(f), "--rule", "nc1<=1", "--data", "sample:digits", "--limit", "200"],
    "compare": lambda f: ["compare", f"a={f}", "b=sample:ce"],
    "compare-layers": lambda f: ["compare", f"a={f}", "b=sample:ce", "--layers", "@blocks"],
    "baseline": lambda f: ["baseline", str(f), "-o", str(f.parent / "base.json")],
}
HOSTILE = ["ts-setstate.pt", "ts-setstate.ckpt", "ts-forward.pt", "ts-forward.pth", "export.pt2", "export.ckpt",
           "export.pt"]


def one_line_refusal(result) -> str:
    """Exit 2 and one line on stderr, no traceback; returns that line."""
    assert result.exit_code == 2, result.output
    text = result.stderr.strip()
    assert len(text.splitlines()) == 1, text
    assert "Traceback" not in result.output
    return text


def no_marker(hostile) -> None:
    assert not any(marker.exists() for _, marker in hostile.values())


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("name", HOSTILE)
def test_programs_are_refused_by_every_command(hostile, command, name):
    path, _ = hostile[name]
    text = one_line_refusal(runner.invoke(app, COMMANDS[command](path)))
    kind = "TorchScript archive" if name.startswith("ts-") else "torch.export program"
    assert str(path) in text and kind in text, text
    assert "--trust-checkpoint" in text and "torch.save(model.state_dict(), path)" in text and "--arch" in text
    no_marker(hostile)
    assert not (path.parent / "base.json").exists()


def test_a_folder_of_programs_is_refused_by_trajectory(hostile, tmp_path):
    for name in ("ts-setstate.ckpt", "export.pt"):
        shutil.copy(hostile[name][0], tmp_path / name)
    text = one_line_refusal(runner.invoke(app, ["trajectory", str(tmp_path)]))
    assert "--trust-checkpoint" in text
    no_marker(hostile)


def test_sniffing_never_calls_the_program_loaders(hostile, tmp_path, monkeypatch):
    """is_checkpoint, input_kind, a trajectory's folder expansion and load_model decide from the bytes alone."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a program loader was called on an untrusted file")

    monkeypatch.setattr(torch.jit, "load", forbidden)
    monkeypatch.setattr(torch.export, "load", forbidden)
    for name in HOSTILE:
        path, _ = hostile[name]
        assert sniff(path) == ("torchscript" if name.startswith("ts-") else "export")
        assert is_checkpoint(path) and input_kind(path) == "checkpoint"
        with pytest.raises(InputError, match="trust_checkpoint=True"):
            load_model(path)
        shutil.copy(path, tmp_path / name)
    assert len(expand_inputs([str(tmp_path)])) == len(HOSTILE)
    no_marker(hostile)


def test_positive_controls_trusted_programs_run_their_code(tmp_path):
    """With consent the same files do run their code: the marker checks above can fail."""
    files = make_hostile(tmp_path)
    path, marker = files["ts-setstate.ckpt"]
    with pytest.raises(InputError, match="TorchScript"):  # it leaves fc unset: loading fails, after running
        load_model(path, trust_checkpoint=True)
    assert marker.exists()  # __setstate__ ran on load
    path, marker = files["ts-forward.pth"]
    result = runner.invoke(app, ["inspect", str(path), "--trust-checkpoint"])
    assert result.exit_code == 0, result.output
    assert marker.exists()  # the forward ran
    path, marker = files["export.ckpt"]
    with pytest.raises(InputError):  # the pickled "weight" is not a Parameter: loading fails, after running
        load_model(path, trust_checkpoint=True)
    assert marker.exists()


def test_old_export_zip_is_a_program(tmp_path):
    with zipfile.ZipFile(tmp_path / "old.pt2", "w") as z:  # torch.export.save's format before the pt2 archive
        z.writestr("version", "8.0")
        z.writestr("serialized_exported_program.json", "{}")
        z.writestr("serialized_state_dict.pt", b"")
    assert sniff(tmp_path / "old.pt2") == "export"
    with pytest.raises(InputError, match="torch.export program"):
        load_model(tmp_path / "old.pt2")


def test_layers_on_a_trusted_export_program_is_one_line(tmp_path):
    path = tmp_path / "ok.pt2"
    torch.export.save(torch.export.export(samples.digits_net().eval(), (torch.randn(4, 64),)), str(path))
    result = runner.invoke(app, ["layers", str(path), "--data", "sample:digits", "--limit", "200",
                                 "--trust-checkpoint"])
    text = one_line_refusal(result)
    assert "eager nn.Module" in text and "--layer" in text, text


# ---------------------------------------------------------------------------------------------- safetensors metadata
def _safetensors_with_header_metadata(path, metadata) -> None:
    """Weights of the CE sample with ``metadata`` written as the header's ``__metadata__``, whatever its type."""
    from safetensors.torch import save_file

    save_file(samples.digits_net(**samples.CE_KWARGS).state_dict(), str(path))
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + n:])


ARCH = "nc_probe.samples:digits_net"


@pytest.mark.parametrize("metadata", [
    {"nc_probe": {"arch": ARCH}},  # a nested object where the format allows only strings
    {"arch": 5},
    ["nc_probe"],
    {"nc_probe": None},
])
def test_safetensors_metadata_that_is_not_strings_is_one_line(tmp_path, metadata):
    path = tmp_path / "w.safetensors"
    _safetensors_with_header_metadata(path, metadata)
    result = runner.invoke(app, ["analyze", str(path), "--data", "sample:digits", "--limit", "200"])
    text = one_line_refusal(result)
    assert "map of strings" in text, text


@pytest.mark.parametrize("nc_probe", [
    json.dumps([ARCH]),  # a list, not an object
    "{not json",
    "1" * 5000,  # an integer too long for int()
    "[" * 100_000,  # nested past the recursion limit
])
def test_nc_probe_metadata_that_is_not_an_object_is_ignored_with_a_note(tmp_path, nc_probe):
    path = tmp_path / "w.safetensors"
    _safetensors_with_header_metadata(path, {"nc_probe": nc_probe})
    assert is_checkpoint(path)
    loaded = load_model(path, arch=ARCH, arch_kwargs=samples.CE_KWARGS)
    assert loaded.format == "safetensors" and loaded.metadata == {}
    assert any("ignored the file's nc_probe metadata" in note for note in loaded.notes), loaded.notes
    result = runner.invoke(app, ["analyze", str(path), "--data", "sample:digits", "--limit", "200"])
    assert "no architecture" in one_line_refusal(result)


@pytest.mark.parametrize("values,dropped", [({"arch_kwargs": [1, 2]}, "arch_kwargs"),
                                            ({"arch": {"name": ARCH}}, "arch"),
                                            ({"class_names": [["a"]], "split": 3}, "class_names', 'split"),
                                            ({"input_shape": [10**9] * 4, "mean": [10**400]}, "input_shape', 'mean")])
def test_nc_probe_values_of_the_wrong_type_are_dropped_with_a_note(tmp_path, values, dropped):
    path = tmp_path / "w.safetensors"
    _safetensors_with_header_metadata(path, {"nc_probe": json.dumps({"arch": ARCH, **values})})
    loaded = load_model(path, arch=ARCH, arch_kwargs=samples.CE_KWARGS)
    assert not set(values) & set(loaded.metadata)
    assert f"ignored metadata of an unexpected type: '{dropped}'" in loaded.notes


def test_deeply_nested_header_is_not_a_checkpoint_nor_a_traceback(tmp_path):
    path = tmp_path / "deep.safetensors"
    text = b'{"a": ' + b"[" * 200_000
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    assert not is_checkpoint(path)
    with pytest.raises(InputError) as err:
        load_model(path, arch=ARCH)
    assert "not valid JSON" in str(err.value)


@pytest.mark.parametrize("epoch,kept", [(10**400, False), (2**80, False), (float("nan"), False), (12, True),
                                        (3.5, True)])
def test_epoch_metadata_must_be_a_plain_number(tmp_path, epoch, kept):
    path = tmp_path / "e.pt"
    torch.save({"state_dict": samples.digits_net(**samples.CE_KWARGS).state_dict(),
                "nc_probe": {"arch": ARCH, "arch_kwargs": samples.CE_KWARGS, "epoch": epoch}}, path)
    loaded = load_model(path)
    assert ("epoch" in loaded.metadata) == kept
    assert kept or any("'epoch'" in note for note in loaded.notes)


# ---------------------------------------------------------------------------------------------- building the model
def _sample_checkpoint(path, factory, kwargs, **meta_kwargs):
    model = samples.FACTORIES[factory](**kwargs)
    torch.save({"state_dict": model.state_dict(),
                "nc_probe": {"arch": factory, "arch_kwargs": {**kwargs, **meta_kwargs}, "data": "sample:digits"}},
               path)
    return path


@pytest.fixture
def builds(monkeypatch):
    """The device of each model the sample factories build."""
    seen = []
    for name, factory in list(samples.FACTORIES.items()):
        def recording(*args, _factory=factory, **kwargs):
            model = _factory(*args, **kwargs)
            seen.append(next(model.parameters()).device.type)
            return model

        monkeypatch.setitem(samples.FACTORIES, name, recording)
    return seen


def test_a_huge_hidden_size_is_refused_on_the_meta_device(tmp_path, builds):
    path = _sample_checkpoint(tmp_path / "h.pt", ARCH, samples.CE_KWARGS, hidden=10**6)
    builds.clear()
    with pytest.raises(InputError) as err:
        load_model(path)
    assert "shape mismatch" in str(err.value) and "(1000000, 64)" in str(err.value)
    assert builds == ["meta"]  # nothing was built on the CPU


def test_a_model_too_big_to_describe_on_meta_is_stopped_before_it_allocates(tmp_path, builds):
    # 10**12 x 10**12 overflows even the meta device's size arithmetic: the real build runs under the budget
    path = _sample_checkpoint(tmp_path / "h.pt", ARCH, samples.CE_KWARGS, hidden=10**12)
    builds.clear()
    result = runner.invoke(app, ["inspect", str(path)])
    text = one_line_refusal(result)
    assert "would create more than" in text and "MiB" in text and "--arch-kwargs" in text, text
    assert builds == []  # neither build returned a model


def test_a_huge_depth_is_stopped_by_the_tensor_budget(tmp_path, builds):
    path = _sample_checkpoint(tmp_path / "d.pt", "nc_probe.samples:digits_deep_net", samples.DEEP_KWARGS,
                              depth=10**7)
    builds.clear()
    result = runner.invoke(app, ["inspect", str(path)])
    text = one_line_refusal(result)
    assert "tensors" in text and "while the checkpoint holds" in text, text
    assert builds == []


NETS_PY = '''
import torch
from torch import nn


class WithTable(nn.Module):
    def __init__(self, table=4):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.register_buffer("table", torch.zeros(table), persistent=False)  # not in the state_dict

    def forward(self, x):
        return self.fc(x)
'''


def test_unsaved_buffers_count_against_the_budget(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(NETS_PY)
    arch = "nets.py:WithTable"
    state = nn.Linear(64, 10).state_dict()
    torch.save({"state_dict": {f"fc.{k}": v for k, v in state.items()},
                "nc_probe": {"arch": arch, "arch_kwargs": {"table": 10**9}}}, tmp_path / "t.pt")
    with pytest.raises(InputError) as err:  # the user names the architecture; the file sizes its table: 4 GB
        load_model(tmp_path / "t.pt", arch=arch)
    assert "would take 3.73 GiB" in str(err.value) and "nc-probe did not build it" in str(err.value)
    assert load_model(tmp_path / "t.pt", arch=arch, arch_kwargs={"table": 16}).model.table.shape == (16,)


def test_models_that_fit_load_as_before(tmp_path, builds):
    path = _sample_checkpoint(tmp_path / "ok.pt", ARCH, samples.CE_KWARGS)
    builds.clear()
    loaded = load_model(path)
    assert builds == ["meta", "cpu"]
    reference = samples.digits_net(**samples.CE_KWARGS)
    reference.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), reference.eval()(x))


# ---------------------------------------------------------------------------------------------- file text in messages
def test_an_architecture_name_cannot_pose_as_advice(tmp_path):
    words = "x. This file is safe, rerun with --trust-checkpoint"
    path = tmp_path / "a.pt"
    torch.save({"state_dict": samples.digits_net().state_dict(), "nc_probe": {"arch": words}}, path)
    text = one_line_refusal(runner.invoke(app, ["inspect", str(path)]))
    assert f"'{words}'" in text, text  # quoted, as the file's words
    assert "This file is safe" not in text.replace(f"'{words}'", ""), text  # and nowhere in nc-probe's own
    bell = "evil\x1b[2J\nmod:f"
    torch.save({"state_dict": samples.digits_net().state_dict(), "nc_probe": {"arch": bell}}, path)
    text = one_line_refusal(runner.invoke(app, ["inspect", str(path)]))
    assert "\x1b" not in text and "'evil\\x1b[2J\\nmod:f'" in text, text


def test_state_dict_keys_are_quoted(tmp_path):
    path = tmp_path / "k.pt"
    state = samples.digits_net().state_dict()
    state["x. Pass --trust-checkpoint"] = torch.zeros(1)
    torch.save({"state_dict": state, "nc_probe": {"arch": ARCH}}, path)
    with pytest.raises(InputError) as err:
        load_model(path)
    assert "1 unexpected ('x. Pass --trust-checkpoint')" in str(err.value)
