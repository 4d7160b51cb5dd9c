"""Token data for text models: sequences of token ids, from arrays or from text tokenized by the model's tokenizer.

Sources (``--data``):

- ``.npz`` / ``.pt`` arrays ``input_ids`` (N, T) integers, with an optional ``attention_mask`` (N, T) of 0/1 and,
  for a sequence classifier, ``labels`` (or ``y``) (N,); split-suffixed names (``input_ids_train``) as for other
  array files;
- ``.txt`` text, tokenized by the model folder's ``tokenizer.json`` (the ``tokenizers`` library: a JSON
  description, never code) and cut into windows of ``seq_len`` tokens (the last, shorter one padded and masked);
- ``.jsonl``: one JSON object per line with a ``text`` field (and ``label`` for a sequence classifier); each
  text is tokenized on its own, cut into ``seq_len`` windows (a classifier keeps the first window of each).

For a causal language model every position ``t`` with a next token (``mask[t]`` and ``mask[t+1]``) is a sample whose
class is the token at ``t + 1`` (:func:`next_token_rows`); the batches carry those labels in the row-major order in
which :class:`nc_probe.load.hf.CausalLMTokens` returns the positions' logits, so the rows of a batch are its tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from nc_probe.core.errors import InputError
from nc_probe.core.files import read_input
from nc_probe.core.text import quoted
from nc_probe.data.array_data import RowBatch
from nc_probe.data.array_files import read_array_file
from nc_probe.load.hf import next_token_rows

ID_NAMES = ("input_ids", "ids", "tokens")
MASK_NAMES = ("attention_mask", "mask")
LABEL_NAMES = ("labels", "label", "y")
DEFAULT_SEQ_LEN = 256
MAX_TEXT_BYTES = 1 << 30


def next_token_labels(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The class of every :func:`next_token_rows` position, row-major: the token that follows it."""
    rows = next_token_rows(mask)
    return ids[:, 1:][rows[:, :-1]].long()


class TokenDataset(Dataset):
    """Token sequences ``ids`` (N, T) int64 with ``mask`` (N, T); a batch is ``({"input_ids", "attention_mask"},
    y)``, ``y`` the next-token labels of its rows (``causal=True``) or one label per sequence."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None, causal: bool):
        self.ids, self.mask, self.labels, self.causal = ids, mask, labels, causal
        self.targets = None if labels is None else labels.numpy()
        #: feature rows the data gives: tokens with a next token (causal) or sequences
        self.rows = int(next_token_rows(mask).sum()) if causal else len(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        ids, mask = self.ids[idx], self.mask[idx]
        y = next_token_labels(ids, mask) if self.causal else self.labels[idx]
        return RowBatch({"input_ids": ids, "attention_mask": mask}, y)


def is_token_file(path) -> bool:
    return Path(str(path)).suffix.lower() in (".txt", ".jsonl")


def open_tokens(spec: str, *, split: str | None, causal: bool, vocab_size: int | None, folder: Path | None,
                seq_len: int | None = None, limit: int | None = None) -> tuple[TokenDataset, str | None, list]:
    """``(dataset, split, notes)`` for a text model's data ``spec`` (see the module docstring). ``vocab_size``
    bounds the ids; ``folder`` holds the tokenizer for text files; ``limit`` keeps the first sequences."""
    path = Path(spec)
    if not path.is_file():
        raise InputError("no such file", path=spec, fix="pass token ids (.npz/.pt input_ids) or text (.txt, .jsonl)")
    notes: list[str] = []
    if path.suffix.lower() in (".npz", ".pt", ".pth"):
        ids, mask, labels, split = _token_arrays(path, split)
    elif is_token_file(path):
        if split:
            raise InputError(f"text has no splits, but {{split={split}}} was given", path=spec, fix="leave {split} out")
        ids, mask, labels = _tokenized(path, folder, seq_len or DEFAULT_SEQ_LEN, causal)
        notes.append(f"tokenized by {folder.name if folder else '?'}/tokenizer.json into {len(ids)} windows of "
                     f"{ids.shape[1]} tokens")
    else:
        raise InputError("is not token data nc-probe reads", path=spec,
                         fix="pass .npz/.pt arrays input_ids (N, T) [attention_mask, labels], or .txt/.jsonl text")
    if vocab_size is not None and ids.numel() and int(ids.max()) >= vocab_size:
        raise InputError(f"holds token id {int(ids.max())}, but the model's vocabulary has {vocab_size} tokens",
                         path=spec, fix="tokenize the text with this model's tokenizer")
    if causal:
        labels = None
    elif labels is None:
        raise InputError("a sequence classifier needs a label per sequence (labels), and this data has none",
                         path=spec, fix="store labels (N,) beside input_ids, or a 'label' field per JSON line")
    if limit is not None:
        ids, mask = ids[:limit], mask[:limit]
        labels = None if labels is None else labels[:limit]
    return TokenDataset(ids, mask, labels, causal), split, notes


def _token_arrays(path: Path, split):
    where = str(path)
    keys: dict[str, str | None] = {}

    def select(names: list) -> list:
        suffix = ""
        splits = sorted({n.split("_", 2)[2] for n in names if n.startswith("input_ids_")})
        if splits:
            pick = split or ("train" if "train" in splits else splits[0])
            if pick not in splits:
                raise InputError(f"has no split {quoted(pick)}", path=where, fix=f"pass {{split={splits[0]}}}")
            suffix = f"_{pick}"
            keys["split"] = pick
        elif split:
            raise InputError(f"has no splits, but {{split={split}}} was given", path=where, fix="leave {split} out")
        keys["ids"] = next((n + suffix for n in ID_NAMES if n + suffix in names), None)
        keys["mask"] = next((n + suffix for n in MASK_NAMES if n + suffix in names), None)
        keys["labels"] = next((n + suffix for n in LABEL_NAMES if n + suffix in names), None)
        if keys["ids"] is None:
            found = ", ".join(quoted(n, 30) for n in sorted(names)[:8]) or "none"
            raise InputError(f"needs an array input_ids (N, T) of token ids (found {found})", path=where,
                             fix="save the token ids as input_ids, with an optional attention_mask")
        return [k for k in (keys["ids"], keys["mask"], keys["labels"]) if k is not None]

    arrays = read_array_file(path, example="{'input_ids': ids, 'attention_mask': mask}", select=select)
    ids = _integers(arrays[keys["ids"]], "input_ids", where, ndim=2)
    mask = torch.ones_like(ids) if keys["mask"] is None else _integers(arrays[keys["mask"]], "attention_mask",
                                                                       where, ndim=2)
    if mask.shape != ids.shape or not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError(f"attention_mask of shape {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)} "
                         "or is not 0/1", path=where, fix="store a 0/1 attention_mask of the same shape")
    labels = None
    if keys["labels"] is not None:
        labels = _integers(arrays[keys["labels"]], "labels", where, ndim=1)
        if len(labels) != len(ids):
            raise InputError(f"{len(ids)} sequences but {len(labels)} labels", path=where,
                             fix="store one label per sequence")
    if ids.shape[0] == 0 or ids.shape[1] < 2:
        raise InputError(f"input_ids of shape {tuple(ids.shape)}: no sequence of two or more tokens", path=where,
                         fix="store sequences of at least two tokens")
    return ids, mask, labels, keys.get("split") or split


def _integers(a, name: str, where: str, ndim: int) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
    if t.ndim != ndim or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool and name != "attention_mask":
        raise InputError(f"{name} has dtype {t.dtype} and shape {tuple(t.shape)}, not {ndim}-D integers", path=where,
                         fix=f"store {name} as int64 of {ndim} dimensions")
    t = t.long()
    if t.numel() and int(t.min()) < 0:
        raise InputError(f"{name} holds negative values", path=where, fix=f"store {name} as non-negative integers")
    return t


def _tokenizer(folder: Path | None, where: str):
    if folder is None or not (folder / "tokenizer.json").is_file():
        raise InputError("text data needs the model folder's tokenizer.json to become token ids", path=where,
                         fix="save the tokenizer with save_pretrained beside the model, or pass token ids "
                             "(.npz input_ids)")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InputError("tokenizing text needs the tokenizers package", path=where,
                         fix="pip install 'nc-probe[hf]'") from None
    try:
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # noqa: BLE001 - the Rust library raises its own exception type
        raise InputError(f"tokenizer.json could not be read ({quoted(str(e), 120)})", path=folder,
                         fix="save the tokenizer again with save_pretrained") from None


def _tokenized(path: Path, folder: Path | None, seq_len: int, causal: bool):
    where = str(path)
    if seq_len < 2:
        raise InputError(f"{{seq_len}} must be at least 2, got {seq_len}", fix="pass e.g. {seq_len=256}")
    raw = read_input(path, "text", fix="pass UTF-8 text", limit=MAX_TEXT_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("is not UTF-8 text", path=where, fix="save it as UTF-8") from None
    tok = _tokenizer(folder, where)
    docs: list[tuple[str, int | None]] = []
    if path.suffix.lower() == ".txt":
        docs = [(text, None)]
    else:
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                raise InputError(f"line {i} is not JSON", path=where, fix='write one {"text": ...} object per line') \
                    from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise InputError(f"line {i} has no string field 'text'", path=where,
                                 fix='write one {"text": ..., "label": ...} object per line')
            label = obj.get("label")
            if not causal and not (isinstance(label, int) and not isinstance(label, bool) and label >= 0):
                raise InputError(f"line {i} has no integer 'label' >= 0", path=where,
                                 fix="give every line of a classifier's data a class index")
            docs.append((obj["text"], label if not causal else None))
    windows: list[list[int]] = []
    labels: list[int] = []
    for doc, label in docs:
        ids = tok.encode(doc).ids
        chunks = [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)] or [[]]
        for chunk in chunks[: None if causal else 1]:
            if causal and len(chunk) < 2:
                continue
            windows.append(chunk)
            if label is not None:
                labels.append(label)
    if not windows:
        raise InputError("holds no text of two or more tokens", path=where, fix="pass more text")
    width = max(len(w) for w in windows)
    ids_t = torch.zeros(len(windows), width, dtype=torch.long)
    mask = torch.zeros_like(ids_t)
    for i, w in enumerate(windows):
        ids_t[i, :len(w)] = torch.tensor(w, dtype=torch.long)
        mask[i, :len(w)] = 1
    return ids_t, mask, torch.tensor(labels, dtype=torch.long) if labels else None


def describe(x: Any) -> str:
    """A batch of token inputs for messages: '(B, T) token ids'."""
    ids = x.get("input_ids") if isinstance(x, dict) else x
    return f"{tuple(ids.shape)} token ids" if isinstance(ids, torch.Tensor) else type(x).__name__
