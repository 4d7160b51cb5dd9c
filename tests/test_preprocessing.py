"""The model's own image preprocessing (nc_probe.data.preprocessing): Hugging Face preprocessor configs read as JSON
only, checkpoint metadata, the default and its warning, flags over all of it, the report's record (checked on reading)
and compare's warning; with torchvision and timm installed, their eval transforms reproduced pixel for pixel and the
held-out check: a torchvision resnet18 on an image folder gives the same nc1 with no flags as with ImageNet's
mean/std typed, and another one unnormalised."""

from __future__ import annotations

import copy
import json
import math
import sys

import numpy as np
import pytest
import torch

import nc_probe
from nc_probe.core.errors import InputError
from nc_probe.data.batches import iter_batches
from nc_probe.data.datasets import open_data
from nc_probe.data.image_folder import ImageTransform
from nc_probe.data.preprocessing import (
    UNIT_SCALE,
    Preprocessing,
    preprocessing_difference,
    preprocessing_for,
    read_preprocessor_config,
)
from nc_probe.reports.compare import compare_reports
from nc_probe.reports.report import Report
from nc_probe.reports.report_checks import check_report

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: ViTImageProcessor's defaults, as save_pretrained writes them.
VIT_CONFIG = {
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "ViTImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 2,
    "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224},
    "auto_map": {"AutoImageProcessor": "evil_processor.EvilProcessor"},  # never imported
}


def _write_images(root, sizes, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls, dims in sizes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, (w, h) in enumerate(dims):
            Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def _all(source, batch_size=64):
    xs, ys = zip(*iter_batches(source, batch_size=batch_size), strict=True)
    return torch.cat(xs), torch.cat(ys)


def _folder(tmp_path, name, config) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return str(folder)


# ------------------------------------------------------------------------------------------ Hugging Face
def test_a_vit_preprocessor_config_is_read_as_json_only(tmp_path):
    folder = _folder(tmp_path, "vit", VIT_CONFIG)
    for p in (preprocessing_for(None, {}, folder), preprocessing_for("hf:vit", {"hf_folder": folder}, None)):
        assert p.known and p.source == "preprocessor_config.json" and p.warning() is None
        assert p.resize == (224, 224) and p.crop is None and p.interpolation == "bilinear"
        assert p.mean == (0.5, 0.5, 0.5) and p.std == (0.5, 0.5, 0.5) and p.rescale == UNIT_SCALE
    assert "evil_processor" not in sys.modules
    record = preprocessing_for(None, {}, folder).record()
    assert record == {"source": "preprocessor_config.json", "resize": [224, 224], "crop": None,
                      "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3, "overridden": []}
    # images of any size become 224 x 224 and [-1, 1]
    pytest.importorskip("PIL")
    _write_images(tmp_path / "img", {"a": [(300, 200), (64, 90)], "b": [(224, 224)]})
    x, _ = _all(open_data(str(tmp_path / "img"), preprocessing=preprocessing_for(None, {}, folder)))
    assert x.shape == (3, 3, 224, 224) and float(x.min()) >= -1 and float(x.max()) <= 1


def test_other_image_processors(tmp_path):
    clip = preprocessing_for(None, {}, _folder(tmp_path, "clip", {
        "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "do_resize": True,
        "size": {"shortest_edge": 224}, "resample": 3, "image_mean": [0.48, 0.46, 0.41],
        "image_std": [0.27, 0.26, 0.28]}))
    assert (clip.resize, clip.crop, clip.interpolation) == (224, (224, 224), "bicubic")
    convnext = preprocessing_for(None, {}, _folder(tmp_path, "convnext", {
        "image_processor_type": "ConvNextImageProcessor", "crop_pct": 0.875, "size": {"shortest_edge": 224},
        "resample": 3, "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}))
    assert (convnext.resize, convnext.crop) == (256, 224)
    legacy = preprocessing_for(None, {}, _folder(tmp_path, "legacy", {"size": 384, "do_normalize": False,
                                                                          "do_rescale": False}))
    assert legacy.resize == (384, 384) and legacy.mean is None and legacy.rescale == 1.0
    assert legacy.record()["rescale"] == 1.0
    odd = preprocessing_for("hf:x", {}, _folder(tmp_path, "odd", {"size": {"longest_edge": 512},
                                                                   "image_mean": [0.5], "image_std": [0.5]}))
    assert not odd.known and "longest_edge" in odd.warning() and "does not reproduce" in odd.warning()
    missing = tmp_path / "empty"
    missing.mkdir()
    none = preprocessing_for("hf:x", {"hf_folder": str(missing)})
    assert not none.known and "preprocessor_config.json is not in" in none.warning()


@pytest.mark.parametrize("name, config, field", [
    ("a list", [1, 2], "not"),
    ("not JSON", "{size: 224", "not a readable JSON"),
    ("NaN", '{"image_mean": [NaN, 0, 0]}', "not a readable JSON"),
    ("size text", {"size": "224px"}, "size is a string"),
    ("size negative", {"size": {"height": -1, "width": 3}}, "size.height is -1"),
    ("size huge", {"size": {"shortest_edge": 10**9}}, "size.shortest_edge is 1000000000"),
    ("size a float", {"size": {"shortest_edge": 224.5}}, "size.shortest_edge is a number"),
    ("mean text", {"image_mean": "imagenet"}, "image_mean is a string"),
    ("mean nested", {"image_mean": [[0.5]]}, r"image_mean\[0\] is a list"),
    ("mean too long", {"image_mean": [0.5] * 50}, "image_mean has 50 values"),
    ("std zero", {"image_mean": [0.5], "image_std": [0.0]}, "image_std contains a zero"),
    ("resample 9", {"resample": 9}, "resample is 9"),
    ("resample text", {"resample": "bicubic"}, "resample is a string"),
    ("flag text", {"do_resize": "yes"}, "do_resize is a string"),
    ("rescale text", {"rescale_factor": "1/255"}, "rescale_factor is a string"),
    ("crop_pct 2", {"crop_pct": 2}, "crop_pct is 2"),
])
def test_malformed_preprocessor_configs_are_one_line_errors(name, config, field, tmp_path):
    folder = _folder(tmp_path, "m", config)
    with pytest.raises(InputError, match=field) as err:
        preprocessing_for(None, {}, folder)
    text = str(err.value)
    assert "\n" not in text and "preprocessor_config.json" in text


def test_a_huge_preprocessor_config_is_refused_unread(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    with open(folder / "preprocessor_config.json", "wb") as f:
        f.truncate(2 << 20)
    with pytest.raises(InputError, match="larger than any image processor config"):
        read_preprocessor_config(folder / "preprocessor_config.json")


# ------------------------------------------------------------------------------------------ metadata, default, flags
def test_checkpoint_metadata_is_the_models_own():
    p = preprocessing_for("mypkg.models:net", {"image_size": 32, "mean": [0.49, 0.48, 0.45], "std": [0.2] * 3})
    assert p.known and p.source == "checkpoint metadata" and p.warning() is None
    assert (p.resize, p.crop, p.mean) == (32, 32, (0.49, 0.48, 0.45))
    only_size = preprocessing_for(None, {"image_size": 28})
    assert only_size.known and only_size.mean is None and only_size.warning() is None


def test_the_default_says_what_it_does():
    p = preprocessing_for("mypkg.models:net", {})
    assert not p.known and p.source == "default" and (p.resize, p.crop, p.mean, p.std) == (None, None, None, None)
    assert "no model preprocessing is known for 'mypkg.models:net'" in p.warning()
    assert "images are only scaled to [0, 1]" in p.warning() and "{mean}" in p.warning()
    sized = p.with_flags(image_size=64)
    assert (sized.resize, sized.crop, sized.overridden) == (64, 64, ("image_size",)) and sized.warning()
    typed = p.with_flags(mean=[0.5] * 3, std=[0.25] * 3)
    assert typed.source == "flags" and typed.warning() is None and typed.overridden == ("mean", "std")
    assert "this model" in Preprocessing.unknown().warning()


def test_flags_replace_only_what_they_name():
    torchvision_like = Preprocessing(source="torchvision:X", resize=256, crop=224, mean=IMAGENET_MEAN,
                                     std=IMAGENET_STD, known=True)
    p = torchvision_like.with_flags(mean=[0, 0, 0], std=[1, 1, 1])
    assert (p.resize, p.crop, p.mean, p.std, p.source) == (256, 224, (0, 0, 0), (1, 1, 1), "torchvision:X")
    assert p.overridden == ("mean", "std")
    assert torchvision_like.with_flags(image_size=160).resize == 182  # 160 * 256 / 224, floored
    assert torchvision_like.with_flags(image_size=224) == replace_overridden(torchvision_like, ("image_size",))
    timm_like = Preprocessing(source="timm pretrained_cfg", resize=235, crop=224, crop_pct=0.95, known=True)
    assert timm_like.with_flags(image_size=288).resize == math.floor(288 / 0.95) == 303
    hf_exact = Preprocessing(source="preprocessor_config.json", resize=(224, 224), known=True)
    assert hf_exact.with_flags(image_size=384).resize == (384, 384)
    deit = Preprocessing(source="preprocessor_config.json", resize=(256, 256), crop=(224, 224), known=True)
    assert (deit.with_flags(image_size=112).resize, deit.with_flags(image_size=112).crop) == ((128, 128), 112)
    meta = preprocessing_for("torchvision:nothing_such", {"mean": [0.1, 0.2, 0.3]})
    assert meta.source == "checkpoint metadata" and meta.mean == (0.1, 0.2, 0.3)


def replace_overridden(p, overridden):
    import dataclasses

    return dataclasses.replace(p, overridden=overridden)


def test_resize_and_crop_follow_torchvision_sizes():
    from PIL import Image

    t = ImageTransform(Preprocessing(resize=256, crop=224, known=True))
    assert t(Image.new("RGB", (300, 200))).shape == (3, 224, 224)  # 300x200 -> 384x256 -> crop
    small = ImageTransform(Preprocessing(crop=(40, 30), known=True))(Image.new("RGB", (20, 10), (255, 255, 255)))
    assert small.shape == (3, 40, 30) and float(small.sum()) == 3 * 20 * 10  # padded with zeros, centred
    gray = ImageTransform(Preprocessing(resize=8, crop=8, mean=IMAGENET_MEAN, std=IMAGENET_STD, known=True), 1)
    assert gray(Image.new("L", (16, 12), 255)).shape == (1, 8, 8)  # a 1-channel model: the averages


# ------------------------------------------------------------------------------------------ through the pipeline
def _image_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3)).eval()


def test_the_report_records_the_preprocessing(tmp_path):
    pytest.importorskip("PIL")
    _write_images(tmp_path / "img", {"a": [(12, 10), (9, 16)], "b": [(20, 20)], "c": [(10, 10), (11, 13)]})
    model, data = _image_model(), str(tmp_path / "img")
    report = nc_probe.analyze_checkpoint(model, data=data, device="cpu", image_size=8)
    record = report.inputs["preprocessing"]
    assert record["source"] == "default" and (record["resize"], record["crop"], record["mean"]) == (8, 8, None)
    assert record["overridden"] == ["image_size"]
    assert any("no model preprocessing is known" in w for w in report.warnings)
    report.save(tmp_path / "r.json")
    assert Report.load(tmp_path / "r.json").inputs["preprocessing"] == record  # round-trips
    typed = nc_probe.analyze_checkpoint(model, data=data, device="cpu", image_size=8, mean="0.5,0.5,0.5",
                                        std="0.25,0.25,0.25")
    assert typed.inputs["preprocessing"]["source"] == "flags"
    assert not any("no model preprocessing" in w for w in typed.warnings)
    pair = compare_reports({"plain": report, "typed": typed})
    assert any("plain and typed preprocess their inputs differently (mean none vs 0.5,0.5,0.5; std none vs "
               "0.25,0.25,0.25)" in w for w in pair.warnings)
    arrays = nc_probe.analyze_checkpoint(model, data=(torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2] * 2)),
                                         device="cpu")
    assert arrays.inputs["preprocessing"] == {"source": "data as given"}
    assert not any("no model preprocessing" in w for w in arrays.warnings)


def test_checkpoint_metadata_normalises_arrays_but_not_the_users_datasets(tmp_path):
    model = _image_model()
    from nc_probe.analysis.pipeline import open_source
    from nc_probe.core.settings import DataSettings
    from nc_probe.load.checkpoint import LoadedModel

    loaded = LoadedModel(model, "module", "<m>", metadata={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    x = torch.ones(4, 3, 8, 8)
    source = open_source(loaded, DataSettings(data=(x, torch.tensor([0, 1, 2, 0]))), trust=False)
    assert torch.allclose(_all(source)[0], torch.ones(4, 3, 8, 8))  # (1 - 0.5) / 0.5
    assert source.preprocessing == {"source": "data as given", "mean": [0.5] * 3, "std": [0.5] * 3}

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(3, 8, 8), i

    source = open_source(loaded, DataSettings(data=Plain()), trust=False)  # not refused: the user's own data
    assert source.preprocessing == {"source": "data as given"}


# ------------------------------------------------------------------------------------------ report checks, compare
GOOD = {"source": "torchvision:ResNet18_Weights.IMAGENET1K_V1", "resize": 256, "crop": 224,
        "interpolation": "bilinear", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "overridden": []}


@pytest.fixture(scope="module")
def report_data():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    report = nc_probe.analyze_features(rng.normal(size=(3, 4))[y] + 0.1 * rng.normal(size=(60, 4)), y)
    return json.loads(report.to_json())


@pytest.mark.parametrize("value", [GOOD, None, {"source": "data as given"}, {**GOOD, "resize": [256, 320]},
                                   {**GOOD, "rescale": 1.0, "future_key": {"x": 1}}])
def test_a_report_accepts_well_formed_preprocessing(value, report_data):
    data = copy.deepcopy(report_data)
    data["inputs"]["preprocessing"] = value
    assert check_report(data, "r.json")["inputs"]["preprocessing"] == value


@pytest.mark.parametrize("value, field", [
    ([1, 2], "inputs.preprocessing is a list"),
    ("imagenet", "inputs.preprocessing is a string"),
    ({**GOOD, "resize": "big"}, "inputs.preprocessing.resize is a string"),
    ({**GOOD, "resize": [1, 2, 3]}, "inputs.preprocessing.resize has 3 entries"),
    ({**GOOD, "crop": 0}, "inputs.preprocessing.crop is 0"),
    ({**GOOD, "crop": [224, -1]}, "inputs.preprocessing.crop has a side smaller than 1"),
    ({**GOOD, "crop": 10**30}, "inputs.preprocessing.crop is an integer out of range"),
    ({**GOOD, "mean": "x"}, "inputs.preprocessing.mean is a string"),
    ({**GOOD, "mean": [[0.5]]}, r"inputs.preprocessing.mean\[0\] is a list"),
    ({**GOOD, "std": [None]}, r"inputs.preprocessing.std\[0\] is null"),
    ({**GOOD, "source": 5}, "inputs.preprocessing.source is an integer"),
    ({**GOOD, "interpolation": ["x"]}, "inputs.preprocessing.interpolation is a list"),
    ({**GOOD, "overridden": "mean"}, "inputs.preprocessing.overridden is a string"),
    ({**GOOD, "rescale": "1/255"}, "inputs.preprocessing.rescale is a string"),
])
def test_a_report_refuses_malformed_preprocessing(value, field, report_data):
    data = copy.deepcopy(report_data)
    data["inputs"]["preprocessing"] = value
    with pytest.raises(InputError, match=field) as err:
        check_report(data, "r.json")
    assert "\n" not in str(err.value) and "r.json" in str(err.value)


def test_preprocessing_difference():
    typed = {**GOOD, "source": "torchvision:ResNet18_Weights.IMAGENET1K_V1", "overridden": ["mean", "std"]}
    assert preprocessing_difference(GOOD, typed) is None  # the same pixels, whoever chose them
    assert preprocessing_difference(GOOD, None) is None and preprocessing_difference(None, None) is None
    assert preprocessing_difference({"source": "data as given"}, {"source": "data as given"}) is None
    text = preprocessing_difference(GOOD, {**GOOD, "crop": 160, "resize": 182, "interpolation": "bicubic"})
    assert text.startswith("preprocess their inputs differently (resize 256 vs 182; crop 224 vs 160; "
                           "interpolation bilinear vs bicubic)")
    assert "rescale 0.00392157 vs 1" in preprocessing_difference(GOOD, {**GOOD, "rescale": 1.0})


# ------------------------------------------------------------------------------------------ torchvision and timm
def _pil_images():
    from PIL import Image

    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
            for w, h in ((300, 200), (181, 263), (224, 224), (97, 150), (640, 479))]


def test_torchvision_transforms_are_reproduced(monkeypatch, tmp_path):
    pytest.importorskip("torchvision")
    from torchvision.models import get_model_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # nothing may be downloaded
    p = preprocessing_for("torchvision:resnet18", {})
    assert p.source == "torchvision:ResNet18_Weights.IMAGENET1K_V1" and p.known and p.warning() is None
    assert (p.resize, p.crop, p.interpolation, p.mean, p.std) == (256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
    assert preprocessing_for("torchvision:resnet50", {}).resize == 232  # its DEFAULT weights: IMAGENET1K_V2
    ours, theirs = ImageTransform(p), get_model_weights("resnet18").DEFAULT.transforms()
    for img in _pil_images():
        assert torch.equal(ours(img), theirs(img))
    assert not (tmp_path / "torch_home").exists()
    assert not preprocessing_for("torchvision:no_such_model", {}).known


def test_timm_transforms_are_reproduced():
    timm = pytest.importorskip("timm")
    pytest.importorskip("torchvision")
    model = timm.create_model("resnet18", pretrained=False)
    p = preprocessing_for("timm:resnet18", {}, model=model)
    assert p.source == "timm pretrained_cfg" and (p.resize, p.crop, p.interpolation) == (235, 224, "bicubic")
    assert preprocessing_for("timm:resnet18", {}) == p  # from the registry's pretrained_cfg, without a model
    config = timm.data.resolve_data_config({}, model=model)
    theirs = timm.data.create_transform(**config, is_training=False)
    ours = ImageTransform(p)
    for img in _pil_images():
        assert torch.equal(ours(img), theirs(img))


@pytest.fixture(scope="module")
def resnet_folder(tmp_path_factory):
    """A 4-class image folder of images of different sizes and a seeded 4-class resnet18 state_dict of each
    registry."""
    pytest.importorskip("PIL")
    root = tmp_path_factory.mktemp("resnet")
    rng = np.random.default_rng(0)
    sizes = {f"class{c}": [(int(rng.integers(120, 260)), int(rng.integers(120, 260))) for _ in range(4)]
             for c in range(4)}
    _write_images(root / "folder", sizes)
    return root


def test_a_torchvision_resnet18_gets_its_own_preprocessing(resnet_folder):
    torchvision = pytest.importorskip("torchvision")
    from typer.testing import CliRunner

    from nc_probe.cli.app import app

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=4).state_dict(), resnet_folder / "tv.pt")
    nc1 = {}
    for name, flags in (("none", []), ("imagenet", ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]),
                        ("raw", ["--mean", "0,0,0", "--std", "1,1,1"])):
        out = resnet_folder / f"{name}.json"
        result = CliRunner().invoke(app, ["analyze", str(resnet_folder / "tv.pt"), "--arch", "torchvision:resnet18",
                                          "--arch-kwargs", '{"num_classes": 4}', "--data",
                                          str(resnet_folder / "folder"), "--json", str(out), *flags])
        assert result.exit_code == 0, result.output[-2000:]
        report = json.loads(out.read_text())
        nc1[name] = report["metrics"]["nc1"]
        assert report["inputs"]["preprocessing"]["source"] == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
        assert not any("no model preprocessing" in w for w in report["warnings"])
    assert abs(nc1["none"] - nc1["imagenet"]) <= 1e-9 * max(1.0, abs(nc1["none"]))
    assert abs(nc1["none"] - nc1["raw"]) > 1e-3 * abs(nc1["none"])


def test_a_timm_resnet18_batches_images_of_different_sizes(resnet_folder):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=4).state_dict(), resnet_folder / "t.pt")
    report = nc_probe.analyze_checkpoint(str(resnet_folder / "t.pt"), arch="timm:resnet18",
                                         arch_kwargs={"num_classes": 4}, data=str(resnet_folder / "folder"),
                                         device="cpu")
    assert report.inputs["num_samples"] == 16 and math.isfinite(report.metrics["nc1"])
    assert report.inputs["preprocessing"]["source"] == "timm pretrained_cfg"
    assert report.inputs["preprocessing"]["crop"] == 224
