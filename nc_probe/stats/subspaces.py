"""The per-class statistics of the subspace metrics, planned to fit memory whatever C, d and N.

A class's ranks, coding rate and basis need the spectrum of ``S_c = Z_c^T Z_c / n_c`` (Z_c its unit feature rows).
Holding every class's d x d ``S_c`` is what does not scale: at ImageNet's C=1000 and d=2048 it is 31 GiB. Two
facts make it unnecessary:

- when ``n_c < d`` the nonzero spectrum of ``S_c`` is that of the small Gram ``Z_c Z_c^T / n_c`` (n_c x n_c), and
  its eigenvectors map to those of ``S_c`` through ``Z_c^T``: such a class keeps its rows (``n_c d`` numbers, fewer
  than ``d^2``) instead of the d x d moments;
- classes are independent: they can be processed a group at a time, each group in one more pass over the features.

:func:`plan_groups` gives each class the smaller of the two representations and packs classes into groups whose
statistics take at most ``group_bytes``; :class:`SubspaceAccumulator` holds one group. The number of passes grows
with N (rows), the memory does not: a group never holds more than ``group_bytes``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nc_probe.core.errors import InputError
from nc_probe.core.text import format_bytes
from nc_probe.stats.moment_plan import GROUP_SHARE

F64 = torch.float64


@dataclass(frozen=True)
class ClassPlan:
    """How one class is accumulated: ``rows`` (its unit rows, for the Gram route) or ``moments`` (d x d)."""

    cls: int
    count: int
    route: str

    def nbytes(self, dim: int) -> int:
        return 8 * dim * (self.count if self.route == "rows" else dim)


def class_plans(counts: np.ndarray, classes: Sequence[int], dim: int) -> list[ClassPlan]:
    """The cheaper representation of each class: rows while ``n_c < d``, else the d x d moments."""
    return [ClassPlan(int(c), int(counts[c]), "rows" if counts[c] < dim else "moments") for c in classes
            if counts[c] > 0]


def plan_groups(plans: list[ClassPlan], dim: int, group_bytes: int) -> list[list[ClassPlan]]:
    """Consecutive classes packed into groups of at most ``group_bytes`` (one group per pass over the features)."""
    groups: list[list[ClassPlan]] = [[]]
    used = 0
    for p in plans:
        size = p.nbytes(dim)
        if size > group_bytes:
            raise InputError(f"the subspace statistics of class {p.cls} need {format_bytes(size)}, more than a group "
                             f"may take ({format_bytes(group_bytes)}: 1/{GROUP_SHARE} of {{memory_budget}})",
                             fix=f"raise {{memory_budget}} to at least {format_bytes(GROUP_SHARE * size)}")
        if used + size > group_bytes and groups[-1]:
            groups.append([])
            used = 0
        groups[-1].append(p)
        used += size
    return [g for g in groups if g]


class SubspaceAccumulator:
    """The statistics of one group of classes: per class, its unit rows or its d x d second moments.

    ``update(z, y)`` takes unit feature rows (float64; zero rows stay zero) and their labels; rows of classes outside
    the group are ignored. Rows are kept in arrival order; the spectra do not depend on it.
    """

    def __init__(self, plans: list[ClassPlan], dim: int, device="cpu"):
        self.dim = dim
        self.device = torch.device(device)
        self.plans = {p.cls: p for p in plans}
        self.rows: dict[int, list[torch.Tensor]] = {p.cls: [] for p in plans if p.route == "rows"}
        self.moments = {p.cls: torch.zeros(dim, dim, dtype=F64, device=self.device)
                        for p in plans if p.route == "moments"}
        self._member = torch.zeros(1 + max([p.cls for p in plans], default=0), dtype=torch.bool)
        self._member[[p.cls for p in plans]] = True

    @property
    def classes(self) -> list[int]:
        return list(self.plans)

    def members(self, y: torch.Tensor) -> torch.Tensor | None:
        """Which rows of labels ``y`` belong to this group's classes (None: all of them)."""
        y = y.cpu()
        inside = torch.zeros_like(y, dtype=torch.bool)
        known = y < len(self._member)
        inside[known] = self._member[y[known]]
        return None if bool(inside.all()) else inside

    def update(self, z: torch.Tensor, y: torch.Tensor) -> None:
        y = y.cpu()
        mask = self.members(y)
        inside = torch.ones_like(y, dtype=torch.bool) if mask is None else mask
        if not bool(inside.any()):
            return
        y, z = y[inside], z[inside.to(z.device)]
        y, order = torch.sort(y, stable=True)
        z = z[order.to(z.device)]
        classes, counts = torch.unique_consecutive(y, return_counts=True)
        start = 0
        for c, n in zip(classes.tolist(), counts.tolist()):
            block = z[start:start + n].to(self.device, F64)
            start += n
            if c in self.moments:
                self.moments[c] += block.T @ block
            else:
                self.rows[c].append(block.clone())

    def class_rows(self, c: int) -> torch.Tensor:
        parts = self.rows[c]
        return torch.cat(parts) if parts else torch.zeros(0, self.dim, dtype=F64, device=self.device)

    def sync_steps(self) -> Generator[tuple[str, Any], Any, None]:
        """The :func:`nc_probe.core.distributed.sync` protocol: moments add; every rank's rows are gathered."""
        if self.moments:
            yield "sum", list(self.moments.values())
        if self.rows:
            local = {c: self.class_rows(c).cpu().numpy() for c in self.rows}
            parts = yield "gather", local
            for c in self.rows:
                self.rows[c] = [torch.from_numpy(np.concatenate([p[c] for p in parts])).to(self.device)]
