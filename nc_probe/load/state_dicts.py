"""Matching a checkpoint's state_dict to a model: wrapper prefixes, nesting, names and shapes."""

from __future__ import annotations

from nc_probe.core.errors import InputError
from nc_probe.core.text import few, quoted

#: Prefixes added by wrappers that are always removed: DistributedDataParallel/DataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: Keys a model may lack in an older checkpoint without any effect on inference.
IGNORABLE_MISSING = ("num_batches_tracked",)


def strip_wrapper_prefixes(keys) -> dict:
    """Map each key to its name without DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes."""
    out = {}
    for k in keys:
        new = k.replace("._orig_mod.", ".")
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if new.startswith(p):
                    new, changed = new[len(p):], True
        out[k] = new
    return out


def match_state_dict(state: dict, expected: dict, *, path=None, strip_prefix=None, arch=None) -> tuple[dict, list]:
    """Rename ``state``'s keys to the model's (``expected``) and check that names and shapes agree.

    Applies, in order: ``strip_prefix`` (keys without it are dropped), the wrapper prefixes, and, when the keys
    still do not match, the one leading component (``model.`` of Lightning, ``net.``, ``backbone.``...) under which
    all of the model's keys are found. Returns (renamed state, notes); raises InputError listing a few missing and
    unexpected keys, or the first shape mismatch.
    """
    notes = []
    if strip_prefix:
        kept = {k[len(strip_prefix):]: v for k, v in state.items() if k.startswith(strip_prefix)}
        if not kept:
            raise InputError(f"no key starts with {{strip_prefix}} {quoted(strip_prefix)} (keys look like "
                             f"{_keys(state, 3)})", path=path, fix="check the prefix, including its dot")
        notes.append(f"kept the {len(kept)} keys under {quoted(strip_prefix)} and removed that prefix")
        state = kept
    want = set(expected)
    renamed = strip_wrapper_prefixes(state)
    # Only when it helps: a model may itself have a sub-module called "module".
    if any(k != v for k, v in renamed.items()) and len(want & set(renamed.values())) > len(want & set(state)):
        notes.append("removed DDP/torch.compile prefixes (module., _orig_mod.)")
        state = {renamed[k]: v for k, v in state.items()}
    if not want <= set(state):
        prefix = _covering_prefix(state, want)
        if prefix:
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            notes.append(f"used the keys under {quoted(prefix)} (e.g. a Lightning module's attribute)")
    missing = [k for k in expected if k not in state and not k.endswith(IGNORABLE_MISSING)]
    unexpected = [k for k in state if k not in want]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_keys(missing, 3)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_keys(unexpected, 3)})")
        fix = "check {arch} and {arch_kwargs}, or pass {strip_prefix} with a wrapper's key prefix"
        raise InputError(f"state_dict keys do not match {arch or 'the architecture'}: " + "; ".join(parts),
                         path=path, fix=fix)
    for k, v in expected.items():
        if k in state and tuple(state[k].shape) != tuple(v.shape):
            fix = "check {arch} and {arch_kwargs}"
            if len(v.shape) >= 1 and len(state[k].shape) == len(v.shape) and state[k].shape[1:] == v.shape[1:] \
                    and k.endswith(("weight", "bias")):
                fix = f"""build the model with the checkpoint's size, e.g. {{arch_kwargs}} '{{"num_classes": """ \
                      f"""{state[k].shape[0]}}}' if {quoted(k)} is the classifier"""
            raise InputError(f"shape mismatch for {quoted(k)}: checkpoint {tuple(state[k].shape)}, {arch or 'model'} "
                             f"{tuple(v.shape)}", path=path, fix=fix)
    return state, notes


def _keys(keys, n: int) -> str:
    """A few state_dict keys, quoted: they are text from the file."""
    return few([quoted(k) for k in list(keys)[:n + 1]], n)


def _covering_prefix(state: dict, want: set) -> str | None:
    firsts = {k.split(".", 1)[0] + "." for k in state if "." in k}
    for p in sorted(firsts):
        under = {k[len(p):] for k in state if k.startswith(p)}
        if want <= under or (want - under and all(m.endswith(IGNORABLE_MISSING) for m in want - under)):
            return p
    return None
