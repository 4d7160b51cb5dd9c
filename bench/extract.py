"""Benchmark of checkpoint feature extraction: nc-probe's batched inference + statistics against a bare forward loop.

What it measures (the goals are the project's, not enforced here):

- time of nc-probe's extraction (the data path of ``analyze_checkpoint``: ``open_data`` + ``iter_batches`` through a
  DataLoader, the default feature tap with its forward hook, NaN checks, float64 ``ClassStats`` updates and the
  in-memory FeatureStore) divided by the time of a bare ``model(x)`` loop under ``torch.inference_mode`` over the
  same batches (the same tensors, already in memory), measured in the same run (goal <= 1.05);
- images/s of both.

Timing noise only ever adds time, so the headline figures use the fastest of ``--repeats`` interleaved runs of each
loop (the ratio of minimums); the median of the per-repeat ratios is printed too. On a shared machine, ``--threads 1``
makes both loops far less sensitive to other processes (OpenMP threads wait for each other at every op).

The model is a ResNet-18-sized network written here (no torchvision): the CIFAR variant (3x3 stem, no max-pool,
BasicBlocks [2, 2, 2, 2] with 64-128-256-512 channels, 11.2M parameters, d = 512 penultimate features, 10 classes),
on synthetic 32x32 images. One warm-up run of each loop comes first.

Usage::

    python -m bench.extract --quick          # 256 images, batch 64
    python -m bench.extract                  # 2048 images, batch 128
    python -m bench.extract --threads 1      # torch.set_num_threads(1) for both loops
    python -m bench.extract --json out.json  # also write the figures
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

N_FULL, N_QUICK = 2048, 256
BATCH_FULL, BATCH_QUICK = 128, 64
CLASSES = 10


# ---------------------------------------------------------------------------------------------- model
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (He et al. 2016, CIFAR stem)."""

    def __init__(self, num_classes: int = CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


# ---------------------------------------------------------------------------------------------- runs
def bare_loop(model, batches) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        for x, _ in batches:
            model(x)
    return time.perf_counter() - t


def ncprobe_run(model, x, y, batch_size: int) -> tuple[float, object]:
    from nc_probe.data.batches import iter_batches
    from nc_probe.data.datasets import open_data
    from nc_probe.extract.extraction import BatchContext, extract
    from nc_probe.taps import make_tap

    t = time.perf_counter()
    source = open_data((x, y))
    with make_tap(model) as tap:
        ext = extract(tap, iter_batches(source, batch_size=batch_size), device="cpu",
                      context=BatchContext(declared_classes=source.num_classes))
    return time.perf_counter() - t, ext


#: ~20 taps of the ResNet-18: the stem, every block and every block's first convolution (conv maps, pooled in the
#: hook), and the penultimate features: the layer-wise goal is <= 1.3x the bare forward
LAYER_SPEC = "stem,layers.*.*,layers.*.*.conv1,@penultimate"


def layers_run(model, x, y, batch_size: int, spec: str) -> tuple[float, dict]:
    """The extraction of ``nc-probe layers``: one forward pass per batch with a hook on every selected layer (each
    output pooled and copied in its hook), a FeatureStore per layer."""
    from nc_probe.data.batches import iter_batches
    from nc_probe.data.datasets import open_data
    from nc_probe.extract.extraction import BatchContext, extract_layers
    from nc_probe.taps.layers import LayerTaps
    from nc_probe.taps.select import select_layers

    t = time.perf_counter()
    source = open_data((x, y))
    with LayerTaps(model, select_layers(model, spec)) as taps:
        exts = extract_layers(taps, iter_batches(source, batch_size=batch_size), device="cpu",
                              context=BatchContext(declared_classes=source.num_classes))
    return time.perf_counter() - t, exts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{N_QUICK} images instead of {N_FULL}")
    ap.add_argument("-n", type=int, default=None, help="number of images (overrides --quick)")
    ap.add_argument("--batch-size", type=int, default=None, help="batch size (default 64 quick, 128 full)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of each loop (default 5)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    ap.add_argument("--layers", nargs="?", const=LAYER_SPEC, default=None,
                    help=f"also time the layer-wise extraction of these taps (default spec: {LAYER_SPEC})")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (N_QUICK if args.quick else N_FULL)
    bs = args.batch_size or (BATCH_QUICK if args.quick else BATCH_FULL)

    torch.manual_seed(0)
    model = ResNet18().eval()
    x = torch.randn(n, 3, 32, 32)
    y = torch.arange(n) % CLASSES
    batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)]
    params = sum(p.numel() for p in model.parameters())
    print(f"ResNet-18 (CIFAR, {params / 1e6:.1f}M parameters), {n} images 32x32, batch {bs}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.machine()}")

    bare_loop(model, batches[:2])  # warm-up: allocator, kernels
    ncprobe_run(model, x[: 2 * bs], y[: 2 * bs], bs)
    if args.layers:
        layers_run(model, x[: 2 * bs], y[: 2 * bs], bs, args.layers)
    base, ours, multi = [], [], []
    exts: dict = {}
    for r in range(args.repeats):
        base.append(bare_loop(model, batches))
        t, ext = ncprobe_run(model, x, y, bs)
        ours.append(t)
        line = f"  repeat {r + 1}: bare {base[-1]:.2f} s, nc-probe {ours[-1]:.2f} s, ratio {ours[-1] / base[-1]:.3f}"
        if args.layers:
            t, exts = layers_run(model, x, y, bs, args.layers)
            multi.append(t)
            line += f"; {len(exts)} taps {t:.2f} s, ratio {t / base[-1]:.3f}"
        print(line)
    assert ext.num_samples == n and ext.stats is not None and ext.stats.total == n and ext.store.dim == 512
    assert all(e.num_samples == n for e in exts.values())
    tb, to = min(base), min(ours)
    ratios = [o / b for o, b in zip(ours, base)]
    figures = {
        "n": n, "batch_size": bs, "threads": torch.get_num_threads(), "device": "cpu", "repeats": args.repeats,
        "bare_s": tb, "ncprobe_s": to, "ratio": to / tb, "median_ratio": statistics.median(ratios),
        "bare_images_per_s": n / tb, "ncprobe_images_per_s": n / to,
        "bare_all_s": base, "ncprobe_all_s": ours,
    }
    print(f"bare forward loop: {tb:.2f} s ({n / tb:,.1f} images/s), fastest of {args.repeats}")
    print(f"nc-probe extraction + stats: {to:.2f} s ({n / to:,.1f} images/s), fastest of {args.repeats}")
    print(f"ratio (goal <= 1.05): {to / tb:.3f} (fastest runs); median of per-repeat ratios "
          f"{statistics.median(ratios):.3f}")
    if args.layers:
        tl = min(multi)
        figures.update({"layers_spec": args.layers, "layers_taps": len(exts), "layers_s": tl,
                        "layers_ratio": tl / tb, "layers_median_ratio": statistics.median(
                            [m / b for m, b in zip(multi, base)]), "layers_all_s": multi})
        print(f"nc-probe layers extraction, {len(exts)} taps ({args.layers}): {tl:.2f} s; ratio (goal <= 1.3): "
              f"{tl / tb:.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
