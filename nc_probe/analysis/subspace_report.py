"""The subspace half of a report: which classes, in which groups, and their ranks, coding rates and angles.

:func:`plan` decides, from the class counts (known before any pass), what is computed: the subspace classes (the
user's, else every class with samples), the angle classes (at most ``angle_classes`` of them, the most frequent),
and how their statistics are accumulated: in pass 1 as d x d moments when every class fits the memory budget that
way (then nothing else is read), else in groups (:mod:`nc_probe.stats.subspaces`), the first one during pass 2 and each
further one in a pass of its own. :func:`finish` turns the groups' statistics into per-class results, the coding
rates and the principal angles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nc_probe.analysis.spectra import ClassSpectrum, class_spectrum
from nc_probe.core.errors import InputError
from nc_probe.core.settings import MetricSettings
from nc_probe.core.text import format_bytes
from nc_probe.metrics import subspace
from nc_probe.metrics.angles import AngleResult, all_pair_angles
from nc_probe.stats.class_stats import ClassStats
from nc_probe.stats.moment_plan import GROUP_SHARE, group_bytes, moments_fit
from nc_probe.stats.subspaces import ClassPlan, SubspaceAccumulator, class_plans, plan_groups

AUTO_ANGLE_CLASSES = 1000  # above this many classes, principal angles for the most frequent ones only
INLINE_MATRIX_CLASSES = 100  # up to this many classes, the C x C matrices are in the report JSON itself
KEEP_MATRIX_CLASSES = 2048  # up to this many, they go to the side file by default (32 MiB per matrix)
BASIS_BYTES = 1 << 30  # the angle classes' bases are kept within max(this, memory_budget / 2)


@dataclass
class SubspacePlan:
    """What the subspace metrics cover and how their statistics are gathered."""

    classes: list[int]  # subspace classes with samples
    angle_classes: list[int]  # sorted by id
    angle_order: list[int]  # the same, the most frequent first (ties: lower id)
    in_pass1: bool  # every class's d x d moments accumulated by ClassStats in pass 1
    groups: list[list[ClassPlan]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def tracked(self) -> list[int] | None:
        """The classes ClassStats must track in pass 1 (None: all; []: none)."""
        return self.classes if self.in_pass1 else []


def plan(counts: np.ndarray, dim: int, settings: MetricSettings, *, tracked=None) -> SubspacePlan:
    """The plan for these class counts (see the module docstring). ``tracked``: the classes whose moments
    statistics accumulated already (during extraction) hold, when given: if they lack some of the plan's, the
    plan gathers groups instead, and those statistics serve everything else (pass 1 is not read again)."""
    analysed = counts >= max(settings.min_class_count, 1)
    if settings.classes is not None:
        bad = [c for c in settings.classes if c >= len(counts)]
        if bad:
            raise InputError(f"{{classes}} names {bad[:5]} but the labels only go from 0 to {len(counts) - 1}",
                             fix="pick class indices in that range")
    classes = [int(c) for c in (np.flatnonzero(analysed) if settings.classes is None else settings.classes)
               if analysed[c]]
    notes: list[str] = []
    angle_classes = _angle_classes(counts, classes, settings, notes)
    order = sorted(angle_classes, key=lambda c: (-counts[c], c))
    budget = settings.memory_budget
    held = tracked is None or set(classes) <= set(tracked)
    if held and moments_fit(len(classes), dim, budget):
        return SubspacePlan(classes, angle_classes, order, True, notes=notes)
    plans = class_plans(counts, classes, dim)
    groups = plan_groups(plans, dim, group_bytes(budget))
    if len(groups) > 1:
        notes.append(f"subspace statistics in {len(groups)} groups of at most {format_bytes(group_bytes(budget))} "
                     f"(1/{GROUP_SHARE} of {{memory_budget}}), one more pass over the features each")
    return SubspacePlan(classes, angle_classes, order, False, groups, notes)


def _angle_classes(counts: np.ndarray, classes: list[int], settings: MetricSettings, notes: list[str]) -> list[int]:
    limit = settings.angle_classes
    if limit is None:
        limit = AUTO_ANGLE_CLASSES
        if len(classes) > limit:
            notes.append(f"principal angles for the {limit} most frequent of {len(classes)} classes "
                         f"({len(classes) * (len(classes) - 1) // 2:,} pairs would be needed for all); "
                         "{angle_classes} chooses how many")
    if len(classes) <= limit:
        return list(classes)
    by_count = sorted(classes, key=lambda c: (-counts[c], c))[:limit]
    return sorted(by_count)


def pass1_accumulator(stats: ClassStats, classes: list[int]) -> SubspaceAccumulator:
    """The moments ClassStats gathered in pass 1, as a group accumulator (no copy)."""
    ids = stats.class_ids
    count = dict(zip(ids.tolist(), stats.class_count.cpu().tolist()))
    plans = [ClassPlan(c, count[c], "moments") for c in classes if count.get(c, 0) > 0]
    acc = SubspaceAccumulator([], stats.dim, stats.device)
    acc.plans = {p.cls: p for p in plans}
    acc.moments = {p.cls: m for p in plans if (m := stats.moments_of(p.cls)) is not None}
    return acc


@dataclass
class SubspaceResults:
    """Per-class spectra (in class order), and what the report keeps of them.

    The bases of the angle classes (d x k each) are kept within ``basis_bytes`` (half of ``memory_budget``, at
    least 1 GiB; the angles stack them once more): when they would pass it, the least frequent are dropped, and
    with them every class less frequent, so that the angles cover the most frequent classes whose bases fit,
    whatever order the groups come in (``angle_rank``: each angle class's place by frequency)."""

    spectra: dict[int, ClassSpectrum] = field(default_factory=dict)

    keep_ns: bool = False  # also keep each class's nearest-subspace basis
    basis_bytes: int | None = None
    angle_rank: dict[int, int] = field(default_factory=dict)
    rank_limit: int | None = None  # angle classes of this rank and beyond keep no basis
    kept_bytes: int = 0

    def add_group(self, acc: SubspaceAccumulator, settings: MetricSettings, angle_classes: set[int]) -> None:
        """Spectra of one group's classes, one eigendecomposition per class on every core."""
        def one(c: int) -> ClassSpectrum:
            wanted = c in angle_classes and (self.rank_limit is None or self.angle_rank.get(c, 0) < self.rank_limit)
            return class_spectrum(acc, c, settings, keep_basis=wanted, keep_ns=self.keep_ns)

        for spec in subspace.parallel_map(one, acc.classes):
            self.spectra[spec.cls] = spec
            if spec.basis is not None:
                self.kept_bytes += spec.basis.nbytes
        self._fit_bases()

    def _fit_bases(self) -> None:
        if self.basis_bytes is None:
            return
        kept = sorted((self.angle_rank.get(c, 0), c) for c, sp in self.spectra.items() if sp.basis is not None)
        while kept and (self.kept_bytes > self.basis_bytes or (self.rank_limit is not None
                                                                and kept[-1][0] >= self.rank_limit)):
            rank, c = kept.pop()
            spec = self.spectra[c]
            assert spec.basis is not None
            self.kept_bytes -= spec.basis.nbytes
            spec.basis = None
            self.rank_limit = rank if self.rank_limit is None else min(self.rank_limit, rank)


def results_for(splan: SubspacePlan, settings: MetricSettings, keep_ns: bool = False) -> SubspaceResults:
    """Empty results for ``splan``, keeping the angle classes' bases within half of ``memory_budget`` (at least
    :data:`BASIS_BYTES`: a small budget costs passes, not angles)."""
    return SubspaceResults(keep_ns=keep_ns, basis_bytes=max(settings.memory_budget // 2, BASIS_BYTES),
                           angle_rank={c: i for i, c in enumerate(splan.angle_order)})


def finish(stats: ClassStats, count: np.ndarray, splan: SubspacePlan, results: SubspaceResults,
           settings: MetricSettings) -> tuple[dict, dict, dict, dict, list[str]]:
    """``(scalar metrics, per-class lists, angles, pair summaries, warnings)`` of the subspace metrics."""
    d, N = stats.dim, int(count.sum())
    out: dict[str, float | None] = {"coding_rate_max": subspace.coding_rate_max(d, settings.eps2)}
    total = stats.second_moment_total()  # None: not kept, for the collapse metrics alone (classes=[])
    out["coding_rate"] = None if total is None else subspace.coding_rate_of_matrix(total.cpu().numpy() / N,
                                                                                    settings.eps2)
    tracked = [c for c in splan.classes if c in results.spectra]
    per: dict[str, list] = {k: [results.spectra[c].metrics[k] for c in tracked] for k in
                            ("rank_energy95", "rank_energy99", "rank_effective", "rank_numerical",
                             "coding_rate_class", "basis_dim")}
    per["spectrum"] = [results.spectra[c].spectrum for c in tracked]
    warnings = list(splan.notes)
    present = set(np.flatnonzero(count).tolist())
    if tracked and set(tracked) == present:
        rc = float(np.dot(count[tracked] / N, per["coding_rate_class"]))
        out["coding_rate_within"], out["rate_reduction"] = rc, float(out["coding_rate"]) - rc  # type: ignore[arg-type]
    else:
        out["coding_rate_within"] = out["rate_reduction"] = None
        if tracked:
            warnings.append("coding_rate_within and rate_reduction need every class; they are left out because "
                            "subspace statistics were kept for only some classes")
    angle_ids = [c for c in splan.angle_classes if c in results.spectra and results.spectra[c].basis is not None]
    if len(angle_ids) < len(splan.angle_classes) and results.rank_limit is not None:
        warnings.append(f"principal angles for the {len(angle_ids)} most frequent of the {len(splan.angle_classes)} "
                        f"angle classes whose bases (d x k each) fit in max(1 GiB, half of {{memory_budget}})")
    bases: list[np.ndarray] = [b for c in angle_ids if (b := results.spectra[c].basis) is not None]
    for c in angle_ids:
        results.spectra[c].basis = None  # from here on held by the angles alone (stacked once)
    keep = _keep_matrices(len(angle_ids), settings)
    angles_result = all_pair_angles(bases, keep_matrices=keep, device=stats.device,
                                    precision=settings.angle_precision)
    del bases
    out.update(angles_result.metrics)
    warnings += _angle_warnings(angles_result, d)
    angles = {"class_ids": angle_ids, "angle_min": _matrix(angles_result.angle_matrix, len(angle_ids)),
              "subspace_affinity": _matrix(angles_result.affinity_matrix, len(angle_ids)),
              "forced_zero_pairs": angles_result.forced_zero_pairs}
    return out, {"subspace_class_ids": tracked, **per}, angles, _angle_summaries(angles_result), warnings


def _keep_matrices(n: int, settings: MetricSettings) -> bool:
    return settings.matrices == "always" or (settings.matrices == "auto" and n <= KEEP_MATRIX_CLASSES)


def _matrix(matrix: np.ndarray | None, n: int):
    return None if matrix is None or n < 2 else matrix


def _angle_summaries(result: AngleResult) -> dict:
    return {"angle_min": result.angle, "subspace_affinity": result.affinity} if result.angle.count else {}


def _angle_warnings(result: AngleResult, d: int) -> list[str]:
    forced = result.forced_zero_pairs
    if not forced:
        return []
    return [f"{forced} of {result.angle.count} class pairs have bases of k_c + k_c' > d={d} dimensions, so their "
            "smallest principal angle is 0 by dimension count, not by measurement (each class's k is per_class "
            "basis_dim); read subspace_affinity for those pairs, or fix k with {subspace_dim}"]
