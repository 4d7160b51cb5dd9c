"""Data to run a classifier on (step 2 of the pipeline): from a spec string to batches of ``(x, y)``.

Specs understood by :func:`open_data`:

- ``sample:digits``: the 8x8 digits that ship with nc-probe (``nc_probe.load.samples.digits_dataset(split)``);
- a ``.npz`` or ``.pt`` file of arrays ``x`` and ``y`` (also ``x_train``/``y_train``, ``x_test``/``y_test``... picked
  by ``split``); uint8 images are scaled to [0, 1] and NHWC is turned into NCHW;
- a folder of images with one sub-folder per class (``root/split/`` is used when it exists), prepared as the model's
  own preprocessing says (:mod:`nc_probe.data.preprocessing`: resize, centre crop, scale, normalise), with
  ``image_size`` (the crop), ``mean`` and ``std`` replacing what they name; needs Pillow;
- ``torchvision:CLASS:ROOT``: a torchvision dataset already on disk (never downloaded), its images prepared as an
  image folder's;
- ``package.module:function`` (or ``file.py:function``): a function returning a Dataset or a DataLoader, called
  with ``split=`` when it takes that argument.

Python callers may also pass a Dataset, a DataLoader or an ``(x, y)`` pair of arrays instead of a string.

Arrays, the samples and the user's datasets are used as given (normalised only by a typed ``mean``/``std`` or the
checkpoint metadata's); the model's preprocessing applies to images decoded here. ``DataSource.preprocessing``
records what was done (a report's ``inputs["preprocessing"]``) and ``DataSource.warnings`` says when an image model's
preprocessing is unknown.

``classes`` keeps only samples of some classes (labels keep their ids, so they still index the classifier's rows)
and ``limit`` keeps N samples, each class getting its share, evenly spaced within the class, in dataset order (so a
class-sorted dataset still gives every class); when the labels are not known in advance (an iterable dataset or a
DataLoader), the filter is applied batch by batch and ``limit`` keeps the first N.

It sits upstream of extraction and imports no later stage; batches come from :mod:`nc_probe.data.batches`, image
folders from :mod:`nc_probe.data.image_folder`.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from nc_probe.core.errors import InputError
from nc_probe.core.imports import import_object
from nc_probe.core.settings import MAX_CLASS_IDS, class_id_span
from nc_probe.core.text import few, first_line
from nc_probe.data.array_data import X_NAMES as X_NAMES  # re-exported: batches reads the names from here
from nc_probe.data.array_data import Y_NAMES as Y_NAMES
from nc_probe.data.array_data import ArrayDataset, as_arrays, read_data_file
from nc_probe.data.array_data import collate as collate
from nc_probe.data.image_folder import ImageFolderDataset, ImageTransform, folder_class_index
from nc_probe.data.preprocessing import Preprocessing, data_as_given

SAFE_DATA_PREFIXES = ("sample:", "torchvision:")


@dataclass
class DataSource:
    """An opened data spec: what to iterate and what is known about it.

    ``dataset`` is a map-style or iterable Dataset, or ``loader`` a user DataLoader used as it is. ``indices`` (for
    map-style datasets) are the samples kept after class filtering and limit; ``label_filter`` / ``limit`` are
    applied batch by batch when the labels were not known in advance. ``num_classes`` and ``class_names`` are the
    dataset's own (all classes, before filtering) when it declares them.
    """

    spec: str
    split: str | None = None
    dataset: Any = None
    loader: Any = None
    class_names: list | None = None
    num_classes: int | None = None
    targets: np.ndarray | None = None
    indices: np.ndarray | None = None
    label_filter: list | None = None
    limit: int | None = None
    notes: list = field(default_factory=list)
    partial_classes: bool = False  # class_names name some of the model's classes; their total is unknown here
    preprocessing: dict | None = None  # what was done to the inputs (Preprocessing.record, or data_as_given)
    warnings: list = field(default_factory=list)  # for the report: the model's image preprocessing is unknown
    rows: int | None = None  # feature rows the data gives, when not one per sample (the tokens of token data)

    def __len__(self) -> int:
        if self.indices is not None:
            return len(self.indices)
        try:
            n = len(self.loader.dataset if self.loader is not None else self.dataset)
        except TypeError:
            return 0
        return min(n, self.limit) if self.limit else n

    @property
    def sized(self) -> bool:
        """Whether the number of samples is known before iterating."""
        return self.indices is not None or (self.label_filter is None and len(self) > 0)


# ---------------------------------------------------------------------------------------------- opening
def is_code_spec(spec) -> bool:
    """Whether opening ``spec`` imports and calls user code (``package.module:function``)."""
    return isinstance(spec, str) and not spec.startswith(SAFE_DATA_PREFIXES) and not os.path.exists(spec) \
        and re.fullmatch(r"[^:]+:[A-Za-z_][\w.]*", spec) is not None


def open_data(spec, *, split: str | None = None, limit: int | None = None, classes=None, image_size=None,
              mean=None, std=None, channels: int = 3, class_names=None, class_map=None,
              preprocessing: Preprocessing | None = None) -> DataSource:
    """Open a data spec (see the module docstring) and apply the class filter and limit.

    ``preprocessing``: the model's own (:func:`nc_probe.data.preprocessing.preprocessing_for`; default: none known),
    for images; ``image_size``, ``mean`` and ``std`` (the user's) replace what they name. Arrays get the user's
    mean/std, else the ones of the checkpoint's metadata.

    ``classes``: class ids or names (a list, or a string like ``"0-4,7"``). ``class_names``: the classifier's class
    names (e.g. from the checkpoint), used when the data has none of its own and to map the folders of an image
    folder to class indices by name. ``class_map`` (image folders): folder name -> class index, as a dict, a JSON
    object, a ``.json`` file of one, or a ``.txt`` file of the classifier's class names, one per line in class order.
    ``channels``: 1 or 3, for images.
    """
    if limit is not None and int(limit) < 1:
        raise InputError(f"{{limit}} must be at least 1, got {limit}", fix="pass a positive number of samples")
    model = preprocessing or Preprocessing.unknown()
    images = model.with_flags(image_size, mean, std)
    typed = mean is not None or std is not None
    # arrays: the user's mean/std, else the checkpoint's own (never a registry's: arrays are used as given)
    norm = tuple(typed_value if typed_value is not None else getattr(model, k) if k in model.from_metadata else None
                 for k, typed_value in (("mean", mean), ("std", std)))
    source = _open(spec, split, images, norm, typed, channels, class_names, class_map)
    if source.preprocessing is None:
        container = source.loader.dataset if source.loader is not None else source.dataset
        source.preprocessing = data_as_given(*norm) if isinstance(container, ArrayDataset) else data_as_given()
    if class_map is not None and not isinstance(source.dataset, ImageFolderDataset):
        raise InputError("{class_map} applies to image folders only (other data carries class indices)",
                         fix="leave {class_map} out")
    if source.class_names is None and class_names is not None:
        source.class_names = [str(c) for c in class_names]
    if source.num_classes is None and source.class_names is not None and not source.partial_classes:
        source.num_classes = len(source.class_names)
    wanted = parse_class_selection(classes, source.class_names, source.spec)
    container = source.loader.dataset if source.loader is not None else source.dataset
    if source.targets is None and source.loader is None and not isinstance(container, IterableDataset):
        source.targets = _known_targets(container)
    if source.targets is not None and source.loader is None:
        idx = np.arange(len(source.targets))
        if wanted is not None:
            idx = idx[np.isin(source.targets, wanted)]
            if len(idx) == 0:
                raise InputError(f"no samples of {{data_classes}} {few(wanted)}", path=source.spec,
                                 fix="pick classes that occur in the data")
        if limit is not None and limit < len(idx):
            idx = stratified_subset(idx, source.targets[idx], int(limit))
        source.indices = idx
    else:
        source.label_filter = wanted
        source.limit = None if limit is None else int(limit)
    return source


def stratified_subset(idx: np.ndarray, labels: np.ndarray, limit: int) -> np.ndarray:
    """``limit`` of the indices ``idx``, each class getting its share (largest remainders), evenly spaced within
    the class, returned in dataset order. Deterministic; works for class-sorted, shuffled and periodic labels."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    share = limit * counts / counts.sum()
    quota = np.floor(share).astype(np.int64)
    rest = limit - int(quota.sum())
    if rest:
        quota[np.argsort(-(share - quota), kind="stable")[:rest]] += 1
    picked = []
    for k in range(len(classes)):
        members = idx[inverse == k]
        q = int(quota[k])
        if q:
            picked.append(members[(np.arange(q) * len(members)) // q])
    return np.sort(np.concatenate(picked))


def _open(spec, split, images: Preprocessing, norm: tuple, typed: bool, channels, class_names=None,
          class_map=None) -> DataSource:
    """``images``: the preprocessing of images; ``norm``: the (mean, std) of arrays, ``typed`` by the user."""
    if isinstance(spec, DataLoader):
        return DataSource("<DataLoader>", split, loader=spec, **_declared(spec.dataset))
    if isinstance(spec, Dataset):
        return DataSource(f"<{type(spec).__name__}>", split, dataset=_fast(spec, norm, typed), **_declared(spec))
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        x, y = as_arrays(spec[0], spec[1], "<arrays>")
        return DataSource("<arrays>", split, dataset=ArrayDataset(x, y, *norm))
    if not isinstance(spec, (str, os.PathLike)):
        raise InputError(f"cannot use a {type(spec).__name__} as data",
                         fix="pass a data spec string, a Dataset, a DataLoader or an (x, y) pair")
    spec = str(spec)
    if spec.startswith("sample:"):
        return _open_sample(spec, split, norm, typed)
    path = Path(spec).expanduser()
    if path.is_dir():
        root = path
        if split:
            root = path / split
            if not root.is_dir():
                subs = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
                raise InputError(f"has no sub-folder for {{split={split}}} (sub-folders: {few(subs)})", path=spec,
                                 fix="leave {split} out when the class folders are directly inside, or name an "
                                     "existing split")
        index, names, note = folder_class_index(root, class_map, class_names)
        ds = ImageFolderDataset(root, preprocessing=images, channels=channels, class_index=index)
        if names is None and index is not None:  # a partial map: name the mapped ids, the total is the model's
            names = [str(i) for i in range(max(index.values()) + 1)]
            for folder in ds.classes:
                names[index[folder]] = folder
            count = None
        else:
            names = names or list(ds.classes)
            count = len(names)
        return DataSource(spec, split, dataset=ds, class_names=names, num_classes=count, targets=ds.targets,
                          notes=[note] if note else [], partial_classes=count is None,
                          **_image_record(ds.transform))
    if path.is_file():
        dataset, names, split = read_data_file(path, split, *norm)
        return DataSource(str(path), split, dataset=dataset, class_names=names,
                          num_classes=None if names is None else len(names))
    if spec.startswith("torchvision:"):
        return _open_torchvision(spec, split, images, channels)
    if is_code_spec(spec):
        return _open_function(spec, split, norm, typed)
    if spec.endswith((".npz", ".pt", ".pth")) or "/" in spec or os.sep in spec:
        raise InputError("no such file or folder", path=spec, fix="check the {data} path")
    raise InputError(f"{{data}} {spec!r} is not a file, a folder or a known data spec", path=None,
                     fix="pass sample:digits, arrays.npz, an image folder, torchvision:CLASS:ROOT or "
                         "package.module:function")


def _declared(ds) -> dict:
    """Class names and count a dataset declares (``classes`` as torchvision datasets have)."""
    names = getattr(ds, "classes", None)
    if isinstance(names, (list, tuple)) and names and all(isinstance(c, (str, int)) for c in names):
        return {"class_names": [str(c) for c in names], "num_classes": len(names)}
    return {}


def _known_targets(ds) -> np.ndarray | None:
    """Labels of every item, when the dataset exposes them without loading the inputs."""
    if isinstance(ds, ArrayDataset):
        return ds.targets
    cand: object
    if isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) >= 2:
        cand = ds.tensors[1]
    else:
        cand = getattr(ds, "targets", None)
        if cand is None:
            cand = getattr(ds, "labels", None)
    if cand is None:
        return None
    try:
        arr = np.asarray(cand.cpu() if isinstance(cand, torch.Tensor) else cand)
        n = len(ds)
    except (TypeError, ValueError):
        return None
    if arr.ndim != 1 or len(arr) != n or arr.dtype.kind not in "iu":
        return None
    return arr.astype(np.int64)


def _image_record(transform: ImageTransform) -> dict:
    """A DataSource's preprocessing record and warnings for images prepared by ``transform``."""
    warning = transform.preprocessing.warning()
    return {"preprocessing": transform.preprocessing.record(), "warnings": [warning] if warning else []}


def _fast(ds, norm: tuple, typed: bool):
    """A two-tensor TensorDataset becomes an ArrayDataset (batched fetching) normalised with ``norm`` (mean, std);
    anything else is used as it is, and a ``typed`` mean/std is refused for it."""
    if isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) == 2:
        x, y = ds.tensors
        if y.ndim == 1 and not y.is_floating_point():
            return ArrayDataset(x.float() if x.dtype != torch.float32 else x, y.long(), *norm)
    if typed:
        raise InputError("{mean}/{std} apply to arrays, image folders and torchvision datasets only",
                         fix="normalise inside your dataset, or leave {mean}/{std} out")
    return ds


def _open_sample(spec, split, norm: tuple, typed: bool) -> DataSource:
    name = spec.split(":", 1)[1]
    if name != "digits":
        raise InputError(f"unknown sample data {spec!r}", fix="the samples ship sample:digits")
    from nc_probe.load import samples

    try:
        ds = samples.digits_dataset(split or "train")
    except ValueError as e:
        raise InputError(f"{spec}: {e}", fix="pass {split=train}, {split=test} or {split=all}") from None
    except FileNotFoundError as e:
        raise InputError(str(e), fix="reinstall nc-probe") from None
    return DataSource(spec, split or "train", dataset=_fast(ds, norm, typed), **_declared(ds))


def _open_torchvision(spec, split, images: Preprocessing, channels) -> DataSource:
    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise InputError(f"{{data}} {spec!r} needs a root folder", fix="write torchvision:CIFAR10:/path/to/root")
    _, name, root = parts
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise InputError(f"{{data}} {spec} needs torchvision, which is not installed",
                         fix="pip install torchvision, or pass an image folder or arrays") from None
    # Only the dataset classes torchvision exports (its __all__): a name is looked up, never walked.
    cls = getattr(tvd, name, None) if name in getattr(tvd, "__all__", ()) else None
    if not (isinstance(cls, type) and issubclass(cls, Dataset)):
        raise InputError(f"torchvision.datasets has no dataset {name!r}", fix="check the class name, e.g. CIFAR10")
    params = inspect.signature(cls).parameters
    transform = ImageTransform(images, channels)
    kwargs = {"root": root, "transform": transform}
    if "download" in params:
        kwargs["download"] = False
    if "train" in params:
        if split not in (None, "train", "test"):
            raise InputError(f"torchvision {name} has splits train and test, not {split!r}",
                             fix="pass {split=train} or {split=test}")
        kwargs["train"] = split in (None, "train")
        split = split or "train"
    elif "split" in params:
        split = split or "train"
        kwargs["split"] = split
    try:
        ds = cls(**kwargs)
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as e:
        raise InputError(f"torchvision {name} finds no usable data under {root} ({str(e).splitlines()[0][:100]}); "
                         "nc-probe never downloads", path=root,
                         fix=f"download it first, e.g. torchvision.datasets.{name}(root, download=True)") from None
    return DataSource(spec, split, dataset=ds, **_declared(ds), **_image_record(transform))


def _open_function(spec, split, norm: tuple, typed: bool) -> DataSource:
    fn = import_object(spec, what="{data}")
    if not callable(fn):
        raise InputError(f"{{data}} {spec} is not callable", fix="name a function returning a Dataset or DataLoader")
    try:
        takes_split = "split" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_split = False
    if split is not None and not takes_split:
        raise InputError(f"{{data}} {spec} takes no split argument but {{split={split}}} was given",
                         fix="leave {split} out, or give the function a split parameter")
    try:
        result = fn(split=split) if takes_split and split is not None else fn()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - user code: report, do not crash
        raise InputError(f"{{data}} {spec} failed: {type(e).__name__}: {first_line(e, 120)}",
                         fix="check the function") from None
    if isinstance(result, DataLoader):
        return DataSource(spec, split, loader=result, **_declared(result.dataset))
    if isinstance(result, Dataset):
        return DataSource(spec, split, dataset=_fast(result, norm, typed), **_declared(result))
    raise InputError(f"{{data}} {spec} returned a {type(result).__name__}, not a Dataset or DataLoader",
                     fix="return a torch.utils.data.Dataset or DataLoader")


def parse_class_selection(value, class_names=None, where=None) -> list[int] | None:
    """``None``, ids, names, or a string ``"0-4,7,cat"`` -> sorted class ids."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    out = set()
    for item in items:
        if isinstance(item, (int, np.integer)):
            out.add(int(item))
            continue
        text = str(item).strip()
        span = class_id_span(text, value, "data_classes")
        if span is not None:
            out.update(span)
            if len(out) > MAX_CLASS_IDS:
                raise InputError(f"{{data_classes}} names more than {MAX_CLASS_IDS:,} class ids", path=where,
                                 fix="name only classes that exist, e.g. 0-999")
        elif class_names and text in class_names:
            out.add(class_names.index(text))
        else:
            raise InputError(f"{{data_classes}}: {text!r} is neither a class index nor a class name", path=where,
                             fix="write e.g. 0-4,7" + (f" or names like {class_names[0]}" if class_names else ""))
    return sorted(out)
