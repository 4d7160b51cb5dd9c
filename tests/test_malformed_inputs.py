"""Malformed feature files (safetensors, .npz, .pt) and data files (``--data x.npz``): every one is refused with one
line naming the file and what to do (exit 2), or read as the well-formed input it is (exit 0); never a traceback,
never a raw escape sequence. Files whose headers claim gigabytes are refused before anything that size is allocated
(the tests check that the error is raised, not how much memory it took).

The files are made here, small (N=30, d=4, C=3), so the table runs in seconds."""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nc_probe
from nc_probe.cli.app import app
from nc_probe.core.errors import InputError

runner = CliRunner()
ESC = "\x1b[2J"
H0 = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
Y0 = np.arange(30, dtype=np.int64) % 3
W0 = np.random.default_rng(1).normal(size=(3, 4))
GIB = 1024**3


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # gate reads ./pyproject.toml; the repository's own must not take part


# ---------------------------------------------------------------------------------------------- file writers
def _st(path, tensors, meta=None, *, header=None, header_len=None):
    """A safetensors file written by hand: ``tensors`` maps names to (dtype, shape, bytes[, data_offsets])."""
    blob = b""
    if header is None:
        header = {}
        for name, (dtype, shape, data, *offsets) in tensors.items():
            header[name] = {"dtype": dtype, "shape": shape,
                            "data_offsets": offsets[0] if offsets else [len(blob), len(blob) + len(data)]}
            blob += data
        if meta is not None:
            header["__metadata__"] = meta
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text) if header_len is None else header_len) + text + blob)


def f32(a):
    return ("F32", list(np.shape(a)), np.ascontiguousarray(a, dtype="<f4").tobytes())


def f64(a):
    return ("F64", list(np.shape(a)), np.ascontiguousarray(a, dtype="<f8").tobytes())


def i64(a):
    return ("I64", list(np.shape(a)), np.ascontiguousarray(a, dtype="<i8").tobytes())


def st(meta=None, **change):
    """A writer of the good safetensors feature file with some tensors changed (None drops one)."""
    tensors = {"features": f32(H0), "labels": i64(Y0)} | change
    return lambda p: _st(p, {k: v for k, v in tensors.items() if v is not None}, meta)


def npz(**arrays):
    return lambda p: np.savez(p, **arrays)


def pt(obj):
    return lambda p: torch.save(obj, p)


def npy(header: dict, data: bytes = b"") -> bytes:
    """A .npy member with the header given (whatever it claims) and the data given."""
    text = repr(header).encode()
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def npy_of(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def members(entries: dict, compression=zipfile.ZIP_STORED):
    def write(p):
        with zipfile.ZipFile(p, "w", compression) as z:
            for name, data in entries.items():
                z.writestr(name, data)
    return write


def claiming(size: int, name: str = "H.npy", rows: int = 4096):
    """An npz whose member ``name`` (deflated zeros) declares an uncompressed size of ``size`` bytes in the zip
    directory: a zip bomb as nc-probe sees it before decompressing, without making gigabytes here."""
    data = npy({"descr": "<f4", "fortran_order": False, "shape": (rows, 4)}, bytes(rows * 16))

    def write(p):
        members({name: data, "y.npy": npy_of(Y0)}, zipfile.ZIP_DEFLATED)(p)
        raw = p.read_bytes()
        old, new = struct.pack("<I", len(data)), struct.pack("<I", size)
        assert raw.count(old) == 2  # the local header and the central directory
        p.write_bytes(raw.replace(old, new))
    return write


def cut(write, keep: int):
    def truncated(p):
        write(p)
        p.write_bytes(p.read_bytes()[:keep])
    return truncated


NAN = H0.copy()
NAN[3, 1] = np.nan
W_NAN = W0.copy()
W_NAN[1, 2] = np.nan
W_INF = W0.copy()
W_INF[0, 0] = -np.inf
HUGE_LABEL = np.where(Y0 == 2, 9_999_999, Y0)
CLAIMED_ROWS = 500_000_000  # 7.5 GiB of float32 features, claimed by a header over 480 bytes

# (name, file name, writer, expected: 0 (read) or words the one-line error contains)
FEATURES = [
    # safetensors: the header
    ("st zero length", "f.safetensors", lambda p: p.write_bytes(b""), ["empty"]),
    ("st truncated header", "f.safetensors", cut(st(), 40), ["truncated"]),
    ("st truncated data", "f.safetensors", cut(st(), 500), ["truncated"]),
    ("st header length 2^63", "f.safetensors", lambda p: _st(p, {}, header={}, header_len=2**63), ["truncated"]),
    ("st header not json", "f.safetensors", lambda p: _st(p, {}, header=b"{not json\xff"), ["not valid JSON"]),
    ("st header a json list", "f.safetensors", lambda p: _st(p, {}, header=[1, 2]), ["a list, not an object"]),
    ("st header a json number", "f.safetensors", lambda p: _st(p, {}, header=7), ["a number"]),
    ("st header nested 100k deep", "f.safetensors", lambda p: _st(p, {}, header=b"[" * 100_000 + b"]" * 100_000),
     ["not valid JSON"]),
    ("st entry a list", "f.safetensors", lambda p: _st(p, {}, header={"features": [1], "labels": 3}),
     ["'features'", "a list"]),
    ("st metadata a list", "f.safetensors", st(meta=["a"]), ["__metadata__", "a list"]),
    ("st metadata nested", "f.safetensors", st(meta={"format": {"a": 1}}), ["'format'", "an object"]),
    ("st metadata json not an object", "f.safetensors", st(meta={"metadata": "[1, 2]"}), ["a list"]),
    ("st metadata json broken", "f.safetensors", st(meta={"metadata": "{x"}), ["not valid JSON"]),
    ("st class_names not json", "f.safetensors", st(meta={"class_names": "[a, b"}), ["list of strings"]),
    ("st class_names a dict", "f.safetensors", st(meta={"class_names": '{"a": 1}'}), ["list of strings"]),
    ("st class_names numbers", "f.safetensors", st(meta={"class_names": "[1, 2, 3]"}), ["list of strings"]),
    ("st class_names beyond W", "f.safetensors", st(meta={"class_names": '["a", "b", "c", "d"]'}, W=f64(W0)),
     ["4 class names", "3 rows"]),
    ("st class_names with escapes", "f.safetensors", st(meta={"class_names": json.dumps([ESC, "b\nc", "d"])}), 0),
    # safetensors: dtypes, shapes, offsets
    ("st bool features", "f.safetensors", st(features=("BOOL", [30, 4], (H0 > 0).tobytes())), ["bool"]),
    ("st bf16 features", "f.safetensors",
     st(features=("BF16", [30, 4], (H0.view(np.uint32) >> 16).astype("<u2").tobytes())), 0),
    ("st int8 features", "f.safetensors", st(features=("I8", [30, 4], (H0 * 10).astype("i1").tobytes())), 0),
    ("st u8 labels", "f.safetensors", st(labels=("U8", [30], Y0.astype("u1").tobytes())), 0),
    ("st unknown dtype", "f.safetensors", st(features=("F8_E4M3", [30, 4], bytes(120))), ["'F8_E4M3'"]),
    ("st complex dtype", "f.safetensors", st(features=("C64", [30, 2], bytes(480))), ["'C64'"]),
    ("st rank-3 features", "f.safetensors", st(features=f32(H0.reshape(30, 2, 2))), ["(N, d)"]),
    ("st rank-0 labels", "f.safetensors", st(labels=i64(np.int64(1))), ["labels of shape ()"]),
    ("st negative shape", "f.safetensors", st(features=("F32", [-30, -4], H0.tobytes())), ["non-negative"]),
    ("st shape 2^62 rows", "f.safetensors", st(features=("F32", [2**62, 4], H0.tobytes())), ["data_offsets"]),
    ("st 5e8 rows claimed", "f.safetensors",
     st(features=("F32", [CLAIMED_ROWS, 4], H0.tobytes()), labels=("I64", [CLAIMED_ROWS], Y0.tobytes())),
     ["7.45 GiB", "480 B"]),
    ("st offsets reversed", "f.safetensors", st(features=("F32", [30, 4], H0.tobytes(), [480, 0])), ["ordered"]),
    ("st offsets negative", "f.safetensors", st(features=("F32", [30, 4], H0.tobytes(), [-480, 0])), ["ordered"]),
    ("st offsets overlap", "f.safetensors",
     lambda p: _st(p, {"features": ("F32", [30, 4], H0.tobytes(), [0, 480]),
                       "labels": ("I64", [30], Y0.tobytes(), [240, 480])}), ["overlap"]),
    ("st offsets past the end", "f.safetensors", st(labels=("I64", [30], Y0.tobytes(), [480, 8 * 10**6])),
     ["truncated"]),
    ("st name with escapes", "f.safetensors", st(**{ESC + "x\ny": f32(H0)}), ["unknown array name"]),
    # safetensors: values
    ("st label 9,999,999", "f.safetensors", st(labels=i64(HUGE_LABEL)), ["9999999", "only 3 classes", "relabel"]),
    ("st label int64 max", "f.safetensors", st(labels=i64(np.where(Y0 == 2, 2**63 - 1, Y0))), ["only 3 classes"]),
    ("st label 1e300", "f.safetensors", st(labels=f64(np.where(Y0 == 2, 1e300, Y0))), ["too large"]),
    ("st label beyond W", "f.safetensors", st(labels=i64(Y0 + 1), W=f64(W0)), ["W has 3 rows"]),
    ("st float labels", "f.safetensors", st(labels=f32(Y0 + 0.5)), ["whole numbers"]),
    ("st NaN features", "f.safetensors", st(features=f32(NAN)), ["NaN", "row 3"]),
    ("st W NaN", "f.safetensors", st(W=f64(W_NAN)), ["W holds NaN or Inf"]),
    ("st W Inf", "f.safetensors", st(W=f64(W_INF)), ["W holds NaN or Inf"]),
    ("st b NaN", "f.safetensors", st(W=f64(W0), b=f64([0, np.nan, 0])), ["b holds NaN"]),
    ("st W rank 0", "f.safetensors", st(W=f64(np.float64(1))), ["W has shape ()"]),
    ("st b without W", "f.safetensors", st(b=f64(np.zeros(3))), ["without W"]),
    ("st predictions float", "f.safetensors", st(predictions=f32(Y0 + 0.5), W=f64(W0)), ["predictions"]),
    ("st predictions out of range", "f.safetensors", st(predictions=i64(Y0 + 100), W=f64(W0)), ["100 to 102"]),
    ("st logits 1-D", "f.safetensors", st(logits=f32(Y0)), ["logits of shape (30,)"]),
    ("st logits NaN", "f.safetensors", st(logits=f32(np.full((30, 3), np.nan))), ["logits contain NaN"]),
    ("st d = 0", "f.safetensors", st(features=f32(np.zeros((30, 0)))), ["no feature dimensions"]),
    ("st one row", "f.safetensors", st(features=f32(H0[:1]), labels=i64(Y0[:1])), ["at least 2 classes"]),
    # npz
    ("npz extra name", "f.npz", npz(H=H0, y=Y0, extra=Y0), ["'extra'"]),
    ("npz 0-d arrays", "f.npz", npz(H=np.float32(1), y=np.int64(0)), ["shape ()"]),
    ("npz directory entry", "f.npz", members({"H.npy": npy_of(H0), "y.npy": npy_of(Y0), "sub/": b""}), ["'sub/'"]),
    ("npz member not npy", "f.npz", members({"H.npy": b"garbage" * 10, "y.npy": npy_of(Y0)}), ["corrupt"]),
    ("npz npy header claims 1.8 TiB", "f.npz",
     members({"H.npy": npy({"descr": "<f4", "fortran_order": False, "shape": (CLAIMED_ROWS, 1000)}, H0.tobytes()),
              "y.npy": npy_of(Y0)}), ["1.82 TiB", "480 B"]),
    ("npz npy header negative shape", "f.npz",
     members({"H.npy": npy({"descr": "<f4", "fortran_order": False, "shape": (-3, 4)}), "y.npy": npy_of(Y0)}),
     ["(-3, 4)"]),
    ("npz zip bomb 3.75 GiB claimed", "f.npz", claiming(0xF0000000), ["zip bomb"]),
    ("npz zip bomb with an unknown name", "f.npz", claiming(0xF0000000, name="junk.npy"), ["'junk'"]),
    ("npz pickled objects", "f.npz", npz(H=np.array([1, "a", None], dtype=object), y=Y0), ["pickled"]),
    ("npz complex64 features", "f.npz", npz(H=H0.astype(np.complex64), y=Y0), ["complex64"]),
    ("npz bool features", "f.npz", npz(H=H0 > 0, y=Y0), ["bool"]),
    ("npz string labels", "f.npz", npz(H=H0, y=np.array(["a", "b", "c"] * 10)), ["string"]),
    ("npz 3-D labels", "f.npz", npz(H=H0, y=Y0.reshape(30, 1, 1)), ["(30, 1, 1)"]),
    ("npz structured features", "f.npz", npz(H=np.zeros(30, dtype=[("a", "f4"), ("b", "f4")]), y=Y0),
     ["structured"]),
    ("npz label 9,999,999", "f.npz", npz(H=H0, y=HUGE_LABEL), ["only 3 classes"]),
    ("npz uint64 label 2^64-1", "f.npz", npz(H=H0, y=np.where(Y0 == 2, 2**64 - 1, Y0).astype(np.uint64)),
     ["too large"]),
    ("npz NaN labels", "f.npz", npz(H=H0, y=np.where(Y0 == 1, np.nan, Y0)), ["whole numbers"]),
    ("npz W NaN", "f.npz", npz(H=H0, y=Y0, W=W_NAN), ["W holds NaN"]),
    ("npz W strings", "f.npz", npz(H=H0, y=Y0, W=np.array([["a"] * 4] * 3)), ["W has dtype string"]),
    ("npz class_names 2-D", "f.npz", npz(H=H0, y=Y0, class_names=np.array([["a", "b"], ["c", "d"]])),
     ["list of strings"]),
    ("npz class_names numbers", "f.npz", npz(H=H0, y=Y0, class_names=np.array([0.5, 1.5, 2.5])),
     ["list of strings"]),
    ("npz big-endian arrays", "f.npz", npz(H=H0.astype(">f4"), y=Y0.astype(">i8")), 0),
    ("npz members without .npy", "f.npz", members({"H": npy_of(H0), "y": npy_of(Y0)}), 0),
    ("npz class_names as class ids", "f.npz", npz(H=H0, y=Y0, class_names=np.arange(3)), 0),
    ("npz truncated", "f.npz", cut(npz(H=H0, y=Y0), 300), ["truncated"]),
    # pt
    ("pt dict of strings", "f.pt", pt({"H": "abc", "y": 3}), ["string"]),
    ("pt nested dict", "f.pt", pt({"H": {"a": torch.from_numpy(H0)}, "y": torch.from_numpy(Y0)}), ["object"]),
    ("pt label 9,999,999", "f.pt", pt({"H": torch.from_numpy(H0), "y": torch.from_numpy(HUGE_LABEL)}),
     ["only 3 classes"]),
    ("pt complex features", "f.pt", pt({"H": torch.from_numpy(H0).to(torch.complex64), "y": torch.from_numpy(Y0)}),
     ["complex64"]),
    ("pt bool features", "f.pt", pt({"H": torch.from_numpy(H0 > 0), "y": torch.from_numpy(Y0)}), ["bool"]),
    ("pt meta tensor", "f.pt", pt({"H": torch.empty(30, 4, device="meta"), "y": torch.from_numpy(Y0)}),
     ["plain (dense, CPU)"]),
    ("pt W NaN", "f.pt", pt({"H": torch.from_numpy(H0), "y": torch.from_numpy(Y0), "W": torch.from_numpy(W_NAN)}),
     ["W holds NaN"]),
    ("pt class_names a dict", "f.pt", pt({"H": torch.from_numpy(H0), "y": torch.from_numpy(Y0),
                                          "class_names": {"a": 1}}), ["class_names is a dict"]),
    ("pt bf16 features", "f.pt", pt({"H": torch.from_numpy(H0).bfloat16(), "y": torch.from_numpy(Y0)}), 0),
]

COMMANDS = {
    "analyze": lambda p: ["analyze", p, "-q"],
    "compare": lambda p: ["compare", f"a={p}", f"b={p}", "-q"],
    "gate": lambda p: ["gate", p, "--rule", "nc1<=1e9"],
}


def _check(result, path, expected):
    out = result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out and "\x1b" not in out, out[-2000:]
    if expected == 0:
        assert result.exit_code == 0, out[-2000:]
        return
    assert result.exit_code == 2, out[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], lines
    for word in expected:
        assert word.lower() in lines[0].lower(), (word, lines[0])


#: Every malformed file through every command; a well-formed one through analyze (compare and gate read it alike).
CASES = [pytest.param(*v, c, id=f"{v[0]}-{c}") for v in FEATURES for c in COMMANDS if v[3] != 0 or c == "analyze"]


@pytest.mark.parametrize("name, filename, write, expected, command", CASES)
def test_malformed_feature_files(name, filename, write, expected, command, tmp_path):
    path = tmp_path / filename
    write(path)
    _check(runner.invoke(app, [str(a) for a in COMMANDS[command](path)]), path, expected)


# ---------------------------------------------------------------------------------------------- data files
X = np.random.default_rng(2).random((40, 64)).astype(np.float32)  # the shape sample:ce takes: 64 pixels
Y = np.arange(40) % 10
X_NAN = X.copy()
X_NAN[3, 5] = np.nan

DATA = [
    ("pickled objects", "d.npz", npz(x=np.array([1, None], dtype=object), y=Y), ["pickled"]),
    ("x and y lengths differ", "d.npz", npz(x=X, y=Y[:-3]), ["40 rows", "(37,)"]),
    ("labels not whole", "d.npz", npz(x=X, y=Y + 0.5), ["whole numbers"]),
    ("labels NaN", "d.npz", npz(x=X, y=np.where(Y == 1, np.nan, Y)), ["whole numbers"]),
    ("labels strings", "d.npz", npz(x=X, y=Y.astype(str)), ["string"]),
    ("labels 3-D", "d.npz", npz(x=X, y=Y.reshape(40, 1, 1)), ["(40, 1, 1)"]),
    ("labels a single number", "d.npz", npz(x=X, y=np.int64(3)), ["single value"]),
    ("labels uint64 2^64-1", "d.npz", npz(x=X, y=np.where(Y == 2, 2**64 - 1, Y).astype(np.uint64)), ["too large"]),
    ("label beyond the classifier", "d.npz", npz(x=X, y=np.where(Y == 2, 9_999_999, Y)), ["9999999", "10 outputs"]),
    ("empty arrays", "d.npz", npz(x=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64)), ["no samples"]),
    ("NaN in x", "d.npz", npz(x=X_NAN, y=Y), ["NaN", "sample 3"]),
    ("complex x", "d.npz", npz(x=X.astype(np.complex64), y=Y), ["complex64"]),
    ("x of 7 values per sample", "d.npz", npz(x=X[:, :7], y=Y), ["shape (7,)", "mat1 and mat2"]),
    ("x claims 119 GiB in its npy header", "d.npz",
     members({"x.npy": npy({"descr": "<f4", "fortran_order": False, "shape": (CLAIMED_ROWS, 64)}, X.tobytes()),
              "y.npy": npy_of(Y)}), ["119 GiB"]),
    ("zip bomb", "d.npz", claiming(0xF0000000, name="x.npy"), ["zip bomb"]),
    ("class_names 2-D", "d.npz", npz(x=X, y=Y, class_names=np.array([["a", "b"]] * 5)), ["list of strings"]),
    ("pt list", "d.pt", pt([torch.from_numpy(X), torch.from_numpy(Y)]), ["not a dict"]),
    ("pt dict with int keys", "d.pt", pt({1: torch.from_numpy(X), 2: torch.from_numpy(Y)}), ["'1'"]),
    ("pt sparse x", "d.pt", pt({"x": torch.from_numpy(X).to_sparse(), "y": torch.from_numpy(Y)}), ["sparse"]),
    ("pt meta x", "d.pt", pt({"x": torch.empty(40, 64, device="meta"), "y": torch.from_numpy(Y)}), ["meta"]),
    ("pt truncated", "d.pt", cut(pt({"x": torch.from_numpy(X), "y": torch.from_numpy(Y)}), 100), ["truncated"]),
    ("uint8 x", "d.npz", npz(x=(X * 255).astype(np.uint8), y=Y), 0),
]


@pytest.mark.parametrize("name, filename, write, expected", DATA, ids=[v[0] for v in DATA])
def test_malformed_data_files(name, filename, write, expected, tmp_path):
    path = tmp_path / filename
    write(path)
    result = runner.invoke(app, ["analyze", "sample:ce", "--data", str(path), "-q"])
    _check(result, path, expected)


# ---------------------------------------------------------------------------------------------- settings, models
@pytest.mark.parametrize("args", [["--data-classes", "0-100000000"], ["--classes", "0-100000000"],
                                  ["--data-classes", "0-1000000,0-2000000"]])
def test_huge_class_ranges_are_refused_before_they_are_spelled_out(args):
    result = runner.invoke(app, ["analyze", "sample:ce", "-q", *args])
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and args[0] in lines[0] and "class ids" in lines[0], lines


def test_a_huge_label_is_refused_whatever_the_memory_budget(tmp_path):
    path = tmp_path / "f.safetensors"
    st(labels=i64(HUGE_LABEL))(path)
    result = runner.invoke(app, ["analyze", str(path), "-q", "--memory-budget", "1MiB"])
    assert result.exit_code == 2 and "only 3 classes have samples" in result.stderr, result.stderr
    # With the classifier's W the class count is W's rows, and a label beyond them is the error.
    st(labels=i64(HUGE_LABEL), W=f64(W0))(path)
    with pytest.raises(InputError, match="W has 3 rows but the labels go up to 9999999"):
        nc_probe.analyze_file(path)


def test_sparse_labels_within_the_rule_are_read():
    """Labels may skip classes: 3 classes present with ids up to 1026 (< 3 + 1024) is fine, and the class count is
    the largest label + 1."""
    y = np.where(Y0 == 2, 1026, Y0)
    report = nc_probe.analyze_features(H0, y)
    assert report.inputs["num_labels"] == 1027 and report.inputs["class_ids"] == [0, 1, 1026]
    with pytest.raises(InputError, match="only 3 classes"):
        nc_probe.analyze_features(H0, np.where(Y0 == 2, 1027, Y0))


def test_a_checkpoint_whose_classifier_has_nan_is_refused(tmp_path):
    from nc_probe.load.samples import sample_path

    saved = torch.load(sample_path("sample:ce"), weights_only=True)
    saved["state_dict"]["head.weight"][3, 7] = float("nan")
    path = tmp_path / "diverged.pt"
    torch.save(saved, path)
    result = runner.invoke(app, ["analyze", str(path), "-q"])
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "NaN or Inf in its weight (1 of 640" in lines[0], lines


def test_npz_names_are_checked_before_anything_is_decompressed(tmp_path, monkeypatch):
    """An unknown name is refused from the zip directory: no member is ever opened."""
    path = tmp_path / "f.npz"
    np.savez_compressed(path, H=H0, y=Y0, extra=Y0)
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or 1 / 0)
    with pytest.raises(InputError, match="'extra'"):
        nc_probe.open_store(path)
    assert opened == []
