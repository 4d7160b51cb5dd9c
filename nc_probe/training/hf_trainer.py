"""A Hugging Face ``TrainerCallback``: the collapse of the model every N epochs (or steps), logged and written.

    from nc_probe.training.hf_trainer import NeuralCollapseTrainerCallback
    trainer = Trainer(model, args, train_dataset=..., eval_dataset=...,
                      callbacks=[NeuralCollapseTrainerCallback(num_classes=10, out_dir="runs/nc")])

At the end of every ``every``-th epoch (``every_steps``: every that many optimizer steps instead) the callback runs
``loader`` (default: the trainer's evaluation loader, ``trainer.get_eval_dataloader()``, once the trainer is given
with :meth:`bind` or found on the callback handler) through the model with nc-probe's taps
(:class:`~nc_probe.training.loop.CollapseMonitor`; batches are dicts whose ``labels`` are split off, the rest goes to
the model as keywords), logs the scalars through the trainer's ``log`` (so every ``report_to`` integration gets
them) under ``prefix``, and writes the per-epoch reports ``nc-probe trajectory OUT_DIR`` reads. The model is put
back as it was. Under DDP every rank measures its share; the main process logs and writes.

Needs ``transformers`` (and ``accelerate``, which its Trainer requires); importing nc_probe does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - the optional extra
    from nc_probe.core.errors import InputError

    raise InputError("the Trainer callback needs transformers", fix="pip install 'nc-probe[hf]' accelerate") from e

from nc_probe.core.errors import InputError
from nc_probe.reports.report import Report
from nc_probe.training.loop import CollapseMonitor, collapse_every


class NeuralCollapseTrainerCallback(TrainerCallback):
    """See the module docstring. Other keyword arguments go to :class:`~nc_probe.training.loop.CollapseMonitor`."""

    def __init__(self, num_classes: int | None = None, *, every: int = 1, every_steps: int | None = None,
                 loader: Iterable | None = None, prefix: str = "nc/", **monitor: Any):
        collapse_every(every, 0)
        if every_steps is not None:
            collapse_every(every_steps, 0)
        self.every, self.every_steps = every, every_steps
        self.loader = loader
        self.prefix = prefix
        self.monitor = CollapseMonitor(num_classes, **monitor)
        self.trainer = None
        self.history: list[dict[str, Report]] = []

    def bind(self, trainer) -> NeuralCollapseTrainerCallback:
        """The trainer whose evaluation loader is measured and whose ``log`` gets the scalars (``trainer.add_callback``
        does not say; :func:`attach` does both)."""
        self.trainer = trainer
        return self

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.every_steps is None and collapse_every(self.every, round(state.epoch or 0) - 1):
            self._measure(args, state, model, kwargs, epoch=round(state.epoch or 0) - 1)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_steps is not None and state.global_step % self.every_steps == 0:
            self._measure(args, state, model, kwargs, epoch=state.epoch)

    def _measure(self, args, state, model, kwargs, epoch) -> None:
        if model is None:
            raise InputError("the Trainer gave the callback no model",
                             fix="pass the callback to Trainer(callbacks=...)")
        loader = self.loader
        if loader is None:
            loader = kwargs.get("eval_dataloader")
        if loader is None and self.trainer is not None and self.trainer.eval_dataset is not None:
            loader = self.trainer.get_eval_dataloader()
        if loader is None:
            raise InputError("no loader to measure: the Trainer has no eval_dataset and none was given",
                             fix="pass loader= or bind(trainer) with an eval_dataset (see attach)")
        reports = self.monitor.measure(model, loader, epoch=epoch, step=state.global_step)
        self.history.append(reports)
        scalars = self.monitor.scalars(reports, self.prefix)
        if self.trainer is not None:
            self.trainer.log(scalars)  # every report_to integration; the Trainer logs on the main process only
        elif state.is_world_process_zero:
            state.log_history.append({**scalars, "epoch": state.epoch, "step": state.global_step})


def attach(trainer, num_classes: int | None = None, **kwargs: Any) -> NeuralCollapseTrainerCallback:
    """Add a :class:`NeuralCollapseTrainerCallback` to ``trainer`` and bind it (its eval loader, its ``log``)."""
    callback = NeuralCollapseTrainerCallback(num_classes, **kwargs).bind(trainer)
    trainer.add_callback(callback)
    return callback
