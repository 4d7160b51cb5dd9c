"""How much of the memory budget the per-class subspace statistics may take, decided once from the class count:
whether pass 1 keeps every tracked class's d x d moments (:func:`moments_fit`, used by extraction, the streaming
metric and the analysis alike), else the size of the groups gathered a pass at a time (:func:`group_bytes`)."""

from __future__ import annotations

#: When the subspace statistics do not all fit ``memory_budget`` in pass 1 they are gathered a group of classes at a
#: time, each group taking at most 1/GROUP_SHARE of the budget (the rest holds the pass's chunk, the bases kept for
#: the angles and the other statistics). Set here only.
GROUP_SHARE = 4


def subspace_bytes(num_tracked: int, dim: int) -> int:
    """Memory held by the per-class ``d x d`` second-moment matrices."""
    return num_tracked * dim * dim * 8


def moments_fit(num_tracked: int, dim: int, memory_budget: int) -> bool:
    """Whether pass 1 keeps the d x d moments of ``num_tracked`` classes (they fit ``memory_budget``): the one
    decision, taken by extraction from the class count and by the analysis from the classes with samples."""
    return subspace_bytes(num_tracked, dim) <= memory_budget


def group_bytes(memory_budget: int) -> int:
    """The most one group of subspace statistics may take (see :data:`GROUP_SHARE`)."""
    return memory_budget // GROUP_SHARE


def pass1_classes(num_classes: int, dim: int, settings) -> list[int] | None:
    """The classes whose d x d moments pass 1 accumulates: all of them (None) or the user's pick when they fit the
    memory budget that way, else none ([]): the analysis then gathers subspace statistics in groups
    (:mod:`nc_probe.analysis.subspace_report`)."""
    classes = settings.classes
    n = num_classes if classes is None else len(classes)
    if not moments_fit(n, dim, settings.memory_budget):
        return []
    return None if classes is None else [c for c in classes if c < num_classes]
