#!/usr/bin/env python
"""Rebuild nc-probe's sample checkpoints (cross-entropy vs MCR^2 on the 8x8 digits), deterministically on a CPU.

    python scripts/train_samples.py                     # writes sample_checkpoints/{ce,ce_epoch*,mcr2,deep}.pt
    python scripts/train_samples.py --out /tmp/samples  # somewhere else
    python scripts/train_samples.py --digits-csv PATH   # first rebuild nc_probe/data/digits.npz from
                                                        # scikit-learn's sklearn/datasets/data/digits.csv.gz
    python scripts/train_samples.py --out /tmp/s --reports /tmp/s/nc   # and the CE run's report of every epoch

Both checkpoints use the same backbone, ``nc_probe.load.samples.digits_net``: an MLP 64 -> 128 -> 128 -> 64 features
(Linear-BatchNorm-ReLU blocks) -> Linear head 64 -> 10; only its last feature layer differs (``normalize`` kwarg).

- ``ce``: BatchNorm+ReLU features, cross-entropy, minibatch SGD with momentum and weight decay 1e-3 at a constant
  learning rate, 350 epochs: far into the terminal phase (100% train accuracy from epoch 5 on); snapshots
  ``ce_epoch{1,5,20,100,300}.pt`` for trajectory views (Papyan et al. 2020).
- ``mcr2``: L2-normalized features (Linear -> normalize, no ReLU/BatchNorm right before it) trained with the MCR^2
  rate reduction (Yu et al. 2020), eps^2 = 0.5, 600 full-batch Adam steps (lr 1e-3); the linear head is then fitted
  by cross-entropy on the frozen features (300 full-batch Adam steps) so that NC3/NC4 are defined.
- ``deep``: ``nc_probe.load.samples.digits_deep_net``, a stem and 8 Linear-BatchNorm-ReLU blocks of width 64, trained
  like ``ce`` (cross-entropy, SGD with momentum, weight decay 1e-3, 300 epochs): the sample of ``nc-probe layers``,
  deep enough for the separation fuzziness to fall block by block.

About 30-45 s in all on one CPU thread.

MCR^2 with the definitions of ``docs/metrics.md`` (Z the d x N matrix of unit features):
``R = 1/2 logdet(I + d/(N eps2) Z Z^T)``, ``Rc = sum_c (n_c/N) 1/2 logdet(I + d/(n_c eps2) Z_c Z_c^T)``,
loss ``-(R - Rc)``.

Determinism: one CPU thread, ``torch.use_deterministic_algorithms(True)``, a fixed seed, full-tensor indexing (no
DataLoader workers); the same torch build gives bit-identical checkpoints.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nc_probe.load import samples  # noqa: E402

SEED = 0
SPLIT_SEED = 0
TEST_FRACTION = 0.25
DIGITS_CSV_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"  # scikit-learn 1.9.1

CE = {"epochs": 350, "snapshots": (1, 5, 20, 100, 300), "batch_size": 128, "lr": 0.05, "momentum": 0.9,
      "weight_decay": 1e-3}
DEEP = {"epochs": 300, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}
MCR2 = {"epochs": 600, "lr": 1e-3, "eps2": 0.5, "head_epochs": 300, "head_lr": 0.01, "head_weight_decay": 5e-4}


# ---------------------------------------------------------------------------------------------------------- data
def build_digits_npz(csv_path: Path, out: Path = samples.DIGITS_PATH) -> None:
    """scikit-learn's ``digits.csv.gz`` (1797 rows: 64 pixel counts 0..16, then the label) -> ``digits.npz`` with a
    stratified split: per class, a seeded permutation, the first round(0.25 n_c) rows go to test."""
    import hashlib

    data = Path(csv_path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != DIGITS_CSV_SHA256:
        print(f"warning: {csv_path} has sha256 {digest}, not scikit-learn 1.9.1's {DIGITS_CSV_SHA256}")
    with gzip.open(csv_path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.int64)
    assert raw.shape == (1797, 65) and raw[:, :64].min() >= 0 and raw[:, :64].max() <= 16
    x, y = raw[:, :64].astype(np.uint8), raw[:, 64].astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test.extend(rng.permutation(idx)[: int(round(TEST_FRACTION * len(idx)))].tolist())
    test_idx = np.sort(np.asarray(test, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, x=x, y=y, train_idx=train_idx, test_idx=test_idx,
                        source_sha256=np.array(digest), split_seed=np.array(SPLIT_SEED),
                        test_fraction=np.array(TEST_FRACTION))
    samples._load_npz.cache_clear()
    print(f"wrote {out}: x {x.shape} {x.dtype}, train {len(train_idx)}, test {len(test_idx)}")


# -------------------------------------------------------------------------------------------------------- losses
def coding_rate(Z: torch.Tensor, eps2: float) -> torch.Tensor:
    """``1/2 logdet(I + d/(n eps2) Z^T Z)`` for rows Z (n, d), via Cholesky (the matrix is SPD)."""
    n, d = Z.shape
    A = torch.eye(d, dtype=Z.dtype) + (d / (n * eps2)) * Z.T @ Z
    return torch.log(torch.diagonal(torch.linalg.cholesky(A))).sum()


def mcr2_loss(Z: torch.Tensor, y: torch.Tensor, num_classes: int, eps2: float):
    """``-(R - Rc)`` and ``(R, Rc)``; Z rows are unit features."""
    N = Z.shape[0]
    R = coding_rate(Z, eps2)
    Rc = sum((y == c).sum() / N * coding_rate(Z[y == c], eps2) for c in range(num_classes))
    return Rc - R, (R.detach(), Rc.detach())


# ------------------------------------------------------------------------------------------------------ training
def setup(threads: int = 1) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)


def metadata(loss: str, epoch: int, kwargs: dict, extra: dict | None = None,
             arch: str = "nc_probe.samples:digits_net") -> dict:
    return {"arch": arch, "arch_kwargs": dict(kwargs), "data": "sample:digits",
            "split": "train", "class_names": list(samples.DIGITS_CLASS_NAMES), "loss": loss, "epoch": epoch,
            "seed": SEED, "dataset": samples.DIGITS_DATASET, **(extra or {})}


def save(model, meta: dict, path: Path) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "nc_probe": meta}, path)


def train_accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def sgd_epochs(model, x, y, config: dict):
    """Cross-entropy by minibatch SGD with momentum and weight decay at a constant rate; yields ``(epoch, loss)``
    after each epoch, the model in eval mode."""
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                          weight_decay=config["weight_decay"])
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(1, config["epochs"] + 1):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), config["batch_size"]):
            idx = perm[start:start + config["batch_size"]]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        yield epoch, loss


def sgd_metadata(config: dict) -> dict:
    return {"optimizer": "SGD", "lr": config["lr"], "momentum": config["momentum"],
            "weight_decay": config["weight_decay"], "batch_size": config["batch_size"], "lr_schedule": "constant"}


def train_ce(x, y, out: Path, log=print, reports: Path | None = None) -> None:
    torch.manual_seed(SEED)
    model = samples.digits_net(**samples.CE_KWARGS)
    extra = sgd_metadata(CE)
    first_perfect = None
    monitor = None
    if reports is not None:  # every epoch's report on the training rows, as nc-probe trajectory reads them
        from nc_probe.training.loop import CollapseMonitor

        monitor = CollapseMonitor(10, out_dir=reports)
        # batches as a list, not a DataLoader, whose iterator draws from the global RNG: the checkpoints stay the same
        batches = [(x[i:i + 512], y[i:i + 512]) for i in range(0, len(y), 512)]
    for epoch, loss in sgd_epochs(model, x, y, CE):
        if monitor is not None:
            monitor.measure(model, batches, epoch=epoch)  # eval mode, no gradients; the model is put back as it was
        acc = train_accuracy(model, x, y)
        if acc == 1.0 and first_perfect is None:
            first_perfect = epoch
        if epoch in CE["snapshots"] or epoch == CE["epochs"]:
            meta = metadata("ce", epoch, samples.CE_KWARGS, {**extra, "train_acc": acc,
                                                             "first_epoch_100pct_train": first_perfect})
            name = "ce.pt" if epoch == CE["epochs"] else f"ce_epoch{epoch}.pt"
            save(model, meta, out / name)
            log(f"  ce epoch {epoch:4d}  loss {loss.item():.4g}  train acc {acc:.4f}  -> {name}")


def train_deep(x, y, out: Path, log=print) -> None:
    torch.manual_seed(SEED)
    model = samples.digits_deep_net(**samples.DEEP_KWARGS)
    for epoch, loss in sgd_epochs(model, x, y, DEEP):
        if epoch % 100 == 0:
            log(f"  deep epoch {epoch:4d}  loss {loss.item():.4g}")
    acc = train_accuracy(model, x, y)
    meta = metadata("ce", DEEP["epochs"], samples.DEEP_KWARGS, {**sgd_metadata(DEEP), "train_acc": acc},
                    arch="nc_probe.samples:digits_deep_net")
    save(model, meta, out / "deep.pt")
    log(f"  deep: train acc {acc:.4f}  -> deep.pt")


def train_mcr2(x, y, out: Path, log=print) -> None:
    torch.manual_seed(SEED)
    model = samples.digits_net(**samples.MCR2_KWARGS)
    opt = torch.optim.Adam(model.backbone.parameters(), lr=MCR2["lr"])
    C = samples.MCR2_KWARGS["num_classes"]
    for epoch in range(1, MCR2["epochs"] + 1):
        model.train()
        loss, (R, Rc) = mcr2_loss(model.features(x), y, C, MCR2["eps2"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if epoch % 100 == 0 or epoch == 1:
            log(f"  mcr2 epoch {epoch:4d}  R {R.item():.3f}  Rc {Rc.item():.3f}  dR {(R - Rc).item():.3f}")
    # the head: cross-entropy with weight decay on the frozen (unit) features, full batch
    model.eval()
    with torch.no_grad():
        Z = model.features(x)
    head = model.head
    opt = torch.optim.Adam(head.parameters(), lr=MCR2["head_lr"], weight_decay=MCR2["head_weight_decay"])
    for _ in range(MCR2["head_epochs"]):
        loss = F.cross_entropy(head(Z), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    acc = train_accuracy(model, x, y)
    meta = metadata("mcr2", MCR2["epochs"], samples.MCR2_KWARGS,
                    {"eps2": MCR2["eps2"], "optimizer": "Adam", "lr": MCR2["lr"], "batch_size": len(y),
                     "head": f"cross-entropy on frozen features, Adam lr {MCR2['head_lr']}, weight decay "
                             f"{MCR2['head_weight_decay']}, {MCR2['head_epochs']} full-batch steps",
                     "train_acc": acc})
    save(model, meta, out / "mcr2.pt")
    log(f"  mcr2 head fitted: train acc {acc:.4f}  -> mcr2.pt")


def train_all(out: Path, threads: int = 1, log=print, reports: Path | None = None) -> float:
    """Train both samples into ``out``; returns the seconds taken."""
    t0 = time.perf_counter()
    setup(threads)
    out.mkdir(parents=True, exist_ok=True)
    xa, ya = samples.digits_arrays("train")
    x, y = torch.from_numpy(xa), torch.from_numpy(ya)
    train_ce(x, y, out, log, reports)
    train_mcr2(x, y, out, log)
    train_deep(x, y, out, log)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "sample_checkpoints", help="output folder (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 for bit-reproducible output)")
    ap.add_argument("--digits-csv", type=Path, help="rebuild nc_probe/data/digits.npz from scikit-learn's "
                                                    "sklearn/datasets/data/digits.csv.gz first")
    ap.add_argument("--reports", type=Path, help="also write the CE run's report of every epoch here (nc-probe "
                                                 "trajectory DIR plots them; the checkpoints do not change)")
    args = ap.parse_args(argv)
    if args.digits_csv:
        build_digits_npz(args.digits_csv)
    seconds = train_all(args.out, args.threads, reports=args.reports)
    for p in sorted(args.out.glob("*.pt")):
        print(f"  {p.name:16s} {p.stat().st_size / 1024:7.1f} KiB")
    print(f"trained in {seconds:.1f} s on {args.threads} thread(s)")


if __name__ == "__main__":
    main()
