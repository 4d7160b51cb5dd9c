#!/usr/bin/env python
"""Rebuild nc-probe's tiny language-model samples (``sample:lm_early``, ``sample:lm``): a small GPT-2 trained on
Python's standard-library docstrings, saved with ``save_pretrained`` as Hugging Face folders. Needs the optional
``transformers`` and ``tokenizers`` packages (``pip install 'nc-probe[hf]'``).

    python scripts/train_lm_sample.py                   # writes sample_checkpoints/lm_early/, lm/ and the data
    python scripts/train_lm_sample.py --out /tmp/lm     # somewhere else
    python scripts/train_lm_sample.py --make-corpus     # first rebuild nc_probe/data/lm_text.txt from this
                                                        # Python's standard library (the shipped file: 3.11.7)

- text: ``nc_probe/data/lm_text.txt``, the docstrings of 77 standard-library modules and their public classes and
  functions (English prose with code examples, ~325 kB); the last 10% of its tokens are the test split;
- tokenizer: byte-level BPE with a 512-token vocabulary trained on the text (``tokenizer.json`` in each folder);
- data: ``nc_probe/data/lm_text.npz``, ``input_ids_train`` / ``input_ids_test``: the text's tokens in windows of
  128 (``sample:lm_text``);
- model: GPT-2 with 3 blocks of width 64 (4 heads), 128 positions, tied input and output embeddings; AdamW (lr
  3e-3, weight decay 0.01), batches of 32 windows, no dropout; ``lm_early`` after 1 epoch, ``lm`` after 40.

Token-level collapse (Wu & Papyan 2024) on the training split: every position is a sample whose class is the next
token; the longer-trained model's features collapse further towards their token means (``nc-probe compare
early=sample:lm_early late=sample:lm``).

Determinism: one CPU thread, ``torch.use_deterministic_algorithms(True)``, fixed seeds; the same torch and
transformers builds give bit-identical folders.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "nc_probe" / "data"
TEXT = DATA / "lm_text.txt"
TOKENS = DATA / "lm_text.npz"
SEED = 0
VOCAB = 512
WINDOW = 128
TEST_FRACTION = 0.1
MODEL = {"n_embd": 64, "n_layer": 3, "n_head": 4, "n_positions": WINDOW}
TRAIN = {"epochs": 40, "early_epoch": 1, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.01}
MODULES = ("abc argparse ast asyncio base64 bisect calendar collections contextlib copy csv dataclasses datetime "
           "decimal difflib email enum fractions functools gettext glob gzip hashlib heapq html http.client imaplib "
           "inspect io ipaddress itertools json logging mailbox math mimetypes numbers operator optparse os pathlib "
           "pickle pprint queue random re sched shelve shlex shutil smtplib socket sqlite3 statistics string struct "
           "subprocess tarfile tempfile textwrap threading timeit tokenize traceback turtle typing unittest "
           "urllib.parse uuid warnings weakref xml.dom.minidom zipfile").split()


def make_corpus(path: Path) -> None:
    """The docstrings (over 80 characters, each once) of MODULES and their public classes and functions."""
    seen, parts = set(), []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objs = [module] + [v for k, v in sorted(vars(module).items()) if not k.startswith("_")
                           and (inspect.isclass(v) or inspect.isfunction(v))
                           and getattr(v, "__module__", "") == module.__name__]
        for obj in objs:
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80 and doc not in seen:
                seen.add(doc)
                parts.append(doc)
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    print(f"{path}: {path.stat().st_size:,} bytes, {len(parts)} docstrings (Python {sys.version.split()[0]})")


def train_tokenizer(text: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def windows(ids: np.ndarray) -> np.ndarray:
    n = len(ids) // WINDOW
    return ids[: n * WINDOW].reshape(n, WINDOW)


def save(model, tok, out: Path, epoch: int, test_loss: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))
    meta = {"data": "sample:lm_text", "split": "train", "epoch": epoch, "loss": "ce", "seed": SEED,
            "dataset": "Python standard-library docstrings (nc_probe/data/lm_text.txt)",
            "test_loss": round(test_loss, 4), **{f"train_{k}": v for k, v in TRAIN.items()}}
    (out / "nc_probe.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "generation_config.json").unlink(missing_ok=True)  # not needed to analyse the model


def train(out: Path, data_out: Path, log=print) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    text = TEXT.read_text(encoding="utf-8")
    tok = train_tokenizer(text)
    ids = np.asarray(tok.encode(text).ids, dtype=np.int32)
    cut = int(len(ids) * (1 - TEST_FRACTION))
    train_w, test_w = windows(ids[:cut]), windows(ids[cut:])
    data_out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(data_out, input_ids_train=train_w, input_ids_test=test_w)
    log(f"{len(ids):,} tokens: {len(train_w)} train and {len(test_w)} test windows of {WINDOW} -> {data_out}")
    torch.manual_seed(SEED)
    config = GPT2Config(vocab_size=tok.get_vocab_size(), bos_token_id=0, eos_token_id=0, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, **MODEL)
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"])
    x_train, x_test = torch.from_numpy(train_w).long(), torch.from_numpy(test_w).long()
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.perf_counter()
    for epoch in range(1, TRAIN["epochs"] + 1):
        model.train()
        for batch in torch.randperm(len(x_train), generator=gen).split(TRAIN["batch_size"]):
            loss = model(input_ids=x_train[batch], labels=x_train[batch]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch in (TRAIN["early_epoch"], TRAIN["epochs"]):
            model.eval()
            with torch.no_grad():
                test_loss = float(model(input_ids=x_test, labels=x_test).loss)
            name = "lm_early" if epoch == TRAIN["early_epoch"] else "lm"
            save(model, tok, out / name, epoch, test_loss)
            log(f"epoch {epoch}: test loss {test_loss:.3f} (perplexity {math.exp(test_loss):.1f}) -> {out / name} "
                f"({time.perf_counter() - t0:.0f} s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "sample_checkpoints")
    ap.add_argument("--data-out", type=Path, default=TOKENS)
    ap.add_argument("--make-corpus", action="store_true", help="rebuild nc_probe/data/lm_text.txt first")
    args = ap.parse_args(argv)
    if args.make_corpus:
        make_corpus(TEXT)
    train(args.out, args.data_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
