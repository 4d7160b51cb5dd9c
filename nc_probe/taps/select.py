"""Which modules a layer analysis taps: ``--layers SPEC`` resolved against a model's module names.

A spec is a comma-separated list; each item adds modules, in this syntax:

- a full dotted module name (``layer3.1``, ``blocks.7``): exactly that module;
- a glob (``layer*.1``, ``blocks.*``): ``*``, ``?`` and ``[...]`` match within one dotted segment, ``**`` any
  number of segments, so ``blocks.*`` is the blocks themselves and not their sub-modules;
- ``re:REGEX``: the names the regular expression matches in full;
- an integer (``-1``, ``3``): that position in the model's module list (the order ``nc-probe inspect`` prints);
- ``@blocks``: the network's repeated blocks (see :func:`repeated_blocks`); ``@penultimate``: the input of the final
  ``nn.Linear``, the features ``analyze`` taps by default.

The full module name is the key everywhere (reports, tables, plots), so every row maps back to a module.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter

from torch import nn

from nc_probe.core.errors import InputError
from nc_probe.taps.base import suggest_names

PENULTIMATE = "@penultimate"
DEFAULT_LAYERS = "@blocks,@penultimate"
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
               nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Softplus, nn.PReLU)


def select_layers(model: nn.Module, spec: str | None = None) -> list[str]:
    """Module names (and possibly :data:`PENULTIMATE`) chosen by ``spec`` (default :data:`DEFAULT_LAYERS`), in
    the order of the model's module list, without repeats."""
    names = [n for n, _ in model.named_modules() if n]
    position = {n: i for i, n in enumerate(names)}
    chosen: list[str] = []
    for item in _items(spec or DEFAULT_LAYERS):
        found = _resolve(model, names, item)
        if not found:
            raise InputError(f"{{layers}} item {item!r} matches no module (close: {suggest_names(item, names)})",
                             fix="see nc-probe inspect for the module names")
        chosen += [n for n in found if n not in chosen]
    modules = sorted((n for n in chosen if n != PENULTIMATE), key=position.__getitem__)
    return modules + ([PENULTIMATE] if PENULTIMATE in chosen else [])


def _items(spec: str) -> list[str]:
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not items:
        raise InputError("{layers} is empty", fix=f"pass module names, globs, re:REGEX or {DEFAULT_LAYERS}")
    return items


def _resolve(model: nn.Module, names: list[str], item: str) -> list[str]:
    if item == "@blocks":
        return repeated_blocks(model)
    if item == PENULTIMATE:
        return [PENULTIMATE]
    if item.startswith("@"):
        raise InputError(f"{{layers}} set {item!r} is unknown", fix="use @blocks or @penultimate")
    if item.startswith("re:"):
        try:
            pattern = re.compile(item[3:])
        except re.error as e:
            raise InputError(f"{{layers}} item {item!r} is not a regular expression ({e})",
                             fix="write re: followed by a Python regular expression") from None
        return [n for n in names if pattern.fullmatch(n)]
    if re.fullmatch(r"[+-]?\d+", item):
        i = int(item)
        if not -len(names) <= i < len(names):
            raise InputError(f"{{layers}} index {i} is outside the model's {len(names)} modules",
                             fix="see nc-probe inspect for the module list")
        return [names[i]]
    if any(ch in item for ch in "*?["):
        return [n for n in names if glob_match(item, n)]
    return [item] if item in names else []


def glob_match(pattern: str, name: str) -> bool:
    """Dotted-name glob: wildcards stay within a segment; a ``**`` segment matches any number of segments."""
    return _match(pattern.split("."), name.split("."))


def _match(pat: list[str], parts: list[str]) -> bool:
    if not pat:
        return not parts
    if pat[0] == "**":
        return any(_match(pat[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pat[0]) and _match(pat[1:], parts[1:])


def repeated_blocks(model: nn.Module) -> list[str]:
    """The network's repeated blocks: in every ``nn.Sequential``/``nn.ModuleList``, the composite children whose
    type appears at least twice there (ResNet's ``layer1.0 ... layer4.1``, a ViT's ``blocks.0 ... blocks.11``),
    without descending into them; when those children are themselves plain containers with repeated blocks inside
    (stages written as a Sequential of Sequentials), the blocks inside. A network without such containers (a plain
    MLP) gives the outputs of its activation modules instead, and one without those its ``nn.Linear``/convolution
    layers except the last."""
    found: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        kids = list(module.named_children())
        if isinstance(module, CONTAINERS):
            counts = Counter(type(m) for _, m in kids if _composite(m))
            repeated = {t for t, k in counts.items() if k >= 2}
            if repeated:
                blocks = [(prefix + n, m) for n, m in kids if type(m) in repeated]
                if all(isinstance(m, CONTAINERS) for _, m in blocks):
                    # stages of blocks (Sequential of Sequentials, as ResNets are often written): the blocks
                    # inside them when they have repeated blocks of their own, else the stages themselves
                    mark = len(found)
                    for name, m in blocks:
                        visit(m, f"{name}.")
                    if len(found) > mark:
                        return
                found.extend(name for name, _ in blocks)
                return
        for n, m in kids:
            visit(m, f"{prefix}{n}.")

    visit(model, "")
    if found:
        return found
    activations = [n for n, m in model.named_modules() if n and isinstance(m, ACTIVATIONS)]
    if activations:
        return activations
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    return layers[:-1]


CONTAINERS = (nn.Sequential, nn.ModuleList)


def _composite(module: nn.Module) -> bool:
    return next(module.children(), None) is not None
