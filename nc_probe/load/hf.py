"""Hugging Face ``save_pretrained`` folders as checkpoints (with the optional ``transformers`` package).

A folder holding ``config.json`` and safetensors weights (``model.safetensors`` or a sharded
``model.safetensors.index.json``) is a checkpoint for every command. What it may make nc-probe do:

- the class is the config's single ``architectures`` entry, and must be one of transformers' own classes (an
  attribute of the installed ``transformers`` package) of a kind nc-probe analyses: an image classifier
  (``*ForImageClassification``), a sequence classifier (``*ForSequenceClassification``) or a causal language model
  (``*ForCausalLM``, ``*LMHeadModel``). A config with ``auto_map`` (code shipped in the folder, transformers'
  ``trust_remote_code``) is refused unless the user passes ``trust_checkpoint``;
- weights: safetensors only (``pytorch_model.bin`` is a pickle: only with ``trust_checkpoint``);
- the model is first built on the meta device and compared with the tensors the safetensors headers declare, so
  a config cannot make nc-probe allocate a model larger than its weights; nothing is downloaded (offline mode).

The loaded model is wrapped so the rest of nc-probe sees an ``nn.Module`` returning logits
(:class:`HFClassifier`), or, for a causal LM, one returning the logits of every token position that has a next
token (:class:`CausalLMTokens`): token-level collapse as in Wu & Papyan 2024, every such position a sample whose
class is the next token, its features the input of ``lm_head`` (after the final norm), ``W`` the ``lm_head`` weight
(tied to the embeddings or not).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nc_probe.core.errors import InputError
from nc_probe.core.files import read_json
from nc_probe.core.text import quoted

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER = "tokenizer.json"
#: How the class name of ``architectures`` says what the model is.
TASKS = (("ForImageClassification", "image-classifier"), ("ForSequenceClassification", "sequence-classifier"),
         ("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"))
#: Encoders whose classifier reads the first ([CLS]) token: what ``--pool auto`` takes in their layers.
MAX_HEADER = 100 * 1024**2
INSTALL = "pip install 'nc-probe[hf]' (transformers)"


def is_hf_folder(path) -> bool:
    """Whether ``path`` is a folder written by ``save_pretrained`` (a config.json and weights)."""
    p = Path(str(path))
    return p.is_dir() and (p / CONFIG).is_file() and any(
        (p / name).is_file() for name in (WEIGHTS, WEIGHTS_INDEX, *PICKLED_WEIGHTS))


def task_of(architecture: str) -> str | None:
    for suffix, task in TASKS:
        if architecture.endswith(suffix):
            return task
    return None


def read_config(folder: Path) -> dict:
    """config.json, type-checked for what nc-probe reads from it."""
    config = read_json(folder / CONFIG, "Hugging Face config", fix="save the model again with save_pretrained")
    if not isinstance(config, dict):
        raise InputError("config.json is not a JSON object", path=folder, fix="save the model with save_pretrained")
    archs = config.get("architectures")
    if not (isinstance(archs, list) and len(archs) == 1 and isinstance(archs[0], str)):
        raise InputError("config.json names no single model class in 'architectures'", path=folder,
                         fix="save the model itself with save_pretrained (not only its config)")
    if not isinstance(config.get("model_type"), str):
        raise InputError("config.json has no 'model_type'", path=folder, fix="save the model with save_pretrained")
    return config


def load_hf_folder(folder, *, trust: bool = False):
    """The model of a ``save_pretrained`` folder, wrapped for nc-probe, as a
    :class:`~nc_probe.load.checkpoint.LoadedModel` (see the module docstring)."""
    from nc_probe.load.loaded_model import LoadedModel

    folder = Path(str(folder))
    config = read_config(folder)
    arch = config["architectures"][0]
    task = task_of(arch)
    if task is None:
        raise InputError(f"config.json names the model class {quoted(arch)}, which is not an image classifier, a "
                         "sequence classifier or a causal language model", path=folder,
                         fix="analyze a *ForImageClassification, *ForSequenceClassification or *ForCausalLM model")
    remote = "auto_map" in config
    if remote and not trust:
        raise InputError("config.json maps the model to code shipped in the folder (auto_map), which loading "
                         "would run", path=folder,
                         fix="pass {trust_checkpoint=True} only if you trust its source")
    transformers = _transformers(folder)
    transformers.utils.logging.disable_progress_bar()  # its bars and notes would break nc-probe's one-line output
    transformers.utils.logging.set_verbosity_error()
    cls = getattr(transformers, arch, None) if not remote else None
    if not remote and not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise InputError(f"config.json names the model class {quoted(arch)}, which the installed transformers "
                         f"({transformers.__version__}) does not have", path=folder,
                         fix="upgrade transformers, or check the folder's config.json")
    declared = _declared_tensors(folder, trust)
    with _offline():
        cfg = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust)
        if not remote:
            _check_size(cls, cfg, declared, folder)
        loader = transformers.AutoModel if cls is None else cls
        try:
            model = loader.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust,
                                           use_safetensors=None if trust else True, dtype=torch.float32)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise InputError(f"transformers could not load the folder ({type(e).__name__}: "
                             f"{quoted(str(e).splitlines()[0] if str(e) else '', 160)})", path=folder,
                             fix="save the model again with save_pretrained") from None
    model.eval()
    names = _class_names(config) if task != "causal-lm" else None
    wrapped: nn.Module = CausalLMTokens(model) if task == "causal-lm" else HFClassifier(model, task)
    meta, notes = _folder_metadata(folder)
    meta.update({"hf_task": task, "hf_folder": str(folder), "hf_model_type": config["model_type"]})
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0:
        meta["hf_vocab_size"] = vocab
    if names is not None:
        meta["class_names"] = names
    return LoadedModel(wrapped, "huggingface", str(folder), arch=f"transformers:{arch}", metadata=meta, notes=notes)


def _folder_metadata(folder: Path) -> tuple[dict, list[str]]:
    """What the folder says besides the model: ``nc_probe.json`` (the same metadata a checkpoint's ``nc_probe``
    dict holds: data, split, class_names, epoch, ..., type-checked and allowlisted like it) and the epoch of a
    Trainer's ``trainer_state.json``."""
    from nc_probe.load.trust import clean_metadata

    meta: dict = {}
    notes: list[str] = []
    if (folder / "nc_probe.json").is_file():
        raw = read_json(folder / "nc_probe.json", "nc-probe metadata", fix="write a JSON object")
        meta, dropped = clean_metadata(raw)
        if dropped:
            notes.append(f"ignored metadata of an unexpected type: {', '.join(quoted(k) for k in dropped[:5])}")
    if "epoch" not in meta and (folder / "trainer_state.json").is_file():
        state = read_json(folder / "trainer_state.json", "Trainer state", fix="leave the Trainer's file as it wrote it")
        epoch = state.get("epoch") if isinstance(state, dict) else None
        if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) and 0 <= epoch < 1e12:
            meta["epoch"] = float(epoch)
    return meta, notes


def _transformers(folder):
    try:
        import transformers
    except ImportError:
        raise InputError("is a Hugging Face folder; reading it needs the transformers package", path=folder,
                         fix=INSTALL) from None
    return transformers


@contextlib.contextmanager
def _offline():
    """transformers and huggingface_hub never reach the network inside this block, and say little."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                       "TRANSFORMERS_VERBOSITY": "error"})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _declared_tensors(folder: Path, trust: bool) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor the folder's safetensors files declare (headers only, nothing read)."""
    files: list[Path]
    if (folder / WEIGHTS).is_file():
        files = [folder / WEIGHTS]
    elif (folder / WEIGHTS_INDEX).is_file():
        index = read_json(folder / WEIGHTS_INDEX, "safetensors index", fix="save the model with save_pretrained")
        shards = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(shards, dict) or not all(isinstance(v, str) for v in shards.values()):
            raise InputError("model.safetensors.index.json has no weight_map of file names", path=folder,
                             fix="save the model with save_pretrained")
        names = sorted(set(shards.values()))
        if any(Path(n).name != n for n in names):
            raise InputError("model.safetensors.index.json names shard files outside the folder", path=folder,
                             fix="save the model with save_pretrained")
        files = [folder / n for n in names]
    elif trust:
        return {}
    else:
        raise InputError("holds its weights as pytorch_model.bin, a pickle that loading would run", path=folder,
                         fix="save it with save_pretrained(safe_serialization=True), or pass {trust_checkpoint=True} "
                             "only if you trust its source")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        shapes.update(_safetensors_shapes(f))
    return shapes


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    fix = "save the model again with save_pretrained"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > min(size - 8, MAX_HEADER):
                raise InputError("safetensors header is larger than the file", path=path, fix=fix)
            header = json.loads(fh.read(n))
    except (OSError, struct.error, ValueError, RecursionError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError("is not a readable safetensors file", path=path, fix=fix) from None
    if not isinstance(header, dict):
        raise InputError("safetensors header is not an object", path=path, fix=fix)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        if not (isinstance(shape, list) and all(isinstance(s, int) and 0 <= s < 1 << 40 for s in shape)):
            raise InputError(f"tensor {quoted(name)} has no valid shape", path=path, fix=fix)
        out[name] = tuple(shape)
    return out


def _check_size(cls, cfg, declared: dict, folder: Path) -> None:
    """Build the model on the meta device (no memory) and refuse a config that makes it much larger than the
    weights the folder holds: a small file must not make nc-probe allocate gigabytes of random weights."""
    if not declared:
        return
    with torch.device("meta"):
        meta_model = cls(cfg)
    need = sum(p.numel() for p in meta_model.parameters())  # tied weights counted once
    have = sum(_numel(s) for s in declared.values())
    if need > 2 * have + (1 << 20):
        raise InputError(f"config.json describes a model of {need:,} parameters, but the weights hold {have:,}",
                         path=folder, fix="save the model again with save_pretrained")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _class_names(config: dict) -> list[str] | None:
    """The class names of ``id2label`` when they cover 0..C-1 (transformers' defaults LABEL_i are kept too)."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label or len(id2label) > 1 << 20:
        return None
    try:
        pairs = sorted((int(k), v) for k, v in id2label.items())
    except (TypeError, ValueError):
        return None
    if [k for k, _ in pairs] != list(range(len(pairs))) or not all(isinstance(v, str) for _, v in pairs):
        return None
    return [v for _, v in pairs]


# ---------------------------------------------------------------------------------------------- the wrappers
class HFClassifier(nn.Module):
    """A transformers image or sequence classifier as a module that returns its logits. Images: ``x`` is the
    pixel batch. Text: ``x`` is ``{"input_ids", "attention_mask"}`` (see :mod:`nc_probe.data.token_data`)."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model: Any = model
        self.task = task
        cfg: Any = model.config
        # what a layer's token outputs reduce to with --pool auto: the token the classifier reads
        self.layer_pool = "cls" if task == "image-classifier" or not getattr(cfg, "is_decoder", False) \
            and cfg.model_type not in DECODER_TYPES else "last"
        self.token_mask: torch.Tensor | None = None

    def forward(self, x: Any = None, **inputs) -> torch.Tensor:
        x = inputs or x  # a dict batch arrives as keyword arguments
        if self.task == "image-classifier":
            return self.model(pixel_values=x).logits
        ids, mask = _token_inputs(x)
        self.token_mask = mask.bool()
        return self.model(input_ids=ids, attention_mask=mask).logits


#: model_type of decoder-only families whose sequence classifiers read the last token
DECODER_TYPES = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma",
                 "gemma2", "gemma3", "phi", "phi3", "opt", "bloom", "falcon", "mpt", "starcoder2", "olmo", "olmo2"}


def next_token_rows(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the positions that are a sample of token-level collapse (the token and the next are real)."""
    m = mask.bool()
    rows = torch.zeros_like(m)
    rows[:, :-1] = m[:, :-1] & m[:, 1:]
    return rows


class CausalLMTokens(nn.Module):
    """A transformers causal LM as a token-level classifier: ``forward({"input_ids", "attention_mask"})`` returns the
    ``lm_head`` logits of every position that has a next token (:func:`next_token_rows`), in
    row-major order; the ``lm_head`` (the final ``nn.Linear``) reads their features, so the default tap takes them
    with ``W`` = its weight. ``token_mask`` (B, T) marks those positions for layer taps."""

    layer_pool = "token"

    def __init__(self, model: Any):
        super().__init__()
        head = model.get_output_embeddings()
        if not isinstance(head, nn.Linear):
            raise InputError(f"the language model's output layer is a {type(head).__name__}, not an nn.Linear",
                             fix="analyze a model whose lm_head is a linear layer")
        self.model: Any = model
        self.lm_head: Any = head
        self.token_mask: torch.Tensor | None = None

    def forward(self, x: Any = None, **inputs) -> torch.Tensor:
        x = inputs or x  # a dict batch arrives as keyword arguments
        ids, mask = _token_inputs(x)
        rows = next_token_rows(mask)
        self.token_mask = rows
        hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.lm_head(hidden[rows])


def _token_inputs(x) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(x, dict) and "input_ids" in x:
        ids = x["input_ids"]
        mask = x.get("attention_mask")
    elif isinstance(x, torch.Tensor):
        ids, mask = x, None
    else:
        raise InputError("a text model needs token ids (input_ids) as its data",
                         fix="pass {data} as .npz/.pt arrays input_ids (N, T) [attention_mask], or .txt/.jsonl text")
    if ids.is_floating_point():
        raise InputError("token ids must be integers, not floats", fix="store input_ids as int64")
    ids = ids.long()
    mask = torch.ones_like(ids) if mask is None else mask.long()
    return ids, mask
