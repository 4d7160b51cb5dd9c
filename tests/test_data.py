"""Data specs: the shipped digits, arrays, image folders, torchvision datasets (a stand-in module), user
functions; split, limit and class filtering; one-line errors."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
import torch

from nc_probe.core.errors import InputError
from nc_probe.data.batches import iter_batches
from nc_probe.data.datasets import open_data, parse_class_selection


def _all(source, batch_size=64, workers=0):
    xs, ys = [], []
    for x, y in iter_batches(source, batch_size=batch_size, workers=workers):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _one_line(err, where) -> str:
    text = str(err.value)
    assert "\n" not in text and str(where) in text
    return text


# ------------------------------------------------------------------------------------------ sample digits
def test_sample_digits_splits():
    train, test = open_data("sample:digits"), open_data("sample:digits", split="test")
    assert train.split == "train" and len(train) + len(test) == 1797
    x, y = _all(train, batch_size=500)
    assert x.shape == (len(train), 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.tolist()) == set(range(10))
    with pytest.raises(InputError, match=r"\bsplit\b"):
        open_data("sample:digits", split="validation")
    with pytest.raises(InputError, match="sample:digits"):
        open_data("sample:faces")


def test_limit_is_evenly_spread_and_classes_filter():
    src = open_data("sample:digits", limit=50)
    x, y = _all(src)
    assert len(y) == 50 and len(set(y.tolist())) == 10
    src = open_data("sample:digits", classes=[1, 3], limit=20)
    _, y = _all(src)
    assert len(y) == 20 and set(y.tolist()) == {1, 3}
    names = [f"c{i}" for i in range(10)]
    src = open_data((torch.zeros(30, 2), torch.arange(30) % 10), classes="c2,5-6", class_names=names)
    _, y = _all(src)
    assert sorted(y.tolist()) == [2] * 3 + [5] * 3 + [6] * 3 and src.class_names == names
    with pytest.raises(InputError, match="no samples of"):
        open_data("sample:digits", classes=[42])
    with pytest.raises(InputError, match="limit must"):
        open_data("sample:digits", limit=0)


def test_parse_class_selection():
    assert parse_class_selection(None) is None
    assert parse_class_selection("0-2,7", None) == [0, 1, 2, 7]
    assert parse_class_selection(["cat", 3], ["dog", "cat"]) == [1, 3]
    with pytest.raises(InputError, match="neither a class index"):
        parse_class_selection("bird", ["dog", "cat"])


# ------------------------------------------------------------------------------------------ arrays
def test_npz_and_pt_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)).astype(np.float32), np.arange(30) % 3
    np.savez(tmp_path / "a.npz", x=x, y=y, class_names=np.array(["a", "b", "c"]))
    src = open_data(str(tmp_path / "a.npz"), mean=[1.0], std=[2.0])
    assert src.class_names == ["a", "b", "c"] and src.num_classes == 3
    xb, yb = _all(src, batch_size=7)
    np.testing.assert_allclose(xb.numpy(), (x - 1) / 2, rtol=1e-6)
    assert yb.tolist() == y.tolist()
    torch.save({"inputs": torch.tensor(x), "targets": torch.tensor(y)}, tmp_path / "a.pt")
    xb, _ = _all(open_data(str(tmp_path / "a.pt")))
    np.testing.assert_array_equal(xb.numpy(), x)


def test_array_splits_and_images(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(6, 5, 5, 3), dtype=np.uint8)  # NHWC uint8, as many datasets store it
    np.savez(tmp_path / "s.npz", x_train=imgs, y_train=np.arange(6) % 2, x_test=imgs[:2], y_test=[0, 1])
    src = open_data(str(tmp_path / "s.npz"))
    assert src.split == "train"
    xb, _ = _all(src)
    assert xb.shape == (6, 3, 5, 5) and float(xb.max()) <= 1.0
    np.testing.assert_allclose(xb[0, :, 1, 2].numpy(), imgs[0, 1, 2] / 255, rtol=1e-6)
    assert len(open_data(str(tmp_path / "s.npz"), split="test")) == 2
    with pytest.raises(InputError) as err:
        open_data(str(tmp_path / "s.npz"), split="val")
    _one_line(err, tmp_path / "s.npz")


@pytest.mark.parametrize("arrays,match", [({"a": np.ones(3)}, "needs arrays x and y"),
                                          ({"x": np.ones((3, 2)), "y": np.ones(4)}, "3 rows"),
                                          ({"x": np.ones((3, 2)), "y": [0.5, 1, 2]}, "whole numbers"),
                                          ({"x": np.ones((3, 2)), "y": [0, -1, 2]}, "negative")])
def test_bad_arrays(tmp_path, arrays, match):
    f = tmp_path / "bad.npz"
    np.savez(f, **arrays)
    with pytest.raises(InputError, match=match) as err:
        open_data(str(f))
    _one_line(err, f)


def test_damaged_or_missing_data_files(tmp_path):
    for name, blob in (("empty.npz", b""), ("cut.npz", b"PK\x03\x04garbage"), ("cut.pt", b"PK\x03\x04xx")):
        f = tmp_path / name
        f.write_bytes(blob)
        with pytest.raises(InputError) as err:
            open_data(str(f))
        _one_line(err, f)
    with pytest.raises(InputError, match="no such file or folder") as err:
        open_data(str(tmp_path / "nowhere" / "images"))
    _one_line(err, tmp_path / "nowhere" / "images")
    with pytest.raises(InputError, match="not a file, a folder or a known data spec"):
        open_data("digits")


# ------------------------------------------------------------------------------------------ image folders
def _write_images(root, sizes):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, dims in sizes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, (w, h) in enumerate(dims):
            Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_image_folder(tmp_path):
    pytest.importorskip("PIL")
    _write_images(tmp_path / "train", {"cat": [(10, 8), (12, 12)], "dog": [(9, 14)], "eel": [(8, 8)]})
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    src = open_data(str(tmp_path), split="train", image_size=6, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert src.class_names == ["cat", "dog", "eel"] and src.num_classes == 3
    x, y = _all(src, batch_size=3)
    assert x.shape == (4, 3, 6, 6) and y.tolist() == [0, 0, 1, 2]
    assert float(x.min()) >= -2.0 - 1e-6 and float(x.max()) <= 2.0 + 1e-6
    gray = open_data(str(tmp_path / "train"), image_size=4, channels=1)
    assert _all(gray)[0].shape == (4, 1, 4, 4)
    mixed = open_data(str(tmp_path / "train"))  # no --image-size and images of different sizes
    with pytest.raises(InputError, match="image_size") as err:
        _all(mixed)
    _one_line(err, tmp_path / "train")
    with pytest.raises(InputError, match="no sub-folder for split='val'") as err:
        open_data(str(tmp_path), split="val")
    _one_line(err, tmp_path)
    (tmp_path / "train" / "eel" / "0.png").write_bytes(b"\x89PNG broken")
    for workers in (0, 2):  # from a worker process the error comes back as one line too
        with pytest.raises(InputError, match="cannot read the image") as err:
            _all(open_data(str(tmp_path / "train"), image_size=6), workers=workers)
        _one_line(err, tmp_path / "train" / "eel" / "0.png")


def test_image_folder_preprocessing_is_recorded(tmp_path):
    """Images of different sizes batch once a size is known (the model's, or image_size); the source records what
    was done and warns when the model's preprocessing is unknown; arrays and samples are used as given."""
    pytest.importorskip("PIL")
    from nc_probe.data.preprocessing import preprocessing_for

    _write_images(tmp_path / "train", {"cat": [(10, 8), (12, 12)], "dog": [(9, 14)], "eel": [(30, 17)]})
    model = preprocessing_for("mypkg.models:net", {"image_size": 6, "mean": [0.5] * 3, "std": [0.5] * 3})
    src = open_data(str(tmp_path / "train"), preprocessing=model)
    assert _all(src)[0].shape == (4, 3, 6, 6) and src.warnings == []
    assert src.preprocessing == {"source": "checkpoint metadata", "resize": 6, "crop": 6, "interpolation": "bilinear",
                                 "mean": [0.5] * 3, "std": [0.5] * 3, "overridden": []}
    src = open_data(str(tmp_path / "train"), preprocessing=model, image_size=4, std=[0.25] * 3)
    assert _all(src)[0].shape == (4, 3, 4, 4)
    assert src.preprocessing["std"] == [0.25] * 3 and src.preprocessing["overridden"] == ["image_size", "std"]
    plain = open_data(str(tmp_path / "train"), image_size=5)
    assert plain.preprocessing["source"] == "default" and "no model preprocessing is known" in plain.warnings[0]
    assert open_data("sample:digits").preprocessing == {"source": "data as given"}
    arrays = open_data((torch.zeros(4, 2), torch.arange(4)), mean=[1.0], std=[2.0])
    assert arrays.preprocessing == {"source": "data as given", "mean": [1.0], "std": [2.0]} and not arrays.warnings


def test_image_folder_with_some_of_the_classifiers_classes(tmp_path):
    """A folder holding 2 of a 5-class model's classes: mapped by the checkpoint's class names, or --class-map."""
    pytest.importorskip("PIL")
    _write_images(tmp_path / "val", {"dog": [(6, 6)] * 2, "eel": [(6, 6)]})
    names = ["ant", "bee", "cat", "dog", "eel"]
    src = open_data(str(tmp_path / "val"), class_names=names)
    assert src.num_classes == 5 and src.class_names == names and "by name" in src.notes[0]
    assert _all(src)[1].tolist() == [3, 3, 4]
    for class_map in ({"dog": 7, "eel": 2}, '{"dog": 7, "eel": 2}'):  # a partial map: the total is the model's
        src = open_data(str(tmp_path / "val"), class_map=class_map)
        assert _all(src)[1].tolist() == [7, 7, 2] and src.num_classes is None
        assert src.class_names[7] == "dog" and src.class_names[2] == "eel"
    txt = tmp_path / "classes.txt"
    txt.write_text("\n".join(names[::-1]) + "\n")  # line i is class i
    src = open_data(str(tmp_path / "val"), class_map=str(txt))
    assert _all(src)[1].tolist() == [1, 1, 0] and src.num_classes == 5
    with pytest.raises(InputError, match=r"folder\(s\) eel are not in the class map"):
        open_data(str(tmp_path / "val"), class_map={"dog": 1})
    with pytest.raises(InputError, match="non-negative class indices"):
        open_data(str(tmp_path / "val"), class_map='{"dog": -1, "eel": 0}')
    with pytest.raises(InputError, match="image folders only"):
        open_data("sample:digits", class_map={"0": 0})
    # without names or a map, folder order is used, and the model's check asks for --class-map
    assert open_data(str(tmp_path / "val")).num_classes == 2


def test_image_folder_class_map_through_the_pipeline(tmp_path):
    """Two digit classes as image folders, run through a 10-class model: refused with a pointer to --class-map
    (folder order would label them 0 and 1), accepted with it."""
    pytest.importorskip("PIL")
    from nc_probe.analysis.pipeline import analyze_checkpoint
    from nc_probe.load import samples

    _write_images(tmp_path / "val", {"three": [(8, 8)] * 3, "seven": [(8, 8)] * 3})
    model = torch.nn.Sequential(torch.nn.Flatten(), samples.digits_net(in_dim=192)).eval()
    with pytest.raises(InputError, match="class_map"):
        analyze_checkpoint(model, data=str(tmp_path / "val"), device="cpu")
    report = analyze_checkpoint(model, data=str(tmp_path / "val"), device="cpu",
                                class_map='{"three": 3, "seven": 7}')
    assert report.inputs["class_ids"] == [3, 7] and report.inputs["class_names"] == ["three", "seven"]


def test_image_folder_errors(tmp_path, monkeypatch):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match="no class sub-folders") as err:
        open_data(str(tmp_path / "flat"))
    _one_line(err, tmp_path / "flat")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        open_data(str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(InputError, match="Pillow") as err:
        open_data(str(tmp_path / "empty"))
    _one_line(err, tmp_path / "empty")


# ------------------------------------------------------------------------------------------ torchvision
def test_torchvision_dataset_never_downloads(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    from PIL import Image

    seen = {}

    class FakeCIFAR(torch.utils.data.Dataset):
        classes = ["plane", "car"]

        def __init__(self, root, train=True, transform=None, download=True):
            seen.update(root=root, train=train, download=download)
            self.transform = transform
            self.targets = [0, 1, 1] if train else [1]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return self.transform(Image.new("RGB", (8, 8), color=(255, 0, 0))), self.targets[i]

    class Missing(torch.utils.data.Dataset):
        def __init__(self, root, split="train", transform=None, download=True):
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    tv = types.ModuleType("torchvision")
    # torchvision.datasets lists its dataset classes in __all__; other attributes (its imported modules) are
    # never looked up by a name from a spec.
    tv.datasets = types.SimpleNamespace(CIFAR10=FakeCIFAR, SVHN=Missing, os=os, __all__=["CIFAR10", "SVHN"])
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tv.datasets)
    src = open_data(f"torchvision:CIFAR10:{tmp_path}", split="test", mean=[0, 0, 0], std=[1, 1, 1])
    assert seen == {"root": str(tmp_path), "train": False, "download": False}
    assert src.class_names == ["plane", "car"] and len(src) == 1
    x, y = _all(src)
    assert x.shape == (1, 3, 8, 8) and float(x[0, 0].mean()) == 1.0 and y.tolist() == [1]
    with pytest.raises(InputError, match="never downloads"):
        open_data(f"torchvision:SVHN:{tmp_path}")
    with pytest.raises(InputError, match="no dataset"):
        open_data(f"torchvision:ImageNot:{tmp_path}")
    with pytest.raises(InputError, match="no dataset"):
        open_data(f"torchvision:os:{tmp_path}")
    with pytest.raises(InputError, match="root folder"):
        open_data("torchvision:CIFAR10")
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(InputError, match="(?i)pip install torchvision"):
        open_data(f"torchvision:CIFAR10:{tmp_path}")


# ------------------------------------------------------------------------------------------ functions
FUNCS = '''
import torch

class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        for i in range(20):
            yield torch.full((2,), float(i)), i % 4

def dataset(split="train"):
    n = 12 if split == "train" else 4
    return torch.utils.data.TensorDataset(torch.arange(2 * n, dtype=torch.float32).reshape(n, 2),
                                          torch.arange(n) % 3)

def loader():
    ds = torch.utils.data.TensorDataset(torch.ones(10, 2), torch.arange(10) % 2)
    return torch.utils.data.DataLoader(ds, batch_size=4)

def stream():
    return Stream()

def dicts():
    return [{"image": torch.ones(2), "label": 1}, {"image": torch.zeros(2), "label": 0}]

def broken():
    raise KeyError("boom")
'''


def test_function_specs(tmp_path):
    f = tmp_path / "mydata.py"
    f.write_text(FUNCS)
    assert len(open_data(f"{f}:dataset", split="test")) == 4
    assert len(open_data(f"{f}:dataset")) == 12
    src = open_data(f"{f}:loader", classes=[1], limit=3)  # a DataLoader: filtered batch by batch
    x, y = _all(src)
    assert y.tolist() == [1, 1, 1]
    src = open_data(f"{f}:stream", classes=[0, 3])
    _, y = _all(src, batch_size=8)
    assert y.tolist() == [0, 3, 0, 3, 0, 3, 0, 3, 0, 3]
    with pytest.raises(InputError, match="takes no split"):
        open_data(f"{f}:loader", split="test")
    with pytest.raises(InputError, match="not a Dataset or DataLoader"):
        open_data(f"{f}:dicts")
    with pytest.raises(InputError, match="KeyError"):
        open_data(f"{f}:broken")
    with pytest.raises(InputError, match="no attribute"):
        open_data(f"{f}:absent")
    with pytest.raises(InputError, match="cannot import"):
        open_data("nc_probe.no_such_module:data")


def test_python_objects_and_workers():
    x, y = torch.randn(40, 3), torch.arange(40) % 4
    src = open_data((x, y), limit=10)
    xb, yb = _all(src, batch_size=3)
    assert len(yb) == 10 and set(yb.tolist()) == {0, 1, 2, 3}
    ds = torch.utils.data.TensorDataset(x, y)
    a = _all(open_data(ds), batch_size=7, workers=0)
    b = _all(open_data(ds), batch_size=7, workers=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(InputError, match="batch_size"):
        next(iter_batches(open_data(ds), batch_size=0))
