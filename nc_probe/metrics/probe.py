"""Linear classifiers from sufficient statistics, without a training loop: the ridge probe, the Mahalanobis
nearest class mean (``docs/metrics.md``, "More collapse measures").

``acc_linear_probe``: ridge regression of one-hot labels on centred features, ``beta = (Sigma + lambda I)^-1
X_c^T Y_c / N`` with ``Sigma`` the total covariance and ``lambda = 1e-3 Tr(Sigma) / d``; the prediction is the
argmax of ``(h - mu)^T beta + n_c/N`` (the intercept is the mean of the one-hot targets). Both sufficient statistics
come from :class:`~nc_probe.stats.class_stats.ClassStats`: ``Sigma`` is the within-class scatter plus the count-weighted
scatter of the class means about the sample mean ``mu``, and column c of ``X_c^T Y_c`` is ``n_c (mu_c - mu)``.
Scoring the rows needs the final ``beta``, so it happens in the second pass (:class:`ProbeTally`).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch

RIDGE = 1e-3  # lambda = RIDGE * Tr(Sigma) / d


def total_covariance(count: np.ndarray, means: np.ndarray, scatter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Sigma_T, mu)``: the covariance of all rows about their sample mean, and that mean, from per-class counts
    and means (classes with samples) and the within-class scatter (d x d, summed over rows)."""
    N = count.sum()
    mu = count @ means / N
    D = means - mu
    return scatter / N + (D.T * (count / N)) @ D, mu


def ridge_probe(count: np.ndarray, means: np.ndarray, scatter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` (C x d, C) of the ridge probe: the scores of a row h are ``W h + b``."""
    sigma, mu = total_covariance(count, means, scatter)
    d = len(sigma)
    N = count.sum()
    lam = RIDGE * np.trace(sigma) / d
    prior = count / N
    if lam <= 0:  # every feature is constant: the probe predicts the most frequent class
        return np.zeros_like(means), prior
    rhs = ((means - mu) * prior[:, None]).T  # d x C: X_c^T Y_c / N
    L = np.linalg.cholesky(sigma + lam * np.eye(d))
    beta = np.linalg.solve(L.T, np.linalg.solve(L, rhs))
    W = beta.T
    return W, prior - W @ mu


#: ``acc_ncc_mahalanobis`` is scored when d * C is at most this (its pass-2 product is as large as NCC's: an
#: ImageNet head, d=2048 and C=1000, is in; a 32k-way language-model head is out)
MAHALANOBIS_MAX_WORK = 1 << 21


def mahalanobis_classifier(count: np.ndarray, means: np.ndarray, scatter: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` (C x d, C) whose argmax is ``argmin_c (h - mu_c)^T Sigma_W^+ (h - mu_c)`` (Lee et al. 2018's
    Mahalanobis nearest class mean with the shared within-class covariance): the squared distance is
    ``h^T S h - 2 h^T S mu_c + mu_c^T S mu_c`` with ``S = Sigma_W^+``, and the first term is the same for every
    class, so ``W = 2 (S mu_c)^T`` and ``b = -mu_c^T S mu_c`` after moving the origin to the mean of the class means
    (which changes every distance by nothing). Eigenvalues of ``Sigma_W`` below ``max(d, C) * eps64`` times the
    largest are dropped, as for nc1."""
    N = count.sum()
    d, C = scatter.shape[0], len(means)
    lam, V = np.linalg.eigh(scatter / N)
    if lam[-1] <= 0:  # no within-class spread at all: the Euclidean rule is the limit
        return nearest_mean_rule(means)
    keep = lam > max(d, C) * np.finfo(np.float64).eps * lam[-1]
    return nearest_mean_rule(means, (V[:, keep] / lam[keep]) @ V[:, keep].T)


def nearest_mean_rule(means: np.ndarray, S: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` whose argmax is ``argmin_c (h - mu_c)^T S (h - mu_c)`` (``S`` symmetric; None: the identity,
    the Euclidean nearest class mean), about the mean of the means for conditioning."""
    mu_G = means.mean(0)
    m = means - mu_G
    Sm = m if S is None else m @ S  # C x d
    W = 2 * Sm
    return W, -np.einsum("cd,cd->c", Sm, m) - W @ mu_G


class AccuracyTally:
    """A pass observer counting a rule's correct predictions: ``add(start, h, y)`` takes every row a pass reads,
    skips rows of classes outside ``keep``, and hands the rest to :meth:`credit` (the rule's correct count for those
    rows, possibly fractional). Synced across ranks by adding the counts."""

    def __init__(self, class_ids: np.ndarray, keep: np.ndarray | None = None):
        self.ids = torch.from_numpy(np.asarray(class_ids, dtype=np.int64))
        self.keep = keep
        self.correct = torch.zeros(1, dtype=torch.float64)
        self.total = torch.zeros(1, dtype=torch.long)

    def credit(self, h: torch.Tensor, y: torch.Tensor) -> float:
        raise NotImplementedError

    def add(self, start: int, h: torch.Tensor, y: torch.Tensor) -> None:
        y = y.cpu()
        if self.keep is not None and not self.keep.all():
            sel = torch.from_numpy(self.keep[y.numpy()])
            h, y = h[sel.to(h.device)], y[sel]
        if len(y) == 0:
            return
        self.correct += self.credit(h.to("cpu", torch.float64), y)
        self.total += len(y)

    def sync_steps(self) -> Generator[tuple[str, Any], Any, None]:
        """The :func:`nc_probe.core.distributed.sync` protocol: counts add."""
        yield "sum", [self.correct, self.total]

    @property
    def accuracy(self) -> float | None:
        total = int(self.total)
        return float(self.correct) / total if total else None


class ProbeTally(AccuracyTally):
    """The accuracy of a linear rule ``argmax W h + b`` (float64 scores; ties to the lowest class)."""

    def __init__(self, W: np.ndarray, b: np.ndarray, class_ids: np.ndarray, keep: np.ndarray | None = None):
        super().__init__(class_ids, keep)
        self.Wt = torch.from_numpy(np.ascontiguousarray(W.T))
        self.b = torch.from_numpy(b)

    def decide(self, h: torch.Tensor) -> torch.Tensor:
        """The rule's position among the classes (not yet a label id) of float64 rows."""
        return torch.argmax(h @ self.Wt + self.b, dim=1)

    def credit(self, h: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.ids[self.decide(h)] == y).sum())
