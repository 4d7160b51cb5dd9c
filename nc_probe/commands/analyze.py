"""``nc-probe analyze [INPUT]``: analyze a checkpoint, a feature file or a report, print and write the report."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ..errors import InputError
from ..metrics import CATALOG
from .options import parse_bytes, parse_classes

METRICS_HELP = (
    "Metrics (docs/metrics.md in nc-probe's repository defines each; ↓/↑ is the way it moves as the features get "
    "more collapsed, separated, compressed, ...):\n\n"
    + "\n\n".join(f"[bold]{m.key}[/] {m.arrow} {m.word or '(no direction)'}: {m.doc}" for m in CATALOG.values()))

MODEL = "Checkpoint: model"
DATA = "Checkpoint: data and inference"
METRICS = "Metric settings"
OUTPUT = "Output"


SETTINGS_OPTIONS = ("eps2", "rank_tol", "subspace_dim", "classes", "memory_budget")
CHECKPOINT_OPTIONS = ("arch", "arch_kwargs", "strip_prefix", "trust_checkpoint", "layer", "data", "split", "limit",
                      "data_classes", "image_size", "mean", "std", "class_map", "device", "batch_size", "workers",
                      "amp")


def with_analysis_options(fn):
    """Give a command ``fn`` that takes ``**analysis`` the metric-setting and checkpoint options of ``analyze``
    (the same parameters, help and defaults), so every command analyzes an input exactly as ``analyze`` would."""
    names = SETTINGS_OPTIONS + CHECKPOINT_OPTIONS
    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
    shared = [p for p in inspect.signature(analyze, eval_str=True).parameters.values() if p.name in names]
    fn.__signature__ = inspect.Signature(own + shared)
    return fn


def analysis_arguments(analysis: dict, quiet: bool) -> tuple[dict, dict]:
    """``(settings, checkpoint_options)`` for :func:`nc_probe.inputs.report_for` from ``**analysis`` options."""
    settings = settings_from_options(**{k: analysis.get(k) for k in SETTINGS_OPTIONS})
    ckpt = {k: analysis.get(k) for k in CHECKPOINT_OPTIONS}
    ckpt["trust_checkpoint"] = ckpt["trust_checkpoint"] or None
    return settings, checkpoint_options(**ckpt, progress=not quiet or None)


def settings_from_options(eps2, rank_tol, subspace_dim, classes, memory_budget) -> dict:
    return {"eps2": eps2, "rank_tol": rank_tol, "subspace_dim": subspace_dim, "classes": parse_classes(classes),
            "memory_budget": parse_bytes(memory_budget)}


def checkpoint_options(**opts) -> dict:
    arch_kwargs = opts.pop("arch_kwargs")
    if arch_kwargs:
        try:
            opts["arch_kwargs"] = json.loads(arch_kwargs)
        except json.JSONDecodeError as e:
            raise InputError(f"--arch-kwargs is not JSON ({e.msg})", fix="""write e.g. '{"num_classes": 10}'""") \
                from None
    for key in ("mean", "std"):
        if opts.get(key):
            try:
                opts[key] = [float(v) for v in opts[key].split(",")]
            except ValueError:
                raise InputError(f"--{key} {opts[key]!r} is not a comma-separated list of numbers",
                                 fix=f"write e.g. --{key} 0.5,0.5,0.5") from None
    opts["data_classes"] = parse_classes(opts.get("data_classes"), "--data-classes")
    return {k: v for k, v in opts.items() if v is not None}


def analyze(
    input: Annotated[Optional[Path], typer.Argument(
        help="Checkpoint (.pt/.pth/.ckpt/.safetensors/.pt2), feature file (.safetensors/.npz/.pt with "
             "features+labels) or report JSON, or a shipped sample: sample:ce, sample:mcr2, sample:ce_epoch20, ... "
             "Default: sample:ce.",
        show_default=False)] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the report JSON here.",
                                                      rich_help_panel=OUTPUT)] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Write report.json, metrics.csv, per_class.csv and angles.csv into this folder.",
        rich_help_panel=OUTPUT)] = None,
    fmt: Annotated[Optional[str], typer.Option(
        "--format", help="Tables as csv, parquet (needs pyarrow), markdown or json: into --out DIR, or (text "
                         "formats, without --out) printed instead of the summary.", rich_help_panel=OUTPUT)] = None,
    plots: Annotated[Optional[Path], typer.Option("--plots", help="Write the plots (PNG and SVG) into this folder.",
                                                  rich_help_panel=OUTPUT)] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Write a self-contained HTML report here.",
                                                 rich_help_panel=OUTPUT)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.",
                                        rich_help_panel=OUTPUT)] = False,
    eps2: Annotated[float, typer.Option("--eps2", help="MCR^2 distortion eps^2 of the coding rates.",
                                        rich_help_panel=METRICS)] = 0.5,
    subspace_dim: Annotated[Optional[int], typer.Option(
        "--subspace-dim", help="Fix the basis size k of every class subspace for the principal angles "
                               "(default: the class's rank_energy95).", rich_help_panel=METRICS)] = None,
    rank_tol: Annotated[float, typer.Option("--rank-tol", help="Relative eigenvalue cut-off of rank_numerical.",
                                            rich_help_panel=METRICS)] = 1e-6,
    classes: Annotated[Optional[str], typer.Option(
        "--classes", help="Class ids whose subspace metrics are computed, e.g. 0,3,5-9 (default: all that fit "
                          "the memory budget).", rich_help_panel=METRICS)] = None,
    memory_budget: Annotated[str, typer.Option(
        "--memory-budget", help="Memory for the per-class d x d statistics, e.g. 2GiB.",
        rich_help_panel=METRICS)] = "2GiB",
    arch: Annotated[Optional[str], typer.Option(
        "--arch", help="Architecture for a state_dict: torchvision:NAME, timm:NAME or package.module:factory "
                       "(default: from the checkpoint's metadata).", rich_help_panel=MODEL)] = None,
    arch_kwargs: Annotated[Optional[str], typer.Option(
        "--arch-kwargs", help="""JSON keyword arguments of the factory, e.g. '{"num_classes": 10}'.""",
        rich_help_panel=MODEL)] = None,
    strip_prefix: Annotated[Optional[str], typer.Option(
        "--strip-prefix", help="Remove this prefix from state_dict keys (module. and _orig_mod. always are).",
        rich_help_panel=MODEL)] = None,
    trust_checkpoint: Annotated[bool, typer.Option(
        "--trust-checkpoint", help="Allow unpickling arbitrary code (a fully pickled nn.Module). Only for files "
                                   "you trust.", rich_help_panel=MODEL)] = False,
    layer: Annotated[Optional[str], typer.Option(
        "--layer", help="Module whose output is tapped (default: the input of the final nn.Linear).",
        rich_help_panel=MODEL)] = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="Data: sample:digits, arrays.npz/.pt (x, y), an image folder, torchvision:CLASS:ROOT or "
                       "package.module:function (default: from the checkpoint's metadata).",
        rich_help_panel=DATA)] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Dataset split, e.g. train or test.",
                                                 rich_help_panel=DATA)] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use at most N samples.",
                                                 rich_help_panel=DATA)] = None,
    data_classes: Annotated[Optional[str], typer.Option(
        "--data-classes", help="Only samples of these classes, e.g. 0-4.", rich_help_panel=DATA)] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Resize images of a folder to this.",
                                                      rich_help_panel=DATA)] = None,
    mean: Annotated[Optional[str], typer.Option("--mean", help="Per-channel normalisation mean, e.g. 0.5,0.5,0.5.",
                                                rich_help_panel=DATA)] = None,
    std: Annotated[Optional[str], typer.Option("--std", help="Per-channel normalisation std.",
                                               rich_help_panel=DATA)] = None,
    class_map: Annotated[Optional[str], typer.Option(
        "--class-map", help="Image folders: which class index each folder is. A .txt file of the classifier's class "
                            "names, one per line in class order, a .json file or a JSON object {folder: index}. "
                            "Default: by name when the checkpoint names its classes, else folder order.",
        rich_help_panel=DATA)] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.", rich_help_panel=DATA)] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Inference batch size.",
                                            rich_help_panel=DATA)] = 256,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes.",
                                         rich_help_panel=DATA)] = 0,
    amp: Annotated[str, typer.Option("--amp", help="Autocast: bf16, fp16 or off.", rich_help_panel=DATA)] = "off",
    save_features: Annotated[Optional[Path], typer.Option(
        "--save-features", help="Keep the extracted features here, so later runs need no model.",
        rich_help_panel=DATA)] = None,
):
    """Analyze a checkpoint, feature file or report and print the metrics."""
    from ..inputs import report_for
    from ..render.exports import check_output_options, write_outputs
    from ..render.terminal import render_report
    from ..samples import DEFAULT_SAMPLE
    from .outputs import OutputSet

    if input is None:
        input = Path(DEFAULT_SAMPLE)
    settings = settings_from_options(eps2, rank_tol, subspace_dim, classes, memory_budget)
    check_output_options(fmt, out)
    outputs = OutputSet({"--json": json_path, "--out": out, "--plots": plots, "--html": html,
                         "--save-features": save_features}, dirs=("--out", "--plots"), inputs=[input, data])
    ckpt = checkpoint_options(
        arch=arch, arch_kwargs=arch_kwargs, strip_prefix=strip_prefix, trust_checkpoint=trust_checkpoint or None,
        layer=layer, data=data, split=split, limit=limit, data_classes=data_classes, image_size=image_size,
        mean=mean, std=std, class_map=class_map, device=device, batch_size=batch_size, workers=workers, amp=amp,
        progress=not quiet or None)
    with outputs.transaction() as staged:
        if save_features is not None:
            ckpt["save_features"] = staged["--save-features"]
        report = report_for(input, checkpoint_options=ckpt, **settings)
        if save_features is not None and report.inputs.get("features_file"):
            report.inputs["features_file"] = str(save_features)  # where it will be, not where it is staged
        if json_path is not None:
            report.save(staged["--json"])
        text = write_outputs(report, out=staged.get("--out"), fmt=fmt, plots=staged.get("--plots"),
                             html=staged.get("--html"))
    if text is not None:
        typer.echo(text, nl=False)
    elif not quiet:
        render_report(report)


def register(app: typer.Typer, user_errors) -> None:
    app.command("analyze", epilog=METRICS_HELP)(user_errors(analyze))
