"""What monitoring collapse costs inside a training loop: the CollapseMonitor's time per epoch as a fraction of the
epoch's training time on a small real run, and the memory of NeuralCollapse's state at a large head.

    python -m bench.callbacks                  # digits CE training (the sample's recipe), 20 epochs, 1 thread
    python -m bench.callbacks --epochs 50 --threads 2

The run: ``scripts/train_samples.py``'s cross-entropy recipe (the digits MLP, minibatch SGD, batch 128) on the 1347
training digits, measured every epoch on the 450 test digits (the validation loader) by a
:class:`nc_probe.training.loop.CollapseMonitor` in three settings, each in the same process and interleaved by epoch
so that the machine's state is shared: ``penultimate`` (the default: one tap, the exact second pass), ``one pass``
(``second_pass=False``) and ``layers`` (four layers and @penultimate, each its own statistics). The baseline is the
epoch's training time (forward, backward, step over the training rows) measured in the same run; the overhead is
the median over epochs of monitor seconds / training seconds. The first epoch (imports, allocation) is left out.

Memory: the bytes of the state tensors of ``NeuralCollapse(C)`` after a batch holding every class, computed from the
tensors' sizes (``NeuralCollapse.state_bytes``) and compared with the formula K (d + 3) x 8 bytes for the class rows
plus the d x d pooled scatter, plus either K d x d per-class subspace moments or their d x d total (see
:func:`state_memory` for the sizes built).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# BLAS and OpenMP threads as many as --threads, set before numpy and torch load them: idle BLAS threads spin after
# each call and would steal the next measurement's CPU (3-4x slower monitor timings on a loaded machine)
_THREADS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), None) or \
    (sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "scripts"))

from train_samples import CE, sgd_epochs  # noqa: E402  (the samples' recipe, not a copy of it)

from bench.machine import cpu_name  # noqa: E402
from nc_probe.load import samples  # noqa: E402
from nc_probe.training.loop import CollapseMonitor  # noqa: E402
from nc_probe.training.metric import NeuralCollapse  # noqa: E402


def machine() -> str:
    return f"{cpu_name()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def loader(x, y, batch_size=256):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


def overhead(epochs: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model = samples.digits_net(**samples.CE_KWARGS)
    xa, ya = samples.digits_arrays("train")
    xt, yt = samples.digits_arrays("test")
    x, y = torch.from_numpy(xa), torch.from_numpy(ya)
    val = loader(torch.from_numpy(xt), torch.from_numpy(yt))
    layer_names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.ReLU)][:4] + ["@penultimate"]
    monitors = {"penultimate": CollapseMonitor(10), "one pass": CollapseMonitor(10, second_pass=False),
                "layers": CollapseMonitor(10, layers=layer_names)}
    # the sample script's own training loop, one epoch per step of its generator (which leaves the model in eval)
    training = sgd_epochs(model, x, y, {**CE, "epochs": epochs + 1})
    ratios: dict[str, list[float]] = {k: [] for k in monitors}
    seconds: dict[str, list[float]] = {k: [] for k in [*monitors, "train"]}
    for epoch in range(epochs + 1):
        t = time.perf_counter()
        next(training)
        train_s = time.perf_counter() - t
        for name, monitor in monitors.items():
            t = time.perf_counter()
            monitor.measure(model, val, epoch=epoch, write=False)
            s = time.perf_counter() - t
            if epoch > 0:
                ratios[name].append(s / train_s)
                seconds[name].append(s)
        if epoch > 0:
            seconds["train"].append(train_s)
    print(f"layers measured: {', '.join(layer_names)}")
    return {"ratios": ratios, "seconds": seconds}  # type: ignore[dict-item]


def state_memory(d: int = 768, C: int = 1000, small_C: int = 8) -> dict[str, tuple[int, int]]:
    """``{label: (measured bytes, formula bytes)}``. Without the subspace moments the state is built at d, C; with
    them (C d^2 x 8 = 4.4 GiB at d = 768, C = 1000: more than this shared machine should allocate, and more than the
    default 2 GiB memory_budget, under which the metric keeps none) it is built at ``small_C`` classes to check the
    formula, which then gives the value at C."""
    out = {}
    m = NeuralCollapse(C, subspaces=False)
    m.update(torch.randn(C, d), torch.arange(C))  # one row of each class: every class row allocated
    out[f"d={d}, C={C}, no subspace moments (the default at this size)"] = (m.state_bytes(), _formula(C, d, False))
    del m
    small = NeuralCollapse(small_C, subspaces=True)
    small.update(torch.randn(small_C, d), torch.arange(small_C))
    out[f"d={d}, C={small_C}, with subspace moments"] = (small.state_bytes(), _formula(small_C, d, True))
    out[f"d={d}, C={C}, with subspace moments (formula checked at C={small_C})"] = (-1, _formula(C, d, True))
    return out


def _formula(K: int, d: int, subspaces: bool) -> int:
    """Per class: mean (d), count, m2, zero count (3); the pooled scatter (d x d); then either each class's d x d
    unit-feature moments, or (none tracked) their total, one more d x d."""
    return K * (d + 3) * 8 + d * d * 8 + (K * d * d * 8 if subspaces else d * d * 8)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-memory", action="store_true", help="skip the state memory at d=768, C=1000")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    result = overhead(args.epochs)
    train = statistics.median(result["seconds"]["train"])
    print(f"training epoch (1347 rows, batch 128): median {train * 1e3:.1f} ms over {args.epochs} epochs")
    for name, ratios in result["ratios"].items():
        s = statistics.median(result["seconds"][name])
        print(f"monitor {name:12s}: median {s * 1e3:7.1f} ms per epoch = {statistics.median(ratios):6.2f} x the "
              f"training epoch (min {min(ratios):.2f}, max {max(ratios):.2f})")
    if not args.skip_memory:
        for label, (measured, formula) in state_memory().items():
            seen = "not built" if measured < 0 else f"{measured / 2**20:,.2f} MiB measured"
            print(f"NeuralCollapse state, {label}: {seen}, formula {formula / 2**20:,.2f} MiB")


if __name__ == "__main__":
    main()
