"""Float32 screening of pass 2's decisions, with a rigorous bound on the rounding (see :class:`Float32Screen`);
:class:`ClassifierScreen` does the same for a classifier scored a block of rows at a time (a 256k-way head)."""

from __future__ import annotations

import math

import torch

from nc_probe.stats.predictions import Classifier

U32 = 2.0**-24


def _gamma(d: int, rounded_input: bool = False) -> float:
    """Twice the relative bound of a float32 product of d terms plus the float64 one (see :class:`Float32Screen`);
    ``rounded_input``: the rows were float64, rounded to float32 for the screen, which adds one more unit
    (``|h - fl32(h)| <= u |h|`` elementwise)."""
    k = d + 2 + int(rounded_input)
    return 2.0 * (k * U32 / (1 - k * U32) + (d + 2) * 2.0**-53)


def screened_rows(block: torch.Tensor, rounded_input: bool) -> torch.Tensor | None:
    """The float32 rows a screen scores: float32 rows as they are; float64 rows rounded to float32 when the screen
    was built for that (``rounded_input``); None otherwise (scored in float64)."""
    if not len(block):
        return None
    if block.dtype == torch.float32:
        return block
    return block.to(torch.float32) if rounded_input and block.dtype == torch.float64 else None


def _row_norms(block: torch.Tensor, column_norm: float) -> torch.Tensor | None:
    """Upper bounds of the rows' norms, or None when float32 products could overflow (the block is then scored in
    float64)."""
    # vector_norm, not einsum("ij,ij->i"): 15x faster on the CPU (the einsum cost a quarter of an X^T X per screen)
    hn = torch.linalg.vector_norm(block, dim=1).double()
    if not len(hn) or not float(hn.max()) * max(column_norm, 1.0) < 1e30:
        return None
    return hn * (1.001 + block.shape[1] * 2.0**-23)  # the float32 sum of squares is within (d u) of the exact one


def _scratch(owner, rows: int, cols: int, device) -> torch.Tensor:
    """A float32 score matrix kept by ``owner`` from block to block: at a 32k-way head a block's scores are a few
    hundred MiB, and fresh memory is paid for in page faults on first touch (~5 ms/MiB on the 2-core Xeon VM).
    Nothing a screen returns is a view of it."""
    buf = getattr(owner, "_scores", None)
    if buf is None or buf.numel() < rows * cols or buf.device != torch.device(device):
        buf = owner._scores = torch.empty(rows * cols, dtype=torch.float32, device=device)
    return buf[: rows * cols].view(rows, cols)


def _best_two(scores: torch.Tensor, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(best value, its column, runner-up value)`` of each row; ``scores`` is overwritten. Two max passes: three
    times faster than ``topk(2)`` on the CPU; the second without indices (``amax``: 29 us against 126 us for a
    4096 x 100 float32 block on the 2-core Xeon). Which of tied columns is "best" does not matter: a tie is within
    any bound, so the row is unsure and scored in float64."""
    pick, extreme = (torch.max, torch.amax) if largest else (torch.min, torch.amin)
    v1, i1 = pick(scores, dim=1)
    if scores.shape[1] < 2:
        return v1, i1, torch.full_like(v1, -torch.inf if largest else torch.inf)
    scores.scatter_(1, i1[:, None], -torch.inf if largest else torch.inf)
    return v1, i1, extreme(scores, dim=1)


class Float32Screen:
    """Nearest class center and classifier argmax of float32 rows, computed in float32 with an error bound.

    For a float32 row ``h`` and a float64 column ``c`` (a class mean or a classifier row), the float32 product of
    ``h`` with ``c`` rounded to float32 differs from the exact ``h . c`` by at most ``(d+2) u / (1 - (d+2) u)
    ||h|| ||c||`` (u = 2^-24; the rounding of ``c`` plus a dot product of d terms, in any summation order, with or
    without FMA; Higham, Accuracy and Stability, 3.1) plus ``(d + sqrt(d) ||h||) 2^-149`` for underflow (rows whose
    float32 norm is below 1e-15 are not screened). The float64 score of the
    original computation is within ``(d+2) 2^-53 ||h|| ||c||`` of the exact one. The screen's own float32 arithmetic
    on the scores (rounding ``||mu_c||^2`` and ``b`` to float32, one subtraction or addition) adds at most ``2^-23``
    times the magnitudes involved. A row's decision is taken from the float32 scores only when the runner-up (found
    by two max passes over the scores, :func:`_best_two`) trails the best by more than twice the sum of these
    bounds (doubled again for safety); then the float64 computation makes the same decision. Other rows are
    returned as ``unsure``. Keeping the scores in float32 matters at a 32k-way head, where the block's score matrix
    dominates pass 2 (casting it to float64 and scanning it three times took longer than the product itself).
    """

    def __init__(self, cols: torch.Tensor, sq: torch.Tensor, K: int, bias: torch.Tensor | None, *,
                 rounded_input: bool = False):
        self.K = K
        d = cols.shape[0]
        self.rounded_input = rounded_input
        self.gamma = _gamma(d, rounded_input)
        norms = torch.linalg.vector_norm(cols, dim=0)
        # underflowing products and sums; float64 rows rounded to float32 subnormals move a product by at most
        # sqrt(d) 2^-150 ||c|| more
        self.tiny = 2.0 * d * 2.0**-149 + (math.sqrt(d) * 2.0**-149 * float(norms.max()) if rounded_input and
                                           len(norms) else 0.0)
        self.tiny_h = 2.0 * math.sqrt(d) * 2.0**-149  # times ||h||: columns that round to float32 subnormals
        self.cols32 = cols.to(torch.float32)
        self.usable = bool(torch.isfinite(self.cols32).all()) and bool(torch.isfinite(norms).all())
        self.sq32 = sq.to(torch.float32)
        self.mean_norm = float(norms[:K].max()) if K else 0.0
        self.w_norm = float(norms[K:].max()) if cols.shape[1] > K else 0.0
        self.sq_max = float(sq.abs().max()) if K else 0.0
        self.bias32 = None if bias is None else bias.to(torch.float32)
        self.b_max = 0.0 if bias is None else float(bias.abs().max())
        self.has_w = cols.shape[1] > K

    def __call__(self, block: torch.Tensor):
        # long: one block's scores, both decisions and their bounds, kept together so that the bound of each
        # decision sits next to the arithmetic it bounds.
        if not self.usable or self.K < 2 or (self.has_w and self.cols32.shape[1] - self.K < 2):
            return None
        hn = _row_norms(block, max(self.mean_norm, self.w_norm))
        if hn is None:
            return None  # float32 products could overflow (or a norm did): score this block in float64
        tiny_rows = hn < 1.001e-15  # float32 squares may have underflowed: these rows are scored in float64
        s = torch.matmul(block, self.cols32, out=_scratch(self, len(block), self.cols32.shape[1], block.device))
        eps = 2.0**-23  # float32 arithmetic on the scores: each operation rounds by at most this, relative
        K = self.K
        tiny = self.tiny + self.tiny_h * hn
        # nearest center: D_c = ||mu_c||^2 - 2 h.mu_c (in float32), smallest wins; unsure when the runner-up is
        # within twice the bound of the products plus the float32 rounding of ||mu_c||^2 and of the subtraction
        dist = s[:, :K].mul_(-2.0).add_(self.sq32)  # in place: at a 32k-way head the scores are the memory
        best, ncc, second = _best_two(dist, largest=False)
        bound = 2 * (self.gamma * hn * self.mean_norm + tiny) + 2 * eps * (self.sq_max + 2 * hn * self.mean_norm)
        unsure = (second - best).double() <= 2 * bound
        unsure |= tiny_rows
        model = None
        if self.has_w:
            logit = s[:, K:] if self.bias32 is None else s[:, K:].add_(self.bias32)
            best, model, second = _best_two(logit)
            bound = (self.gamma * hn * self.w_norm + tiny) + 2 * eps * (self.b_max + hn * self.w_norm)
            unsure |= (best - second).double() <= 2 * bound
        return ncc, model, torch.nonzero(unsure).flatten()


class ClassifierScreen:
    """``argmax_c (W h + b)_c`` of float32 rows over every row of a :class:`Classifier`, in float32, ``rows`` of W
    at a time: the best and the runner-up of each block are merged into the running pair (the earlier row wins a
    tie), and a row is unsure, as in :class:`Float32Screen`, when the runner-up is within twice the bound."""

    rounded_input = False  # it scores float32 rows only (pass 2's _decide asks every screen)

    def __init__(self, classifier: Classifier, rows: int):
        self.classifier = classifier
        self.rows = max(1, rows)
        d = classifier.dim
        self.gamma = _gamma(d)
        self.tiny = 2.0 * d * 2.0**-149
        self.tiny_h = 2.0 * math.sqrt(d) * 2.0**-149
        norm = classifier.max_norm
        self.usable = classifier.V >= 2 and math.isfinite(norm) and norm < 1e30 and classifier.b_max < 1e30

    def __call__(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(classes, unsure rows)``, or None when this block must be scored in float64."""
        c = self.classifier
        hn = _row_norms(block, c.max_norm) if self.usable else None
        if hn is None:
            return None
        best = torch.full((len(block),), -torch.inf, device=block.device)
        second = best.clone()
        arg = torch.zeros(len(block), dtype=torch.long, device=block.device)
        for s, w, b in c.blocks32(self.rows):
            scores = torch.matmul(block, w.T, out=_scratch(self, len(block), len(w), block.device))
            if b is not None:
                scores += b
            v1, i1, v2 = _best_two(scores)
            i1 = i1 + s
            take = v1 > best
            second = torch.where(take, torch.maximum(best, v2), torch.maximum(second, v1))
            arg = torch.where(take, i1, arg)
            best = torch.where(take, v1, best)
        eps = 2.0**-23
        bound = (self.gamma * hn * c.max_norm + self.tiny + self.tiny_h * hn) + 2 * eps * (c.b_max + hn * c.max_norm)
        unsure = ((best - second).double() <= 2 * bound) | (hn < 1.001e-15)
        return arg, torch.nonzero(unsure).flatten()
