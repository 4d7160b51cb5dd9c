"""A Hugging Face image processor's ``preprocessor_config.json``, read as data: at most :data:`MAX_CONFIG_BYTES`,
parsed as JSON, every value nc-probe uses type-checked (a wrong type is one InputError naming the file and the
field), nothing in it imported or run (``auto_map`` and ``AutoImageProcessor`` are never used).

:func:`image_steps` turns it into the steps of :class:`nc_probe.data.preprocessing.Preprocessing`: ``do_resize`` with
``size`` (``{"height", "width"}``: that exact size; ``{"shortest_edge"}``: the shorter side; a bare int of older
configs: a square, or the shorter side when the processor also crops) and ``resample`` (a PIL filter number);
``do_center_crop`` with ``crop_size``; ``do_rescale`` with ``rescale_factor``; ``do_normalize`` with
``image_mean``/``image_std``; ConvNeXT's ``crop_pct``. A config of a kind nc-probe does not reproduce (a
``longest_edge``, normalising without a mean) gives the reason instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from nc_probe.core.errors import InputError
from nc_probe.core.json_checks import Fields
from nc_probe.core.text import quoted

CONFIG_NAME = "preprocessor_config.json"
MAX_CONFIG_BYTES = 1 << 20  # an image processor's config is a few hundred bytes
MAX_SIDE = 16384  # pixels of a resize or crop read from a file
#: PIL's filter numbers (``resample``) -> the interpolation's name.
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
FIX = f"repair or remove {CONFIG_NAME}, or pass {{mean}}, {{std}} and {{image_size}}"


def read_config(path: Path) -> tuple[dict, Fields]:
    """The config's JSON object, with the checks that name its file."""
    from nc_probe.core.files import read_input

    data = read_input(path, "image processor config", FIX, limit=MAX_CONFIG_BYTES)
    try:
        config = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"is not a readable JSON config ({type(e).__name__})", path=path, fix=FIX) from None
    f = Fields(path, FIX)
    f.mapping(config, "")
    return config, f


def image_steps(config: dict, f: Fields) -> dict | str:
    """``resize``, ``crop``, ``interpolation``, ``mean``, ``std`` and ``rescale`` of a config read by
    :func:`read_config`, or why nc-probe does not reproduce it."""
    for key in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
        f.flag(config.get(key), key)
    resample = f.integer(config.get("resample"), "resample")
    if resample is not None and resample not in PIL_FILTERS:
        f.fail("resample", f"is {resample}, not a PIL filter (0-5)")
    crop_pct = f.number(config.get("crop_pct"), "crop_pct")
    if crop_pct is not None and not 0 < crop_pct <= 1:
        f.fail("crop_pct", f"is {crop_pct}, not within (0, 1]")
    kind = f.text(config.get("image_processor_type") or config.get("feature_extractor_type"),
                  "image_processor_type") or ""
    size = _size(f, config.get("size"), "size", square="crop_size" not in config)
    crop = _size(f, config.get("crop_size"), "crop_size", square=True)
    mean, std = _stats(f, config, "image_mean"), _stats(f, config, "image_std")
    rescale = _rescale(f, config)
    resize: Any = None
    if config.get("do_resize", True):
        if size is None or isinstance(size, str):
            return "resizes to no size it states" if size is None else f"has a size {size}"
        resize = size
    if not config.get("do_center_crop", False):
        crop = None
    elif crop is None or isinstance(crop, str):
        return "crops to no size it states" if crop is None else f"has a crop_size {crop}"
    if crop_pct is not None and "ConvNext" in kind and isinstance(resize, int) and crop is None:
        # ConvNeXT's processor: below 384 it resizes the shorter side to size/crop_pct and crops size
        resize, crop = (int(resize / crop_pct), resize) if resize < 384 else ((resize, resize), None)
    if not config.get("do_normalize", True):
        mean = std = None
    elif mean is None or std is None:
        return "normalises without image_mean and image_std"
    return {"resize": resize, "crop": crop, "interpolation": PIL_FILTERS[2 if resample is None else resample],
            "mean": mean, "std": std, "rescale": rescale}


def _stats(f: Fields, config: dict, key: str) -> tuple[float, ...] | None:
    value = config.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    values = f.numbers(value, key, absent=False)
    if values is None:
        return None
    if not 1 <= len(values) <= 4:
        f.fail(key, f"has {len(values)} values, not one per channel")
    if key == "image_std" and any(v == 0 for v in values):
        f.fail(key, "contains a zero")
    return tuple(float(v) for v in values)


def _rescale(f: Fields, config: dict) -> float:
    factor = f.number(config.get("rescale_factor"), "rescale_factor")
    if not config.get("do_rescale", True):
        return 1.0
    rescale = 1 / 255 if factor is None else float(factor)
    if not math.isfinite(rescale) or rescale <= 0:
        f.fail("rescale_factor", f"is {factor}, not a positive number")
    return rescale


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _size(f: Fields, value, field: str, *, square: bool) -> int | tuple[int, int] | str | None:
    """``{"height", "width"}`` -> (h, w); ``{"shortest_edge"}`` -> the shorter side; a bare int -> a square when
    ``square``, else the shorter side; a str: a kind of size nc-probe does not reproduce."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        n = _side(f, value, field)
        return (n, n) if square else n
    f.mapping(value, field, null=True)
    for key, v in value.items():
        _side(f, v, f"{field}.{key}")
    if set(value) == {"height", "width"}:
        return int(value["height"]), int(value["width"])
    if "shortest_edge" in value and not ({"height", "width"} & set(value)):
        if value.get("longest_edge") is not None:
            return "with a longest_edge"
        return int(value["shortest_edge"])
    return f"of the keys {', '.join(quoted(k, 30) for k in sorted(value)[:4])}"


def _side(f: Fields, value, field: str) -> int:
    f.integer(value, field, null=False, minimum=1)
    if value > MAX_SIDE:
        f.fail(field, f"is {value}, more than {MAX_SIDE} pixels")
    return value
