"""Sample data and models that ship with nc-probe: the 8x8 handwritten digits and a small MLP.

- ``nc_probe/data/digits.npz``: the 1797 8x8 digits that scikit-learn distributes (the UCI optdigits test set;
  origin and license in ``nc_probe/data/README.md``) with a fixed stratified train/test split, so the samples
  need no run-time dependency beyond numpy and torch.
- :func:`digits_net`: the model factory of the sample checkpoints (``sample:ce``, ``sample:mcr2``,
  ``sample:ce_epoch20``, ...; files in ``sample_checkpoints/``, rebuilt by ``scripts/train_samples.py``). Its last
  module is the ``nn.Linear`` head, so the default tap (the input of the final ``nn.Linear``) gives the penultimate
  features:

  * cross-entropy (``normalize=False``): ``ReLU(BatchNorm(Linear(...)))``, the post-activation features in which
    Papyan et al. observed neural collapse (BatchNorm makes this small MLP collapse within a few hundred epochs);
  * MCR^2 (``normalize=True``): ``normalize(Linear(...))`` on the unit sphere, as Yu et al. train them; no ReLU
    before the normalization, so class subspaces can be orthogonal. The normalization is part of the backbone, so
    the tapped features are exactly the ones the MCR^2 loss saw.

Checkpoints carry ``{"state_dict": ..., "nc_probe": {"arch": "nc_probe.samples:digits_net", "arch_kwargs": ...,
"data": "sample:digits", "split": "train", ...}}`` and load with ``torch.load(weights_only=True)``;
:func:`load_sample_checkpoint` rebuilds the model from them.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # nc_probe/, above this load/ stage
DATA_DIR = PACKAGE_DIR / "data"
DIGITS_PATH = DATA_DIR / "digits.npz"
#: The shipped checkpoints: ``sample_checkpoints/`` of the repository, installed as the package
#: ``nc_probe.sample_checkpoints`` (an editable install maps that name to the folder, a wheel carries the files).
SAMPLE_PACKAGE = "nc_probe.sample_checkpoints"
#: The input of ``nc-probe analyze`` without arguments.
DEFAULT_SAMPLE = "sample:ce"
#: The input of ``nc-probe layers`` without arguments: the deeper sample, whose depth trend is visible.
DEFAULT_LAYER_SAMPLE = "sample:deep"
SPLITS = ("train", "test", "all")
DIGITS_CLASS_NAMES = [str(i) for i in range(10)]
DIGITS_DATASET = "digits 8x8 (UCI via scikit-learn)"
#: keyword arguments of :func:`digits_net` used by the shipped checkpoints
CE_KWARGS = {"num_classes": 10, "hidden": 128, "feat_dim": 64, "normalize": False}
MCR2_KWARGS = {"num_classes": 10, "hidden": 128, "feat_dim": 64, "normalize": True}
#: keyword arguments of :func:`digits_deep_net` used by ``sample:deep``
DEEP_KWARGS = {"num_classes": 10, "width": 64, "depth": 8}


# ---------------------------------------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=1)
def _load_npz() -> dict:
    if not DIGITS_PATH.is_file():
        raise FileNotFoundError(f"{DIGITS_PATH} is missing; it ships with nc-probe (reinstall, or rebuild it with "
                                "scripts/train_samples.py --digits-csv)")
    with np.load(DIGITS_PATH, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for a in arrays.values():
        a.setflags(write=False)  # cached: callers get copies or read-only views
    return arrays


def digits_indices(split: str) -> np.ndarray:
    """Row indices of ``split`` ("train", "test" or "all") into the 1797 digits, in stored (ascending) order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = _load_npz()
    if split == "all":
        return np.arange(len(data["y"]))
    return data[f"{split}_idx"].astype(np.int64)  # a copy


def digits_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of ``split``: x float32 (n, 64), pixel counts 0..16 scaled to [0, 1]; y int64 (n,) in 0..9."""
    idx = digits_indices(split)
    data = _load_npz()
    x = data["x"][idx].astype(np.float32) / np.float32(16.0)
    return x, data["y"][idx].astype(np.int64)


class DigitsDataset(torch.utils.data.TensorDataset):
    """A ``TensorDataset`` of ``(x float32 (64,), y int64)`` that also declares ``classes`` (as torchvision
    datasets do) and ``targets``."""

    classes = DIGITS_CLASS_NAMES

    def __init__(self, x: np.ndarray, y: np.ndarray, split: str):
        super().__init__(torch.from_numpy(x), torch.from_numpy(y))
        self.split = split

    @property
    def targets(self) -> torch.Tensor:
        return self.tensors[1]


def digits_dataset(split: str = "train") -> DigitsDataset:
    """The digits of ``split`` as a ``TensorDataset`` of ``(x float32 (64,), y int64)``."""
    x, y = digits_arrays(split)
    return DigitsDataset(x, y, split)


def sample_dataset(name: str, split: str = "train") -> torch.utils.data.Dataset:
    """Resolve a checkpoint's ``"data": "sample:<name>"``; only ``digits`` exists."""
    name = name.removeprefix("sample:")
    if name != "digits":
        raise ValueError(f"unknown sample dataset {name!r}; the samples ship 'digits'")
    return digits_dataset(split)


# --------------------------------------------------------------------------------------------------------- model
class L2Normalize(nn.Module):
    """Rows onto the unit sphere: ``x / max(||x||, eps)``."""

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class DigitsNet(nn.Sequential):
    """``backbone`` (64 -> hidden -> hidden -> feat_dim features) followed by the ``head`` ``nn.Linear``.

    ``model.features(x)`` gives the penultimate features, ``model(x)`` the logits; ``model[-1]`` is the head.
    """

    def __init__(self, num_classes: int = 10, hidden: int = 128, feat_dim: int = 64, normalize: bool = False,
                 in_dim: int = 64):
        def block(i, o):
            return [nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU()]

        final = [nn.Linear(hidden, feat_dim), L2Normalize()] if normalize else block(hidden, feat_dim)
        backbone = nn.Sequential(*block(in_dim, hidden), *block(hidden, hidden), *final)
        super().__init__(OrderedDict(backbone=backbone, head=nn.Linear(feat_dim, num_classes)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self[0](x)


def digits_net(num_classes: int = 10, hidden: int = 128, feat_dim: int = 64, normalize: bool = False,
               in_dim: int = 64) -> DigitsNet:
    """The MLP of the sample checkpoints. ``normalize=False``: ReLU features (cross-entropy);
    ``normalize=True``: L2-normalized features (MCR^2). Its last module is the ``nn.Linear`` head."""
    return DigitsNet(num_classes=num_classes, hidden=hidden, feat_dim=feat_dim, normalize=normalize, in_dim=in_dim)


class DeepBlock(nn.Module):
    """``ReLU(BatchNorm(Linear(x)))`` as one module, so that ``@blocks`` finds the blocks of :class:`DigitsDeepNet`
    (a plain ``nn.Sequential`` per block would make the stem and the block list look like two repeated blocks)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.BatchNorm1d(out_dim)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.linear(x)))


class DigitsDeepNet(nn.Sequential):
    """``stem`` (a :class:`DeepBlock` 64 -> width), ``blocks`` (``depth`` blocks width -> width), ``head``
    (``nn.Linear`` width -> classes): the deep sample, deep enough for the layer-wise laws to show (the
    separation fuzziness of each block's output falls geometrically with depth)."""

    def __init__(self, num_classes: int = 10, width: int = 64, depth: int = 8, in_dim: int = 64):
        blocks = nn.Sequential(*[DeepBlock(width, width) for _ in range(depth)])
        super().__init__(OrderedDict(stem=DeepBlock(in_dim, width), blocks=blocks,
                                     head=nn.Linear(width, num_classes)))


def digits_deep_net(num_classes: int = 10, width: int = 64, depth: int = 8, in_dim: int = 64) -> DigitsDeepNet:
    """The MLP of ``sample:deep``: a stem and ``depth`` Linear-BatchNorm-ReLU blocks of ``width``, then the head."""
    return DigitsDeepNet(num_classes=num_classes, width=width, depth=depth, in_dim=in_dim)


#: Factories a checkpoint's metadata may name without the user's consent (see nc_probe.load.trust): exact names only.
FACTORIES: dict[str, Callable[..., nn.Module]] = {"nc_probe.samples:digits_net": digits_net,
                                                 "nc_probe.samples:digits_deep_net": digits_deep_net}


# --------------------------------------------------------------------------------------------------- checkpoints
def sample_dir() -> Path:
    """The folder holding the shipped sample checkpoints."""
    import importlib.resources

    try:
        return Path(str(importlib.resources.files(SAMPLE_PACKAGE)))
    except ModuleNotFoundError:  # a source tree used without installing: the folder beside the package
        return PACKAGE_DIR.parent / "sample_checkpoints"


def sample_names() -> list[str]:
    """Names of the shipped sample checkpoints (``ce``, ``ce_epoch1``, ..., ``mcr2``; ``lm``, ``lm_early``: Hugging
    Face folders), sorted."""
    folder = sample_dir()
    if not folder.is_dir():
        return []
    files = [p.stem for p in folder.glob("*.pt")]
    folders = [p.name for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    return sorted(files + folders)


def sample_path(name: str) -> Path:
    """Path of a shipped sample checkpoint: ``sample_path("ce")`` or ``sample_path("sample:ce")`` (a file), or
    ``sample_path("lm")`` (a Hugging Face folder)."""
    name = str(name).removeprefix("sample:").removesuffix(".pt")
    for path in (sample_dir() / f"{name}.pt", sample_dir() / name):
        if path.is_file() or (path.is_dir() and (path / "config.json").is_file()):
            return path
    raise FileNotFoundError(f"no sample checkpoint {name!r}; the samples are {', '.join(sample_names())}")


#: Data files of the samples that are not the digits: ``sample:lm_text``, the tokens of the language-model samples.
SAMPLE_DATA = {"lm_text": DATA_DIR / "lm_text.npz"}


def sample_data_path(spec: str) -> Path:
    """The file behind a sample data spec such as ``sample:lm_text``."""
    name = str(spec).removeprefix("sample:")
    path = SAMPLE_DATA.get(name)
    if path is None or not path.is_file():
        raise FileNotFoundError(f"no sample data {name!r}; the samples ship {', '.join(['digits', *SAMPLE_DATA])}")
    return path


def sample_checkpoints() -> list[Path]:
    """The shipped sample checkpoints, sorted by name."""
    return [sample_path(n) for n in sample_names()]


def load_sample_checkpoint(path) -> tuple[nn.Module, dict]:
    """``(model in eval mode, metadata)`` of a checkpoint written by ``scripts/train_samples.py``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["nc_probe"]
    if meta.get("arch") not in FACTORIES:
        raise ValueError(f"{path} was not built with a sample factory ({', '.join(FACTORIES)}; "
                         f"arch={meta.get('arch')!r})")
    model = FACTORIES[meta["arch"]](**meta.get("arch_kwargs", {}))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), meta
