"""A Lightning callback: the collapse of the model every N epochs, logged and written as per-epoch reports.

    from nc_probe.training.lightning import NeuralCollapseCallback
    trainer = L.Trainer(callbacks=[NeuralCollapseCallback(num_classes=10, out_dir="runs/nc")])

At the end of every ``every``-th training epoch (after its validation) the callback runs ``loader`` (default: the
trainer's validation loader) through the model with nc-probe's taps (:class:`~nc_probe.training.loop.CollapseMonitor`;
``layers=`` for several), logs the scalars to every logger of the trainer under ``prefix`` (rank 0), and writes the
reports that ``nc-probe trajectory OUT_DIR`` reads. The model is put back as it was (mode, device, dtype, memory
format). Under DDP every rank measures its share and the statistics are combined; rank 0 logs and writes.

Needs ``lightning`` (``pip install nc-probe[lightning]``); importing nc_probe does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - the optional extra
    from nc_probe.core.errors import InputError

    raise InputError("the Lightning callback needs lightning", fix="pip install 'nc-probe[lightning]'") from e

from nc_probe.reports.report import Report
from nc_probe.training.loop import CollapseMonitor, collapse_every


class NeuralCollapseCallback(pl.Callback):
    """See the module docstring. Keyword arguments other than the ones below go to
    :class:`~nc_probe.training.loop.CollapseMonitor` (``layers``, ``out_dir``, ``second_pass``, ``split_batch``,
    settings such as ``eps2``)."""

    def __init__(self, num_classes: int | None = None, *, every: int = 1, loader: Iterable | None = None,
                 prefix: str = "nc/", **monitor: Any):
        super().__init__()
        collapse_every(every, 0)  # checks every
        self.every = every
        self.loader = loader
        self.prefix = prefix
        self.monitor = CollapseMonitor(num_classes, **monitor)
        self.history: list[dict[str, Report]] = []  # the reports of each measurement (every rank)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not collapse_every(self.every, trainer.current_epoch):
            return
        loader = self.loader if self.loader is not None else _first(trainer.val_dataloaders)
        if loader is None:
            return  # no validation loader and none given: nothing to measure (said once in the docs)
        reports = self.monitor.measure(pl_module, loader, epoch=trainer.current_epoch, step=trainer.global_step)
        self.history.append(reports)
        if trainer.is_global_zero:
            scalars = self.monitor.scalars(reports, self.prefix)
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)
        trainer.callback_metrics.update({k: _tensor(v) for k, v in self.monitor.scalars(reports, self.prefix).items()})


def _first(loaders):
    if loaders is None:
        return None
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    if isinstance(loaders, dict):
        return next(iter(loaders.values()), None)
    return loaders


def _tensor(value: float):
    import torch

    return torch.tensor(value)
