"""The collapse of a model while it trains, for any loop: :class:`CollapseMonitor` runs a loader through the model
with nc-probe's taps (the penultimate features by default, as ``nc-probe analyze``; ``layers=`` for several, as
``nc-probe layers``), feeds :class:`~nc_probe.training.metric.NeuralCollapse` per layer, scores the exact second
pass, and writes one report per epoch that ``nc-probe trajectory FOLDER`` reads. The Lightning and Hugging Face
callbacks are thin wrappers around it; a plain PyTorch loop calls it itself::

    monitor = CollapseMonitor(num_classes=10, out_dir="runs/nc")
    for epoch in range(epochs):
        train_one_epoch(model, ...)
        monitor.measure(model, val_loader, epoch=epoch)   # eval mode, no grad; the model is put back as it was

Under torchrun every rank calls ``measure`` (the statistics are combined, never the rows); rank 0 writes. Every
rank measures with rank 0's buffers (BatchNorm running statistics, which DDP syncs only at its next training
forward), so all shares see one model; each rank's own are put back. A loader
whose sampler is a ``DistributedSampler`` already gives each rank its share; any other loader is split by batch
(rank r takes batches r, r + W, ...), so every batch counts once. A ``DistributedSampler`` pads the last share
with repeated samples (``drop_last=False``): a few rows count twice; give the monitor a loader without padding
for the exact numbers.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nc_probe.core import distributed
from nc_probe.core.devices import map_tensors
from nc_probe.core.errors import InputError
from nc_probe.core.files import atomic_write_text
from nc_probe.core.settings import MetricSettings, metric_settings
from nc_probe.extract.model_state import preserved
from nc_probe.reports.report import Report
from nc_probe.taps import make_tap
from nc_probe.taps.layers import LayerTaps
from nc_probe.taps.select import PENULTIMATE
from nc_probe.training.metric import NeuralCollapse

#: the scalars logged by default (every scalar of the report is in the JSON written)
LOG_KEYS = ("nc1", "nc1_cdnv", "nc2_etf_M", "nc2_etf_W", "nc3", "nc4", "acc_model", "acc_ncc", "rankme",
            "alpha_req", "rank_effective_total", "lidar")


def default_split(batch) -> tuple[Any, Any]:
    """``(inputs, labels)`` of a batch: a (x, y, ...) tuple or list, or a dict with ``labels``/``label``/``y``
    (the rest, without it, is the model's keyword inputs; ``pixel_values``/``input_ids`` as Hugging Face names
    them); a tensor or a 1-tuple is inputs without labels (for the label-free mode)."""
    if isinstance(batch, dict):
        key = next((k for k in ("labels", "label", "y") if k in batch), None)
        if key is None:
            raise InputError(f"a batch dict without labels (keys: {', '.join(map(str, batch))[:200]})",
                             fix="give the monitor split_batch=lambda b: (inputs, labels)")
        return {k: v for k, v in batch.items() if k != key}, batch[key]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, torch.Tensor) or (isinstance(batch, (tuple, list)) and len(batch) == 1):
        return (batch if isinstance(batch, torch.Tensor) else batch[0]), None  # inputs alone: label-free mode
    raise InputError(f"cannot split a {type(batch).__name__} batch into inputs and labels",
                     fix="give the monitor split_batch=lambda b: (inputs, labels)")


def to_device(x, device: torch.device):
    return map_tensors(x, lambda t: t.to(device, non_blocking=True))


def rank_batches(loader: Iterable, shard: bool | str = "auto") -> Iterator:
    """This rank's batches: all of them when the loader is already sharded (a DistributedSampler) or outside
    torchrun, else every world-size-th batch from the rank's index."""
    if not distributed.active() or shard is False:
        yield from loader
        return
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    # already a rank's share: a DistributedSampler (Lightning), or a loader accelerate prepared (the HF Trainer's)
    sharded = any(isinstance(s, torch.utils.data.DistributedSampler) for s in (sampler, inner)) \
        or type(loader).__module__.startswith("accelerate") or type(batch_sampler).__module__.startswith("accelerate")
    if shard == "auto" and sharded:
        yield from loader
        return
    r, w = distributed.rank(), distributed.world_size()
    for i, batch in enumerate(loader):
        if i % w == r:
            yield batch


@contextlib.contextmanager
def rank0_buffers(model: nn.Module) -> Iterator[None]:
    """Under torchrun, measure every rank's share with rank 0's buffers (BatchNorm running statistics): DDP syncs
    them only at its next training forward, so after the last step each rank's differ and the ranks would measure
    different models. Each rank's own buffers are put back afterwards."""
    if not distributed.active():
        yield
        return
    import torch.distributed as dist

    kept = [(b, b.detach().clone()) for b in model.buffers() if b is not None and b.is_floating_point()]
    for b, _ in kept:
        t = b.detach().to(distributed.comm_device())
        dist.broadcast(t, src=0)
        b.data.copy_(t.to(b.device))
    try:
        yield
    finally:
        for b, own in kept:
            b.data.copy_(own)


def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def safe_name(layer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", layer).strip("_") or "layer"


class CollapseMonitor:
    """Per-epoch collapse reports of a model being trained; see the module docstring.

    Parameters
    ----------
    num_classes:
        C; None: label-free mode (labels in the batches are ignored; rankme, alpha_req, rank_effective_total).
    layers:
        None: the penultimate features (the input of the final nn.Linear) with its W and b. A list of module names
        (and/or ``"@penultimate"``): one report per layer, each under its own folder beside the first.
    out_dir:
        Where the per-epoch reports go (``epoch_0003.json``; other layers in ``<out_dir>/<layer>/``).
    second_pass:
        Run the loader a second time for nc4, acc_model, acc_ncc (and acc_ncc_mahalanobis with the setting
        ``mahalanobis=True``) against the epoch's final class means (exact; doubles the forward passes of the
        measurement). False: those keys are null.
    split_batch:
        ``batch -> (inputs, labels)``; default :func:`default_split`.
    shard:
        "auto" (see :func:`rank_batches`), True (always split by batch under torchrun) or False (never).
    views:
        Label-free mode with lidar: the second element of each batch (what would be the labels) is the source sample
        id of each row, whose views form lidar's surrogate classes.
    """

    def __init__(self, num_classes: int | None = None, *, layers: list[str] | None = None, out_dir=None,
                 second_pass: bool = True, split_batch: Callable[[Any], tuple[Any, Any]] | None = None,
                 shard: bool | str = "auto", log_keys: Iterable[str] = LOG_KEYS, views: bool = False,
                 settings: MetricSettings | None = None, **shortcuts):
        if views and num_classes is not None:
            raise InputError("views=True with num_classes: the views' source ids take the labels' place",
                             fix="num_classes=None for the label-free measures with lidar")
        self.views = views
        self.num_classes = num_classes
        self.layers = None if layers is None else list(layers)
        if self.layers is not None and not self.layers:
            raise InputError("layers=[] names no layer", fix="leave layers out for the penultimate features")
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.second_pass = second_pass
        self.split_batch = split_batch or default_split
        self.shard = shard
        self.log_keys = tuple(log_keys)
        self.settings = metric_settings(settings, **shortcuts)
        self.written: list[Path] = []

    # ------------------------------------------------------------------ one measurement
    def measure(self, model: nn.Module, loader: Iterable, *, epoch: float | None = None, step: int | None = None,
                write: bool = True) -> dict[str, Report]:
        """Reports by layer name of ``model`` on ``loader`` (every rank's batches together). The model runs in eval
        mode without gradients and is put back as it was (mode, device, dtype, memory format)."""
        with preserved(model), torch.no_grad(), rank0_buffers(model):
            model.eval()
            reports = self._run(model, loader)
        for name, r in reports.items():
            r.inputs.update({"epoch": epoch, "step": step, "layer": name})
            r.inputs.setdefault("metadata", {})
            r.inputs["metadata"] = {**(r.inputs["metadata"] or {}), "epoch": epoch, "step": step}
        if write and self.out_dir is not None and distributed.is_main():
            self._write(reports, epoch, step)
        return reports

    def scalars(self, reports: dict[str, Report], prefix: str = "nc/") -> dict[str, float]:
        """The logged scalars: ``prefix + key`` (``prefix + layer/ + key`` for several layers), finite values only."""
        out = {}
        several = len(reports) > 1
        for name, r in reports.items():
            for key in self.log_keys:
                value = r.metrics.get(key)
                if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
                    out[f"{prefix}{safe_name(name) + '/' if several else ''}{key}"] = float(value)
        return out

    def _run(self, model: nn.Module, loader: Iterable) -> dict[str, Report]:
        device = model_device(model)
        tap: Any = LayerTaps(model, self.layers) if self.layers is not None else make_tap(model)
        try:
            metrics: dict[str, NeuralCollapse] = {}
            for x, y in self._batches(loader, device):
                feats = self._features(tap, x)
                for name, h in feats.items():
                    if name not in metrics:
                        metrics[name] = NeuralCollapse(self.num_classes, settings=self.settings)
                    if self.num_classes is not None and y is None:
                        raise InputError("a batch without labels and num_classes given",
                                         fix="give labelled batches, or num_classes=None for the label-free measures")
                    if self.views:
                        metrics[name].update(h, source=y)  # the batch's second element names each row's source
                    else:
                        metrics[name].update(h, y if self.num_classes is not None else None)
            names = self._names(tap, metrics)
            for name in names:  # a rank whose share was empty still takes part in every collective
                metrics.setdefault(name, NeuralCollapse(self.num_classes, settings=self.settings))
            W, b = getattr(tap, "W", None), getattr(tap, "b", None)
            head = self._head_layer(tap, names)
            scorers = {}
            if self.second_pass and self.num_classes is not None:
                scorers = {n: metrics[n].second_pass(W if n == head else None, b if n == head else None)
                           for n in names}
                for x, y in self._batches(loader, device):
                    for name, h in self._features(tap, x).items():
                        scorers[name].update(h, y)
            return {n: metrics[n].compute(W if n == head else None, b if n == head else None,
                                          second_pass=scorers.get(n)) for n in names}
        finally:
            tap.close()

    def _batches(self, loader: Iterable, device: torch.device) -> Iterator[tuple[Any, Any]]:
        for batch in rank_batches(loader, self.shard):
            x, y = self.split_batch(batch)
            yield to_device(x, device), (None if y is None else torch.as_tensor(y).reshape(-1))

    def _features(self, tap, x) -> dict[str, torch.Tensor]:
        feats, _ = tap(x)
        if isinstance(feats, dict):
            return feats
        return {PENULTIMATE: feats}

    def _names(self, tap, metrics: dict) -> list[str]:
        """The layers measured, the same on every rank (a rank that ran no batch learns them from the others)."""
        mine = list(metrics) if metrics else None
        seen = [n for n in distributed.gather_objects(mine) if n]
        if not seen:
            raise InputError("the loader gave no batch on any rank", fix="pass a loader with data")
        return seen[0]

    def _head_layer(self, tap, names: list[str]) -> str | None:
        """The layer whose classifier is the final nn.Linear's W (nc2_*_W, nc3, nc4, acc_model)."""
        if self.layers is None:
            return PENULTIMATE
        return PENULTIMATE if PENULTIMATE in names else None

    def _write(self, reports: dict[str, Report], epoch, step) -> None:
        assert self.out_dir is not None
        tag = f"epoch_{int(epoch):04d}" if epoch is not None and float(epoch).is_integer() else \
            f"epoch_{epoch}" if epoch is not None else f"step_{int(step or 0):08d}"
        for i, (name, r) in enumerate(reports.items()):
            folder = self.out_dir if i == 0 else self.out_dir / safe_name(name)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{tag}.json"
            r.save(path)
            self.written.append(path)
        index = {"kind": "nc-probe-training-reports", "layers": list(reports),
                 "folders": {n: "." if i == 0 else safe_name(n) for i, n in enumerate(reports)}}
        atomic_write_text(self.out_dir / "layers.json", json.dumps(index, indent=1))


def collapse_every(every: int, epoch: int) -> bool:
    """True on the epochs (0-based) a monitor set to run ``every`` epochs measures: the ``every``-th, 2x, ..."""
    if every < 1:
        raise InputError(f"every={every}: measure every 1 or more epochs (or steps)", fix="pass every=1")
    return (epoch + 1) % every == 0
