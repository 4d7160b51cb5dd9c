"""Layer analyses (``nc-probe layers``): which modules a spec selects, how outputs become feature vectors, the depth
laws against planted answers, the ridge probe against its definition, the outputs, and the deep sample."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import nc_probe
from nc_probe.cli.app import app
from nc_probe.core.errors import InputError
from nc_probe.load import samples
from nc_probe.metrics import depth
from nc_probe.taps.layers import LayerTaps
from nc_probe.taps.select import PENULTIMATE, glob_match, select_layers


# -------------------------------------------------------------------------------------------------- selection
class Block(nn.Module):
    def __init__(self, d: int = 4):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x))


class Staged(nn.Module):
    """stem, two stages of two blocks (torchvision ResNet's layout), head."""

    def __init__(self, d: int = 4, classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(d, d), nn.ReLU())
        self.layer1 = nn.Sequential(Block(d), Block(d))
        self.layer2 = nn.Sequential(Block(d), Block(d))
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.layer2(self.layer1(self.stem(x))))


BLOCKS = ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]


@pytest.mark.parametrize("spec, expected", [
    ("layer1.0", ["layer1.0"]),
    ("layer*.1", ["layer1.1", "layer2.1"]),
    ("layer1.*", ["layer1.0", "layer1.1"]),  # one segment: the blocks, not their sub-modules
    ("**.act", ["layer1.0.act", "layer1.1.act", "layer2.0.act", "layer2.1.act"]),
    (r"re:layer\d\.\d", BLOCKS),
    ("re:layer1", ["layer1"]),  # re: matches the whole name
    ("-1", ["head"]),
    ("0", ["stem"]),
    ("@blocks", BLOCKS),
    (None, BLOCKS + [PENULTIMATE]),
    ("@penultimate, layer2.0 ,layer1.0,layer1.0", ["layer1.0", "layer2.0", PENULTIMATE]),  # model order, once
])
def test_layer_specs_select_modules_in_model_order(spec, expected):
    assert select_layers(Staged(), spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("nope", "matches no module"), ("@everything", "set '@everything' is unknown"),
    ("re:(", "not a regular expression"), ("99", "outside the model's"), (" , ", "is empty"),
])
def test_bad_layer_specs_say_what_is_wrong_and_name_the_setting(spec, message):
    with pytest.raises(InputError, match=message) as info:
        select_layers(Staged(), spec)
    assert str(info.value).startswith("layers ")  # the library names its parameter (the CLI says --layers)


def test_glob_segments():
    assert glob_match("a.**.c", "a.c") and glob_match("a.**.c", "a.b.x.c") and not glob_match("a.*.c", "a.b.x.c")
    assert glob_match("layer[12].0", "layer2.0") and not glob_match("layer?.0", "layer10.0")


def test_blocks_of_the_shipped_and_common_layouts():
    assert select_layers(samples.digits_deep_net(), "@blocks") == [f"blocks.{i}" for i in range(8)]
    # a plain MLP in one Sequential: the activations
    assert select_layers(samples.digits_net(), "@blocks") == ["backbone.2", "backbone.5", "backbone.8"]
    # stages written as a Sequential of Sequentials of blocks: the blocks, not the stages
    stages = nn.Sequential(nn.Sequential(Block(), Block()), nn.Sequential(Block(), Block()), nn.Linear(4, 2))
    assert select_layers(stages, "@blocks") == ["0.0", "0.1", "1.0", "1.1"]
    # blocks written as plain Sequentials of leaves: the blocks
    seq = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(3)], nn.Linear(4, 2))
    assert select_layers(seq, "@blocks") == ["0", "1", "2"]
    # no activations, no containers: the linear layers but the last
    assert select_layers(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)), "@blocks") == ["0", "1"]


# -------------------------------------------------------------------------------------------------- reduction
class Maps(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.tokens = nn.Identity()
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        m = self.conv(x)
        t = self.tokens(m.flatten(2).transpose(1, 2))  # (n, T, 5) tokens
        return self.head(t.mean(1))


def _tap(model, names, x, **kw):
    with LayerTaps(model, names, **kw) as taps, torch.no_grad():
        feats, logits = taps(x)
    return feats, taps


@pytest.mark.parametrize("pool", ["auto", "gap", "mean", "cls"])
def test_conv_maps_are_averaged_and_tokens_pooled_as_asked(pool):
    torch.manual_seed(0)
    model, x = Maps().eval(), torch.randn(6, 3, 4, 4)
    with torch.no_grad():
        maps = model.conv(x)
        tokens = maps.flatten(2).transpose(1, 2)
    if pool == "cls":  # the class token of conv maps does not exist
        with pytest.raises(InputError, match="takes the class token"):
            _tap(model, ["conv"], x, pool=pool)
        feats, taps = _tap(model, ["tokens"], x, pool=pool)
        torch.testing.assert_close(feats["tokens"], tokens[:, 0])
        return
    feats, taps = _tap(model, ["conv", "tokens"], x, pool=pool)
    torch.testing.assert_close(feats["conv"], maps.mean((2, 3)))
    torch.testing.assert_close(feats["tokens"], tokens.mean(1))
    assert taps.infos["conv"].pool == "gap" and taps.infos["tokens"].pool == "mean"
    assert taps.infos["conv"].shape == (5, 4, 4) and taps.infos["tokens"].shape == (16, 5)


def test_auto_pooling_takes_the_class_token_of_a_model_that_has_one():
    model = Maps().eval()
    model.cls_token = nn.Parameter(torch.zeros(1, 1, 5))
    x = torch.randn(3, 3, 4, 4)
    feats, taps = _tap(model, ["tokens"], x)
    torch.testing.assert_close(feats["tokens"], model.conv(x).flatten(2).transpose(1, 2)[:, 0].detach())
    assert taps.infos["tokens"].pool == "cls"


def test_wide_layers_get_a_seeded_random_projection():
    torch.manual_seed(1)
    model, x = Staged(d=8).eval(), torch.randn(10, 8)
    feats, taps = _tap(model, ["layer1.0", PENULTIMATE], x, max_dim=3)
    seed = zlib.crc32(b"layer1.0")
    P = torch.randn(8, 3, generator=torch.Generator().manual_seed(seed)) / math.sqrt(3)
    with torch.no_grad():
        raw = model.layer1[0](model.stem(x))
    torch.testing.assert_close(feats["layer1.0"], raw @ P)
    info = taps.infos["layer1.0"]
    assert (info.raw_dim, info.dim, info.projection_seed) == (8, 3, seed)
    again, _ = _tap(model, ["layer1.0"], x, max_dim=3)
    assert torch.equal(again["layer1.0"], feats["layer1.0"])  # the same map every run
    assert taps.infos[PENULTIMATE].projection_seed == zlib.crc32(PENULTIMATE.encode())


def test_layer_taps_refuse_scripted_models():
    with pytest.raises(InputError, match="eager nn.Module"):
        LayerTaps(torch.jit.script(Staged()), ["stem"])


# ------------------------------------------------------------------------------------------- planted answers
RHO, D0 = 0.7, 6


class Planted(nn.Module):
    """Input rows ``[mu_y, z]`` (z centred within each class); stage l outputs ``mu_y + t_l z`` with
    ``t_l = exp(-RHO l / 2)``, so Sigma_W scales by ``t_l^2`` and Sigma_B stays: ``ln D_l = ln D_0 - RHO l``."""

    def __init__(self, d: int, depth_: int, classes: int):
        super().__init__()
        self.stages = nn.ModuleList()
        for l_ in range(1, depth_ + 1):
            lin = nn.Linear(2 * d, d, bias=False)
            t = math.exp(-RHO * l_ / 2)
            lin.weight.data = torch.cat([torch.eye(d), t * torch.eye(d)], dim=1)
            self.stages.append(lin)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h = None
        for s in self.stages:
            h = s(x)
        return self.head(h)


def _planted_data(C=4, d=D0, n_c=40, seed=0):
    rng = np.random.default_rng(seed)
    mu = 3 * rng.standard_normal((C, d))
    y = np.repeat(np.arange(C), n_c)
    z = rng.standard_normal((len(y), d))
    for c in range(C):
        z[y == c] -= z[y == c].mean(0)
    x = np.concatenate([mu[y], z], axis=1).astype(np.float64)
    return torch.from_numpy(x), torch.from_numpy(y)


def _fuzziness(H: np.ndarray, y: np.ndarray) -> float:
    """Tr(Sigma_W Sigma_B^+) with docs/metrics.md's conventions (Sigma_W over all rows, Sigma_B over class means
    about their mean), straight from the definition."""
    classes = np.unique(y)
    M = np.stack([H[y == c].mean(0) for c in classes])
    Mc = M - M.mean(0)
    SB = Mc.T @ Mc / len(classes)
    R = H - M[np.searchsorted(classes, y)]
    SW = R.T @ R / len(H)
    return float(np.trace(SW @ np.linalg.pinv(SB)))


def test_planted_fuzziness_gives_the_depth_law_exactly():
    model = Planted(D0, 5, 4).eval()
    x, y = _planted_data()
    report = nc_probe.analyze_layers(model, data=(x.float(), y), layers="stages.*", device="cpu")
    assert report.names == [f"stages.{i}" for i in range(5)] and [layer["depth"] for layer in report.layers] == \
        [1, 2, 3, 4, 5]
    law = report.laws["D_l"]
    assert law["rho"] == pytest.approx(RHO, rel=1e-5) and law["r2"] == pytest.approx(1.0, abs=1e-9)
    assert law["layers"] == 5
    with torch.no_grad():
        for i, layer in enumerate(report.layers):
            H = model.stages[i](x.float()).double().numpy()  # the float32 features the taps saw, in float64
            assert layer["metrics"]["D_l"] == pytest.approx(_fuzziness(H, y.numpy()), rel=1e-6), layer["name"]
    # D_l = C * nc1, and each layer carries the single-layer metrics
    for layer in report.layers:
        m = layer["metrics"]
        assert m["D_l"] == pytest.approx(4 * m["nc1"], rel=1e-12) and m["acc_ncc"] == 1.0
        assert m["acc_linear_probe"] is not None and m["rank_numerical_total"] == D0


def test_fit_decay_and_plateau_by_hand():
    fit = depth.fit_decay([1, 2, 3, 4], [math.exp(2 - 0.5 * k) for k in (1, 2, 3, 4)])
    assert fit["rho"] == pytest.approx(0.5) and fit["a"] == pytest.approx(2) and fit["r2"] == pytest.approx(1)
    noisy = depth.fit_decay([1, 2, 3], [1.0, 0.5, 0.5])
    x, ly = np.array([1, 2, 3.0]), np.log([1.0, 0.5, 0.5])
    slope, a = np.polyfit(x, ly, 1)
    r2 = 1 - np.sum((ly - (a + slope * x)) ** 2) / np.sum((ly - ly.mean()) ** 2)
    assert noisy["rho"] == pytest.approx(-slope) and noisy["a"] == pytest.approx(a) and noisy["r2"] == pytest.approx(r2)
    assert depth.fit_decay([1, 2, 3], [None, 0.0, 2.0]) == {"rho": None, "a": None, "r2": None, "layers": 1}
    assert depth.plateau_start([0.5, 0.8, 0.95, 0.955, 0.958]) == 2
    assert depth.plateau_start([0.5, 0.9, 0.6, 0.905]) == 1  # a later point within a point of 0.9 is no gain
    assert depth.plateau_start([None, None]) is None


# ------------------------------------------------------------------------------------------------ the probe
def _ridge_reference(H: np.ndarray, y: np.ndarray) -> float:
    """Ridge regression of one-hot labels on centred features, as docs/metrics.md defines it, by numpy lstsq on
    the stacked system (no sufficient statistics)."""
    N, d = H.shape
    classes = np.unique(y)
    Y = (y[:, None] == classes[None, :]).astype(float)
    mu, ybar = H.mean(0), Y.mean(0)
    Xc, Yc = H - mu, Y - ybar
    lam = 1e-3 * np.trace(Xc.T @ Xc / N) / d
    A = np.vstack([Xc / np.sqrt(N), np.sqrt(lam) * np.eye(d)])
    B = np.vstack([Yc / np.sqrt(N), np.zeros((d, len(classes)))])
    beta = np.linalg.lstsq(A, B, rcond=None)[0]
    pred = classes[np.argmax(Xc @ beta + ybar, axis=1)]
    return float(np.mean(pred == y))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_probe_matches_ridge_regression_by_definition(seed):
    rng = np.random.default_rng(seed)
    C, d, n = 5, 7, 300
    y = rng.integers(0, C, n)
    H = rng.normal(size=(C, d))[y] * 0.8 + rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    r = nc_probe.analyze_features(H, y, linear_probe=True)
    acc = _ridge_reference(H, y)
    assert 0.3 < acc < 1.0  # neither trivial nor perfect: the test can tell probes apart
    assert r.metrics["acc_linear_probe"] == pytest.approx(acc, abs=1e-12)
    assert "acc_linear_probe" not in nc_probe.analyze_features(H, y).metrics  # only when asked


# ----------------------------------------------------------------------------------------- the deep sample
@pytest.fixture(scope="module")
def deep_report():
    return nc_probe.analyze_layers("sample:deep", device="cpu")


def test_the_deep_sample_shows_the_depth_law(deep_report):
    r = deep_report
    assert r.names == [f"blocks.{i}" for i in range(8)]  # @penultimate is blocks.7's output: analysed once
    D = r.values("D_l")
    assert all(a > b for a, b in zip(D, D[1:])), D
    law = r.laws["D_l"]
    assert law["rho"] > 0.2 and law["r2"] > 0.9 and law["layers"] == 8
    assert r.layers[-1]["metrics"]["acc_model"] == 1.0  # the head's layer keeps W and b
    assert not any("@penultimate" in w for w in r.warnings)  # the default selection does not warn about itself


def test_tidy_table_and_json_round_trip(deep_report, tmp_path):
    df = deep_report.tidy("deep")
    assert list(df.columns) == ["model", "layer", "depth", "metric", "value"]
    per_layer = len(deep_report.layers[0]["metrics"])
    assert len(df) == 8 * per_layer + 3 and set(df["model"]) == {"deep"}
    row = df[(df.layer == "blocks.3") & (df.metric == "D_l")]
    assert row["value"].item() == deep_report.layers[3]["metrics"]["D_l"] and row["depth"].item() == 4
    assert df[df.metric == "rho"]["value"].item() == deep_report.laws["D_l"]["rho"]
    back = nc_probe.LayerReport.load(deep_report.save(tmp_path / "l.json"))
    assert back.layers == json.loads(deep_report.to_json())["layers"] and back.laws == deep_report.laws


# ---------------------------------------------------------------------------------------------------- CLI
def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_layers_writes_every_output(tmp_path):
    out = tmp_path / "o"
    res = run("layers", "--json", tmp_path / "l.json", "--out", out, "--plots", tmp_path / "p", "--html",
              tmp_path / "l.html")
    assert res.exit_code == 0, res.output
    assert "blocks.7" in res.output and "rho" in res.output
    data = json.loads((tmp_path / "l.json").read_text())
    assert data["kind"] == "layers" and len(data["layers"]) == 8
    assert sorted(p.name for p in out.iterdir()) == ["layers.csv", "layers.json"]
    assert {p.name for p in (tmp_path / "p").iterdir()} >= {"fuzziness.png", "rates.svg", "accuracy.png"}
    page = (tmp_path / "l.html").read_text()
    assert "<img" in page and "blocks.7" in page and "http" not in page.split("</style>", 1)[1].split("docs")[0]


def test_cli_layers_tidy_table_on_stdout():
    res = run("layers", "sample:ce", "--format", "csv", "--layers", "backbone.2,backbone.5")
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0] == "model,layer,depth,metric,value" and any(",backbone.5,2,D_l," in li for li in lines)


@pytest.mark.parametrize("args, words", [
    (["--layers", "nope"], "--layers item 'nope' matches no module"),
    (["--pool", "max"], "--pool 'max' is not one of"),
    (["--format", "parquet"], "--format parquet is binary and needs a folder"),
    (["--format", "xml"], "--format 'xml' is not one of"),
])
def test_cli_layers_bad_options_exit_2_with_one_line(args, words, tmp_path):
    res = run("layers", "sample:ce", "--json", tmp_path / "l.json", *args)
    assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "l.json").exists()


def test_cli_inspect_marks_the_layer_taps():
    res = run("inspect", "sample:deep")
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line for line in res.output.splitlines() if line.count("│") > 3}
    assert "layers" in rows["blocks.3"] and "layers" not in rows["blocks.3.act"] and "layers" not in rows["stem"]
    res = run("inspect", "sample:deep", "--layers", "stem")
    rows = {line.split("│")[1].strip(): line for line in res.output.splitlines() if line.count("│") > 3}
    assert "layers" in rows["stem"] and "layers" not in rows["blocks.3"]


def test_compare_overlays_layer_reports(tmp_path, deep_report):
    deep_json = deep_report.save(tmp_path / "deep.json")
    res = run("compare", "ce=sample:ce", f"deep={deep_json}", "--layers", "@blocks,@penultimate", "--json",
              tmp_path / "c.json", "--plots", tmp_path / "p", "--html", tmp_path / "c.html")
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["kind"] == "layer-comparison" and data["labels"] == ["ce", "deep"]
    laws = {row["model"]: row for row in data["laws"]}
    assert laws["deep"]["rho"] == pytest.approx(deep_report.laws["D_l"]["rho"], rel=1e-12)
    assert laws["ce"]["layers"] == 3 and "depth laws" in res.output
    assert (tmp_path / "p" / "fuzziness.png").is_file() and "ce" in (tmp_path / "c.html").read_text()
    # a layer JSON alone makes it a layer comparison; a single-layer input cannot join one
    res = run("compare", f"deep={deep_json}", "one=sample:ce_epoch5", "--json", tmp_path / "d.json")
    assert res.exit_code == 0 and json.loads((tmp_path / "d.json").read_text())["labels"] == ["deep", "one"]
    single = nc_probe.analyze_checkpoint("sample:ce", device="cpu").save(tmp_path / "single.json")
    res = run("compare", f"deep={deep_json}", f"single={single}", "--json", tmp_path / "e.json")
    assert res.exit_code == 2 and "single-layer report" in res.output and not (tmp_path / "e.json").exists()


def test_cka_between_layers_matches_the_definition(deep_report):
    model, meta = samples.load_sample_checkpoint(samples.sample_path("deep"))
    x, _ = samples.digits_arrays(meta["split"])
    feats = []
    hooks = [b.register_forward_hook(lambda m, a, out: feats.append(out.detach().double().numpy()))
             for b in model.blocks]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    cen = [f - f.mean(0) for f in feats]

    def cka(X, Y):  # Kornblith et al.'s linear CKA, centred Gram form
        return np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y))

    ref = np.array([[cka(a, b) for b in cen] for a in cen])
    got = np.array(deep_report.cka["matrix"], dtype=float)
    assert deep_report.cka["layers"] == deep_report.names
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)  # the features were float32 at the taps
    assert 0.5 < got[0, 7] < got[0, 1] < 1.0  # nearby blocks are more alike than distant ones


def test_cka_between_layers_is_skipped_beyond_the_budget():
    r = nc_probe.analyze_layers("sample:ce", device="cpu", memory_budget=4 * 8 * (3 * 64) ** 2 - 4)
    assert r.cka is None and any("no CKA between layers" in w for w in r.warnings)
