"""Image data: folders of images (one sub-folder per class), decoded with Pillow; the mapping of folders to a
classifier's class indices (``class_map``); and the transform shared with torchvision datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nc_probe.core.errors import InputError
from nc_probe.core.text import few
from nc_probe.data.preprocessing import INTERPOLATIONS, UNIT_SCALE, Preprocessing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def normalisation_tensors(mean, std, channels: int, ndim: int):
    if mean is None and std is None:
        return None
    mean = torch.as_tensor([0.0] if mean is None else list(mean), dtype=torch.float32)
    std = torch.as_tensor([1.0] if std is None else list(std), dtype=torch.float32)
    for name, t in (("{mean}", mean), ("{std}", std)):
        if len(t) not in (1, channels):
            raise InputError(f"{name} has {len(t)} values but the inputs have {channels} channels",
                             fix=f"give 1 or {channels} values")
    if bool((std == 0).any()):
        raise InputError("{std} contains a zero", fix="give positive standard deviations")
    shape = (1, -1) + (1,) * max(ndim - 2, 0)
    return mean.reshape(shape), std.reshape(shape)


class ImageFolderDataset(Dataset):
    """Images in ``root/<class>/...`` (files sorted by path), decoded with Pillow and prepared as ``preprocessing``
    says (:class:`ImageTransform`; default: each image's own size, pixels scaled to [0, 1]).

    Labels are the folders' positions in sorted order, unless ``class_index`` maps folder names to the
    classifier's class indices (a folder holding some of the classes a model predicts: ImageNet classes by wnid).
    """

    def __init__(self, root: Path, *, preprocessing: Preprocessing | None = None, channels: int = 3,
                 class_index: dict | None = None):
        try:
            import PIL.Image  # noqa: F401
        except ImportError:
            raise InputError("reading an image folder needs Pillow, which is not installed", path=root,
                             fix="pip install pillow, or pass the data as a .npz/.pt of arrays") from None
        self.root = root
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise InputError("has no class sub-folders", path=root,
                             fix="put the images of each class into their own sub-folder (root/cat/1.png, ...)")
        if class_index is not None:
            unknown = [c for c in self.classes if c not in class_index]
            if unknown:
                raise InputError(f"class folder(s) {few(unknown, 3)} are not in the class map", path=root,
                                 fix="map every folder name to the classifier's class index ({class_map})")
        self.samples: list[tuple[str, int]] = []
        for pos, name in enumerate(self.classes):
            idx = pos if class_index is None else int(class_index[name])
            files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                           and p.is_file())
            self.samples.extend((str(p), idx) for p in files)
        if not self.samples:
            raise InputError(f"holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its class sub-folders", path=root,
                             fix="check the folder")
        self.targets = np.asarray([t for _, t in self.samples], dtype=np.int64)
        self.transform = ImageTransform(preprocessing, channels)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        import PIL.Image

        path, target = self.samples[i]
        try:
            with PIL.Image.open(path) as img:
                x = self.transform(img)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read the image ({e.__class__.__name__})", path=path,
                             fix="remove or replace the file") from None
        return x, target


class ImageTransform:
    """PIL image (or tensor) -> float32 (C, H, W), as :class:`~nc_probe.data.preprocessing.Preprocessing` says: convert
    to RGB/L, resize (the shorter side, or an exact size), crop the centre, scale the pixels (to [0, 1]), normalise
    with mean/std. Resizing and cropping compute sizes and offsets as torchvision's ``Resize`` and ``CenterCrop``
    do on PIL images (a crop larger than the image pads it with zeros), so a torchvision or timm model gets the
    pixels its own eval transform gives. A tensor is only normalised."""

    def __init__(self, preprocessing: Preprocessing | None = None, channels: int = 3):
        p = (preprocessing or Preprocessing()).for_channels(channels)
        self.preprocessing = p
        self.channels = channels
        self.resample = INTERPOLATIONS.get(p.interpolation, 2)
        norm = normalisation_tensors(p.mean, p.std, channels, 4)
        self.norm = None if norm is None else (norm[0][0], norm[1][0])

    def __call__(self, img) -> torch.Tensor:
        if isinstance(img, torch.Tensor):
            x = img.float()
        else:
            img = img.convert("L" if self.channels == 1 else "RGB")
            p = self.preprocessing
            if p.resize is not None:
                img = _resize(img, p.resize, self.resample)
            if p.crop is not None:
                img = _center_crop(img, p.crop)
            a = np.asarray(img, dtype=np.float32)
            if p.rescale == UNIT_SCALE:
                a = a / np.float32(255.0)  # as torchvision's ToTensor: a division, not a product with 1/255
            elif p.rescale != 1.0:
                a = a * np.float32(p.rescale)
            x = torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())
        if self.norm is not None:
            x = (x - self.norm[0]) / self.norm[1]
        return x


def _resize(img, size, resample):
    """torchvision's ``Resize(size)`` of a PIL image: an int is the shorter side (the longer one scaled and
    floored), ``(h, w)`` the exact size; an image already that size is left alone."""
    w, h = img.size
    if isinstance(size, int):
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = size
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), resample)


def _center_crop(img, size):
    """torchvision's ``CenterCrop(size)`` of a PIL image (offsets rounded; a larger crop pads with zeros)."""
    ch, cw = (size, size) if isinstance(size, int) else size
    w, h = img.size
    if cw > w or ch > h:
        import PIL.Image

        left, top = (cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0
        canvas = PIL.Image.new(img.mode, (max(w, cw), max(h, ch)), 0)
        canvas.paste(img, (left, top))
        img, (w, h) = canvas, canvas.size
        if (w, h) == (cw, ch):
            return img
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


def folder_class_index(root: Path, class_map, class_names) -> tuple[dict | None, list | None, str | None]:
    """``(folder -> class index, the classifier's class names, note)`` for an image folder; (None, None, None)
    keeps the folders' sorted positions as labels."""
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_map is not None:
        index, names = parse_class_map(class_map)
        return index, names, f"class folders mapped to class indices by {{class_map}} ({len(index)} names)"
    if not class_names:
        return None, None, None
    names = [str(c) for c in class_names]
    position = {n: i for i, n in enumerate(names)}
    if folders == names or not set(folders) <= set(position):
        return None, None, None
    return position, names, (f"the {len(folders)} class folders were matched to the classifier's "
                             f"{len(names)} classes by name (class names from the checkpoint)")


def parse_class_map(class_map) -> tuple[dict, list | None]:
    """``--class-map`` -> ``(name -> index, names in class order or None)``: a dict, a JSON object string, a
    ``.json`` file of one, or a ``.txt`` file with one class name per line (line i is class i)."""
    import json

    names = None
    value = class_map
    if isinstance(value, (str, os.PathLike)) and not str(value).lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise InputError("{class_map} is neither a JSON object nor an existing file", path=path,
                             fix='pass e.g. \'{"n01440764": 0}\' or a .txt with one class name per line')
        text = path.read_text()
        if path.suffix.lower() == ".json":
            value = text
        else:
            names = [ln.strip() for ln in text.splitlines() if ln.strip()]
            value = {n: i for i, n in enumerate(names)}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise InputError(f"{{class_map}} is not valid JSON ({e.msg})", fix='write e.g. \'{"cat": 3, "dog": 5}\'') \
                from None
    if isinstance(value, list):
        names = [str(v) for v in value]
        value = {n: i for i, n in enumerate(names)}
    if not isinstance(value, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values()):
        raise InputError("{class_map} must map folder names to non-negative class indices",
                         fix='write e.g. \'{"cat": 3, "dog": 5}\'')
    return {str(k): int(v) for k, v in value.items()}, names
