"""How images are prepared before a model sees them: the model's own evaluation transform when it is known, a
stated default otherwise, and the user's flags on top.

The model's own preprocessing (:func:`preprocessing_for`), the first source that knows it:

1. a Hugging Face folder's ``preprocessor_config.json`` (an image processor's resize, centre crop, rescale and
   normalisation), read as JSON only by :mod:`nc_probe.data.preprocessor_config`: bounded, every value type-checked,
   nothing in it imported or run (``auto_map`` and ``AutoImageProcessor`` are never used);
2. ``torchvision:NAME``: the transform of the model's ``DEFAULT`` weights (``ImageClassification``: resize
   ``resize_size``, centre crop ``crop_size``, ``interpolation``, ``mean``, ``std``), read from the weights enum;
   nothing is downloaded;
3. ``timm:NAME``: the model's ``pretrained_cfg`` through ``timm.data.resolve_data_config`` (``input_size``,
   ``crop_pct``, ``crop_mode``, ``interpolation``, ``mean``, ``std``), as timm's eval transform applies it; data in
   timm's registry, nothing downloaded.

The checkpoint's own nc_probe metadata (``image_size``, ``mean``, ``std``, type-checked by
:data:`nc_probe.load.trust.METADATA_CHECKS`) counts as the model's preprocessing too, and wins over the above for the
values it gives. When nothing is known, the default keeps each image's size (``image_size`` resizes the shorter
side and crops the centre square), scales pixels to [0, 1] and does not normalise; a report warning says so.

The user's ``image_size``, ``mean`` and ``std`` (flags, or :class:`~nc_probe.core.settings.DataSettings`) replace only
what they name (:meth:`Preprocessing.with_flags`): ``mean``/``std`` the normalisation, ``image_size`` the crop,
with the resize scaled as the model's transform scales it (a torchvision ResNet's 256/224: ``image_size 160``
resizes to 182, then crops 160).

Agreed with the Hugging Face loader, which calls::

    preprocessing_for(arch: str | None, metadata: dict, folder: Path | None = None, *, model=None) -> Preprocessing

``arch``: the architecture string (``torchvision:NAME``, ``timm:NAME``, anything else or None: no registry);
``metadata``: the checkpoint's cleaned nc_probe metadata (``hf_folder`` is used when ``folder`` is None);
``folder``: a ``save_pretrained`` folder whose ``preprocessor_config.json`` is read; ``model``: the built model
(timm reads its ``pretrained_cfg``, which keyword arguments such as ``img_size`` change). Malformed JSON in
``preprocessor_config.json`` is an InputError naming the file and the field.

A report records the preprocessing it used as ``inputs["preprocessing"]`` (:meth:`Preprocessing.record` for
images, :func:`data_as_given` for other data; checked on reading by :mod:`nc_probe.core.json_checks`), and ``compare``
warns when two reports' differ (:func:`preprocessing_difference`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nc_probe.core.text import quoted

#: Pixels of 0..255 become [0, 1].
UNIT_SCALE = 1 / 255
#: Interpolations by name (torchvision's InterpolationMode values, timm's strings) -> PIL resampling filter.
INTERPOLATIONS = {"nearest": 0, "nearest-exact": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4,
                  "hamming": 5}
CONFIG_NAME = "preprocessor_config.json"
#: The values a report's preprocessing record holds that change the pixels a model sees (compared by ``compare``).
EFFECTIVE = ("resize", "crop", "interpolation", "mean", "std", "rescale")
#: Flag names as the report's ``overridden`` lists them, in this order.
FLAGS = ("image_size", "mean", "std")

Size = int | tuple[int, int] | None


@dataclass(frozen=True)
class Preprocessing:
    """Image preprocessing: convert to RGB (or L), ``resize`` (an int: the shorter side, aspect kept; ``(h, w)``:
    that exact size; None: kept), centre-crop ``crop`` (an int: a square; ``(h, w)``; None: no crop), multiply the
    0..255 pixels by ``rescale``, normalise with ``mean``/``std`` (None: not normalised). ``interpolation``: the
    resampling filter's name (:data:`INTERPOLATIONS`).

    ``source``: where the model's part came from ("torchvision:ResNet18_Weights.IMAGENET1K_V1", "timm
    pretrained_cfg", "preprocessor_config.json", "checkpoint metadata", "default": nothing known, "flags": nothing
    known, the normalisation typed). ``known``: whether the model's own preprocessing is known. ``overridden``: the
    flags that replaced some of it. ``arch``: the model, for the warning when nothing is known.
    """

    source: str = "default"
    resize: Size = None
    crop: Size = None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    rescale: float = UNIT_SCALE
    known: bool = False
    from_metadata: tuple[str, ...] = ()
    overridden: tuple[str, ...] = ()
    arch: str | None = None
    reason: str | None = None  # why nothing is known, when there is more to say than "no registry"
    crop_pct: float | None = None  # timm's crop / resize, by which another crop size is scaled

    @classmethod
    def unknown(cls, arch: str | None = None, reason: str | None = None) -> Preprocessing:
        return cls(arch=arch, reason=reason)

    # ------------------------------------------------------------------------------------------------ overrides
    def sized(self, image_size: int) -> Preprocessing:
        """The crop set to ``image_size`` (a square), the resize scaled as the model's transform scales it (its
        resize / crop ratio, floored as timm floors ``size / crop_pct``); without a crop, the resize itself."""
        s = int(image_size)
        resize, crop = self.resize, self.crop
        if crop is None:
            if isinstance(resize, tuple):
                return replace(self, resize=(s, s))
            return replace(self, resize=s, crop=s)  # the default: shorter side, then the centre square
        ch, cw = (crop, crop) if isinstance(crop, int) else crop
        if resize is None:
            return replace(self, crop=s)
        if self.crop_pct is not None:
            side = math.floor(s / self.crop_pct)
            return replace(self, resize=side if isinstance(resize, int) else (side, side), crop=s)
        if isinstance(resize, int):
            return replace(self, resize=max(s, s * resize // min(ch, cw)), crop=s)
        return replace(self, resize=(max(s, s * resize[0] // ch), max(s, s * resize[1] // cw)), crop=s)

    def with_metadata(self, metadata: Mapping) -> Preprocessing:
        """The checkpoint's own ``image_size``, ``mean`` and ``std`` (already type-checked) over this."""
        given = [k for k in FLAGS if metadata.get(k) is not None]
        if not given:
            return self
        out = self.sized(metadata["image_size"]) if "image_size" in given else self
        if "mean" in given:
            out = replace(out, mean=tuple(float(v) for v in metadata["mean"]))
        if "std" in given:
            out = replace(out, std=tuple(float(v) for v in metadata["std"]))
        source = "checkpoint metadata" if not self.known else f"{self.source} + checkpoint metadata " \
                                                              f"({', '.join(given)})"
        return replace(out, source=source, known=True, from_metadata=tuple(given))

    def with_flags(self, image_size=None, mean=None, std=None) -> Preprocessing:
        """The user's ``image_size``, ``mean`` and ``std`` over this, each replacing only what it names."""
        out = self.sized(image_size) if image_size is not None else self
        if mean is not None:
            out = replace(out, mean=tuple(float(v) for v in mean))
        if std is not None:
            out = replace(out, std=tuple(float(v) for v in std))
        given = tuple(k for k, v in zip(FLAGS, (image_size, mean, std), strict=True) if v is not None)
        if not given:
            return out
        source = "flags" if not self.known and mean is not None and std is not None else out.source
        return replace(out, source=source, overridden=given)

    def for_channels(self, channels: int) -> Preprocessing:
        """A model's 3-channel mean/std for a 1-channel model: their averages (typed values are left as typed, and
        are checked against the channels where they are used)."""
        if channels != 1:
            return self
        def gray(values, name):
            if values is not None and len(values) == 3 and name not in self.overridden:
                return (sum(values) / 3,)
            return values

        return replace(self, mean=gray(self.mean, "mean"), std=gray(self.std, "std"))

    # ------------------------------------------------------------------------------------------------ outputs
    @property
    def normalised(self) -> bool:
        return self.mean is not None or self.std is not None

    def warning(self) -> str | None:
        """The report's warning when the model's preprocessing is unknown and no normalisation was typed."""
        if self.known or self.normalised:
            return None
        what = "this model" if not self.arch else quoted(self.arch, 80)
        why = f" ({self.reason})" if self.reason else ""
        return (f"no model preprocessing is known for {what}{why}; images are only scaled to [0, 1]: pass {{mean}}/"
                "{std} (and {image_size}) as the model was trained, or the metrics describe other inputs than the "
                "model's")

    def record(self) -> dict:
        """``inputs["preprocessing"]`` of a report: JSON data (see :func:`check_record`)."""
        out: dict[str, Any] = {"source": self.source, "resize": _size_json(self.resize),
                               "crop": _size_json(self.crop), "interpolation": self.interpolation,
                               "mean": None if self.mean is None else list(self.mean),
                               "std": None if self.std is None else list(self.std),
                               "overridden": list(self.overridden)}
        if not math.isclose(self.rescale, UNIT_SCALE, rel_tol=1e-12):
            out["rescale"] = self.rescale
        return out

    def describe(self) -> str:
        """One line: ``resize 256, crop 224, bilinear, mean 0.485,0.456,0.406, std 0.229,0.224,0.225``."""
        return describe(self.record())


def data_as_given(mean=None, std=None) -> dict:
    """The preprocessing record of data that is not decoded from images (arrays, the user's datasets): used as
    given, normalised only by ``mean``/``std`` when some apply."""
    out: dict[str, Any] = {"source": "data as given"}
    if mean is not None or std is not None:
        out.update(mean=None if mean is None else [float(v) for v in mean],
                   std=None if std is None else [float(v) for v in std])
    return out


def _size_json(size: Size) -> int | list[int] | None:
    return list(size) if isinstance(size, tuple) else size


# ---------------------------------------------------------------------------------------------- the model's own
def preprocessing_for(arch: str | None, metadata: Mapping | None = None, folder: Path | str | None = None, *,
                      model=None) -> Preprocessing:
    """The model's own preprocessing (see the module docstring), without the user's flags."""
    metadata = metadata if isinstance(metadata, Mapping) else {}
    if folder is None and isinstance(metadata.get("hf_folder"), str):
        folder = metadata["hf_folder"]
    base: Preprocessing | None = None
    if folder is not None and (Path(folder) / CONFIG_NAME).is_file():
        base = read_preprocessor_config(Path(folder) / CONFIG_NAME)
    elif isinstance(arch, str) and arch.startswith("torchvision:"):
        base = torchvision_preprocessing(arch.split(":", 1)[1])
    elif isinstance(arch, str) and arch.startswith("timm:"):
        base = timm_preprocessing(arch.split(":", 1)[1], model)
    if base is None:
        reason = f"{CONFIG_NAME} is not in {quoted(str(folder), 120)}" if folder is not None else None
        base = Preprocessing.unknown(arch, reason)
    return replace(base, arch=arch).with_metadata(metadata)


def model_preprocessing(loaded) -> Preprocessing:
    """:func:`preprocessing_for` of a :class:`~nc_probe.load.checkpoint.LoadedModel`."""
    folder = loaded.metadata.get("hf_folder") if loaded.format == "huggingface" else None
    return preprocessing_for(loaded.arch, loaded.metadata, folder, model=loaded.model)


def torchvision_preprocessing(name: str) -> Preprocessing | None:
    """The eval transform of torchvision model ``name``'s DEFAULT weights, or None when it has none (no weights,
    no torchvision, a transform that is not image classification's)."""
    try:
        from torchvision.models import get_model_weights
    except ImportError:
        return None
    try:
        weights = get_model_weights(name).DEFAULT  # every weights enum has one
        transform = weights.transforms()  # a small nn.Module with the parameters; reads and fetches nothing
    except (ValueError, KeyError, AttributeError, TypeError):
        return None
    try:
        crop, resize = list(transform.crop_size), list(transform.resize_size)
        mean, std = tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std)
        interpolation = str(transform.interpolation.value)
    except (AttributeError, TypeError, ValueError):
        return None  # video, segmentation, optical flow: not an image classifier's transform
    return Preprocessing(source=f"torchvision:{type(weights).__name__}.{weights.name}",
                         resize=_one_size(resize), crop=_one_size(crop),
                         interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
                         mean=mean, std=std, known=True)


def _one_size(values: list) -> Size:
    """torchvision's size lists: ``[n]`` is the shorter side (a square crop), ``[h, w]`` an exact size."""
    if len(values) == 1:
        return int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    return None


def timm_preprocessing(name: str, model=None) -> Preprocessing | None:
    """timm's eval transform for model ``name`` (its built ``model``'s pretrained_cfg when given), or None."""
    try:
        import timm.data
        import timm.models
    except ImportError:
        return None
    try:
        if model is not None and getattr(model, "pretrained_cfg", None):
            cfg = timm.data.resolve_data_config({}, model=model)
        else:
            pretrained = timm.models.get_pretrained_cfg(name)
            if pretrained is None:
                return None
            cfg = timm.data.resolve_data_config({}, pretrained_cfg=pretrained.to_dict())
    except (ValueError, KeyError, AttributeError, TypeError, RuntimeError):
        return None
    return _from_timm_config(cfg)


def _from_timm_config(cfg: Mapping) -> Preprocessing | None:
    """timm's ``transforms_factory.transforms_imagenet_eval``: resize to ``floor(size / crop_pct)`` (the shorter
    side when square; ``squash``: that exact size), then the centre ``input_size`` crop."""
    try:
        h, w = (int(v) for v in cfg["input_size"][-2:])
        crop_pct = float(cfg.get("crop_pct") or 0.875)
        mode = str(cfg.get("crop_mode") or "center")
        mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
        interpolation = str(cfg.get("interpolation") or "bilinear")
    except (KeyError, TypeError, ValueError):
        return None
    sh, sw = math.floor(h / crop_pct), math.floor(w / crop_pct)
    if mode == "squash":
        resize: Size = (sh, sw)
    elif mode == "center" and sh == sw:
        resize = sh
    else:
        return None  # "border" pads, a non-square "center" keeps the ratio within a box: not reproduced
    crop: Size = h if h == w else (h, w)
    return Preprocessing(source="timm pretrained_cfg", resize=resize, crop=crop,
                         interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
                         mean=mean, std=std, known=True, crop_pct=crop_pct)


# ---------------------------------------------------------------------------------------------- Hugging Face
def read_preprocessor_config(path: Path) -> Preprocessing:
    """A Hugging Face image processor's ``preprocessor_config.json`` as a Preprocessing, read as data by
    :mod:`nc_probe.data.preprocessor_config` (a value of the wrong type is an InputError naming the file and the field);
    a config of a kind nc-probe does not reproduce gives the default, with the reason in its warning."""
    from nc_probe.data.preprocessor_config import image_steps, read_config

    steps = image_steps(*read_config(path))
    if isinstance(steps, str):
        return Preprocessing.unknown(reason=f"{CONFIG_NAME} {steps}, which nc-probe does not reproduce")
    return Preprocessing(source=CONFIG_NAME, known=True, **steps)


# ---------------------------------------------------------------------------------------------- reports
def describe(record: Mapping | None) -> str:
    """A preprocessing record in one line."""
    if not isinstance(record, Mapping):
        return "not recorded"
    parts = []
    for key in EFFECTIVE:
        value = record.get(key)
        if key == "rescale" and value is None:
            continue
        if key == "interpolation":
            if record.get("resize") is not None:
                parts.append(str(value))
            continue
        parts.append(f"{key} {_text(value)}")
    return ", ".join(parts) if parts else str(record.get("source", "data as given"))


def _text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def preprocessing_difference(a: Mapping | None, b: Mapping | None) -> str | None:
    """What differs between two reports' ``inputs["preprocessing"]`` (resize, crop, interpolation, mean, std,
    rescale), as the end of a warning that starts with the two labels; None when the same, or when either report
    does not record it (a feature file, an older report). Where the records came from does not count: the ImageNet
    mean/std typed as flags equal torchvision's."""
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return None
    a, b = ({"rescale": UNIT_SCALE if "resize" in r else None, **r} for r in (a, b))  # image records scale by 1/255
    differ = [key for key in EFFECTIVE if not _same(a.get(key), b.get(key))]
    if not differ:
        return None
    shown = "; ".join(f"{key} {_text(a.get(key))} vs {_text(b.get(key))}" for key in differ)
    return (f"preprocess their inputs differently ({shown}); the same model gives other features on other pixels, "
            "so differences are not the model's alone")
