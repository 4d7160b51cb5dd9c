"""Option types shared by every command (the huggingface_hub ``cli/_cli_utils.py`` pattern), and the one map from
settings to flags.

Each setting of :mod:`nc_probe.core.settings` has one ``Annotated`` type here, used by every command that takes it, so
a flag has the same name, help and panel everywhere. CLI defaults are None ("not given"): the defaults live in the
settings dataclasses alone, and :func:`build_settings` passes on only what the user gave. The help texts quote the
defaults from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from nc_probe.core.settings import FIELD_GROUP, Settings
from nc_probe.core.text import format_bytes

DEFAULTS = Settings()
MODEL, DATA, EXTRACTION, METRICS, OUTPUT = ("Checkpoint: model", "Checkpoint: data", "Checkpoint: inference",
                                            "Metric settings", "Output")

#: The command-line flag of each setting (parameter name -> flag); errors name settings by parameter, and the CLI
#: spells them with these (see nc_probe.core.errors).
FLAGS = {
    "eps2": "--eps2", "rank_tol": "--rank-tol", "subspace_dim": "--subspace-dim", "classes": "--classes",
    "memory_budget": "--memory-budget", "data": "--data", "split": "--split", "limit": "--limit",
    "data_classes": "--data-classes", "image_size": "--image-size", "mean": "--mean", "std": "--std",
    "class_map": "--class-map", "seq_len": "--seq-len",
    "arch": "--arch", "arch_kwargs": "--arch-kwargs", "strip_prefix": "--strip-prefix",
    "trust_checkpoint": "--trust-checkpoint", "layer": "--layer", "device": "--device", "batch_size": "--batch-size",
    "workers": "--workers", "amp": "--amp", "spill_threshold": "--spill-threshold",
    "save_features": "--save-features", "fmt": "--format", "out": "--out",
    "min_class_count": "--min-class-count", "angle_classes": "--angle-classes",
    "angle_precision": "--angle-precision", "matrices": "--matrices", "layers": "--layers", "pool": "--pool",
    "max_dim": "--max-dim", "linear_probe": "--linear-probe", "nearest_subspace": "--nearest-subspace",
    "mahalanobis": "--mahalanobis",
}
SWITCHES = {"trust_checkpoint", "linear_probe", "nearest_subspace", "mahalanobis"}  # flags that take no value


def flag_name(param: str, value: str | None) -> str:
    """A setting as the user types it: ``--eps2``, ``--arch mypkg:net``, ``--trust-checkpoint``."""
    flag = FLAGS.get(param)
    if flag is None:
        from nc_probe.core.errors import parameter_name

        return parameter_name(param, value)
    return flag if value is None or param in SWITCHES else f"{flag} {value}"


def _no_type_on_help(option):
    if option is not None:
        option.metavar = ""  # --help takes no value: no <bool> beside it
    return option


class Command(TyperCommand):
    """Every nc-probe command: its --help shows no value type."""

    def get_help_option(self, ctx):
        return _no_type_on_help(super().get_help_option(ctx))


class Group(TyperGroup):
    """The nc-probe app: its --help shows no value type."""

    def get_help_option(self, ctx):
        return _no_type_on_help(super().get_help_option(ctx))


def help_text(text: str) -> str:
    """Option help as rich prints it: square brackets kept (rich markup would take ``[default: 0.5]`` for a style
    tag and drop it), so the ``[default: ...]`` each help ends with is shown."""
    from rich.markup import escape

    return escape(text)


def option(flag: str, help: str, panel: str, *more: str, **kwargs):
    """A typer option whose help is shown as written (:func:`help_text`) and whose default is stated in the help
    text itself (the CLI's defaults are None, "not given"; the settings own the real ones). A switch (a bool
    option) shows no ``<bool>`` type."""
    return typer.Option(flag, *more, help=help_text(help), rich_help_panel=panel, show_default=False, **kwargs)


def switch(flag: str, help: str, panel: str, *more: str):
    """A flag that takes no value: no type shown in the help (an empty metavar)."""
    return option(flag, help, panel, *more, metavar="")


_option = option


# ------------------------------------------------------------------------------------------------- metric settings
_m = DEFAULTS.metrics
Eps2 = Annotated[float | None, _option("--eps2", f"MCR^2 distortion eps^2 of the coding rates [default: {_m.eps2}].",
                                          METRICS)]
RankTol = Annotated[float | None, _option(
    "--rank-tol", f"Relative eigenvalue cut-off of rank_numerical [default: {_m.rank_tol}].", METRICS)]
SubspaceDim = Annotated[int | None, _option(
    "--subspace-dim", "Fix the basis size k of every class subspace for the principal angles [default: the class's "
                      "rank_energy95].", METRICS)]
Classes = Annotated[str | None, _option(
    "--classes", "Class ids whose subspace metrics are computed, e.g. 0,3,5-9 [default: all that fit the memory "
                 "budget].", METRICS)]
MemoryBudget = Annotated[str | None, _option(
    "--memory-budget", f"Memory for the per-class d x d statistics, e.g. 2GiB [default: "
                       f"{format_bytes(_m.memory_budget)}].", METRICS)]

MinClassCount = Annotated[int | None, _option(
    "--min-class-count", "Leave out of every metric the classes with fewer samples than this [default: "
                         f"{_m.min_class_count}: none].", METRICS)]
AngleClasses = Annotated[int | None, _option(
    "--angle-classes", "Principal angles for the K most frequent classes (0: none) [default: all, up to 1000].",
    METRICS)]
AnglePrecision = Annotated[str | None, _option(
    "--angle-precision", "float64 (exact) or float32 products for the principal angles (about twice as fast on "
                         f"CPUs; affinities to ~1e-5) [default: {_m.angle_precision}].", METRICS)]
Matrices = Annotated[str | None, _option(
    "--matrices", "Keep the class x class matrices (cosines, angles): auto (up to 2048 classes; above 100 in a side "
                  f"file beside the JSON), always, or never (summaries only) [default: {_m.matrices}].", METRICS)]

# ------------------------------------------------------------------------------------------------- model settings
Arch = Annotated[str | None, _option(
    "--arch", "Architecture for a state_dict: torchvision:NAME, timm:NAME or package.module:factory [default: from "
              "the checkpoint's metadata].", MODEL)]
ArchKwargs = Annotated[str | None, _option(
    "--arch-kwargs", """JSON keyword arguments of the factory, e.g. '{"num_classes": 10}' [default: the """
                     "checkpoint's metadata, else none].", MODEL)]
StripPrefix = Annotated[str | None, _option(
    "--strip-prefix", "Remove this prefix from state_dict keys [default: none; module. and _orig_mod. always are "
                      "removed].", MODEL)]
TrustCheckpoint = Annotated[bool, switch(
    "--trust-checkpoint", "Run code from the checkpoint: unpickle a fully pickled nn.Module, load TorchScript "
                          "archives and torch.export programs (they are code), and import the architecture or data "
                          "its metadata names. Only for files you trust (docs/security.md) [default: off].", MODEL)]

# -------------------------------------------------------------------------------------------------- data settings
Data = Annotated[str | None, _option(
    "--data", "Data: sample:digits, arrays.npz/.pt (x, y), an image folder, torchvision:CLASS:ROOT or "
              "package.module:function [default: from the checkpoint's metadata].", DATA)]
Split = Annotated[str | None, _option(
    "--split", "Dataset split, e.g. train or test; two, e.g. train,test, analyse both side by side (analyze, "
               "trajectory) [default: the checkpoint's metadata, else the data's own].", DATA)]
Limit = Annotated[int | None, _option("--limit", "Use at most N samples (evenly spread over classes) [default: all].",
                                      DATA)]
DataClasses = Annotated[str | None, _option("--data-classes", "Only samples of these classes, e.g. 0-4 [default: "
                                                              "all].", DATA)]
ImageSize = Annotated[int | None, _option(
    "--image-size", "Images: the side of the centre crop; the resize before it is scaled as the model's own "
                    "transform scales it [default: the model's own preprocessing (torchvision, timm, a Hugging Face "
                    "folder, the checkpoint's metadata), else each image's size].", DATA)]
Mean = Annotated[str | None, _option(
    "--mean", "Per-channel normalisation mean, e.g. 0.5,0.5,0.5; replaces only the mean of the model's own "
              "preprocessing [default: the model's own, else none].", DATA)]
Std = Annotated[str | None, _option(
    "--std", "Per-channel normalisation std, e.g. 0.25,0.25,0.25; replaces only the std of the model's own "
             "preprocessing [default: the model's own, else none].", DATA)]
ClassMap = Annotated[str | None, _option(
    "--class-map", "Image folders: which class index each folder is. A .txt file of the classifier's class names, "
                   "one per line in class order, a .json file or a JSON object {folder: index} [default: by name "
                   "when the checkpoint names its classes, else folder order].", DATA)]
SeqLen = Annotated[int | None, _option(
    "--seq-len", "Text data (.txt, .jsonl) for a Hugging Face text model: tokens per window [default: 256].", DATA)]

# -------------------------------------------------------------------------------------------- extraction settings
_e = DEFAULTS.extraction
Layer = Annotated[str | None, _option(
    "--layer", "Module whose output is tapped [default: the input of the final nn.Linear].", EXTRACTION)]
Device = Annotated[str | None, _option("--device", f"auto, cpu, cuda or mps [default: {_e.device}].",
                                          EXTRACTION)]
BatchSize = Annotated[int | None, _option("--batch-size", f"Inference batch size [default: {_e.batch_size}].",
                                             EXTRACTION)]
Workers = Annotated[int | None, _option("--workers", f"DataLoader worker processes [default: {_e.workers}].",
                                           EXTRACTION)]
Amp = Annotated[str | None, _option("--amp", f"Autocast: bf16, fp16 or off [default: {_e.amp}].", EXTRACTION)]
SpillThreshold = Annotated[str | None, _option(
    "--spill-threshold", f"Extracted features kept in memory up to this size, e.g. 2GiB; beyond it they go to a "
                         f"temporary file for the analysis [default: {format_bytes(_e.spill_threshold)}].",
    EXTRACTION)]
Layers = Annotated[str | None, _option(
    "--layers", "Layers to tap, comma-separated: full module names, globs (layer*.1, blocks.*), re:REGEX, indices "
                "(-1), @blocks (the repeated blocks) and @penultimate (the classifier's input) "
                "[default: @blocks,@penultimate].", EXTRACTION)]
Pool = Annotated[str | None, _option(
    "--pool", "How a layer's output becomes one vector per sample: gap (average over conv positions or tokens), "
              "cls (a ViT's class token), mean (token mean) or auto (gap for conv maps; cls when the model has a "
              "class token, else mean, for tokens) [default: auto].", EXTRACTION)]
MaxDim = Annotated[int | None, _option(
    "--max-dim", f"Wider layers are projected to this many dimensions by a seeded random map [default: "
                 f"{_e.max_dim}].", EXTRACTION)]
LinearProbe = Annotated[bool, switch(
    "--linear-probe", "Also compute acc_linear_probe: a closed-form ridge probe scored in the second pass [default: "
                      "off; always on in nc-probe layers].", METRICS)]
NearestSubspace = Annotated[bool, switch(
    "--nearest-subspace", "Also compute acc_nearest_subspace: the MCR^2 nearest-subspace rule, one more pass over "
                          "the features (about 6x one float64 X^T X at N=1M, C=100, d=512) [default: off].", METRICS)]
Mahalanobis = Annotated[bool, switch(
    "--mahalanobis", "Also compute acc_ncc_mahalanobis: the nearest class mean under the shared within-class "
                     "covariance, one more C-row rule scored in the second pass (about 0.2x one float64 X^T X at "
                     "N=1M, d=512, C=100) [default: off].", METRICS)]
SaveFeatures = Annotated[Path | None, _option(
    "--save-features", "Keep the extracted features here, so later runs need no model [default: not kept].",
    EXTRACTION)]

# ------------------------------------------------------------------------------------------------------- outputs
JsonOut = Annotated[Path | None, _option("--json", "Write the report JSON here.", OUTPUT)]
HtmlOut = Annotated[Path | None, _option("--html", "Write a self-contained HTML page here.", OUTPUT)]
PlotsOut = Annotated[Path | None, _option("--plots", "Write the plots (PNG and SVG) into this folder.", OUTPUT)]
Quiet = Annotated[bool, switch("--quiet", "Print nothing but errors and warnings (stderr) [default: off].", OUTPUT,
                               "-q")]
Inputs = Annotated[list[str], typer.Argument(
    help="Two or more LABEL=PATH (a bare PATH is labelled by its file name, sample:NAME by NAME), each a checkpoint, "
         "a feature file, a report JSON or a shipped sample. The first is the baseline of the deltas.",
    show_default=False)]


def build_settings(values: dict, base: Settings | None = None) -> Settings:
    """Settings from command-line values (parameter name -> value): only the options the user gave (not None,
    not False), so every default stays the settings' own."""
    given = {k: v for k, v in values.items() if k in FIELD_GROUP and v is not None and v is not False}
    return (base or DEFAULTS).with_(**given)
