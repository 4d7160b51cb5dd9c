"""Float32 screening of pass 2's decisions, with a rigorous bound on the rounding (see :class:`Float32Screen`)."""

from __future__ import annotations

import math

import numpy as np
import torch


class Float32Screen:
    """Nearest class center and classifier argmax of float32 rows, computed in float32 with an error bound.

    For a float32 row ``h`` and a float64 column ``c`` (a class mean or a classifier row), the float32 product of
    ``h`` with ``c`` rounded to float32 differs from the exact ``h . c`` by at most ``(d+2) u / (1 - (d+2) u)
    ||h|| ||c||`` (u = 2^-24; the rounding of ``c`` plus a dot product of d terms, in any summation order, with or
    without FMA; Higham, Accuracy and Stability, 3.1) plus ``(d + sqrt(d) ||h||) 2^-149`` for underflow (rows whose
    float32 norm is below 1e-15 are not screened). The float64 score of the
    original computation is within ``(d+2) 2^-53 ||h|| ||c||`` of the exact one, and the final float64 subtraction
    or addition within ``2^-52`` of the magnitudes involved. A row's decision is taken from the float32 scores only
    when the runner-up trails the best by more than twice the sum of these bounds (doubled again for safety);
    then the float64 computation makes the same decision. Other rows are returned as ``unsure``.
    """

    def __init__(self, cols: torch.Tensor, sq: torch.Tensor, K: int, bias: torch.Tensor | None):
        self.K = K
        d = cols.shape[0]
        u = 2.0**-24
        self.gamma = 2.0 * ((d + 2) * u / (1 - (d + 2) * u) + (d + 2) * 2.0**-53)
        self.tiny = 2.0 * d * 2.0**-149  # underflowing products and sums
        self.tiny_h = 2.0 * math.sqrt(d) * 2.0**-149  # times ||h||: columns that round to float32 subnormals
        self.cols32 = cols.to(torch.float32)
        norms = torch.linalg.vector_norm(cols, dim=0)
        self.usable = bool(torch.isfinite(self.cols32).all()) and bool(torch.isfinite(norms).all())
        self.sq = sq.numpy()
        self.mean_norm = float(norms[:K].max()) if K else 0.0
        self.w_norm = float(norms[K:].max()) if cols.shape[1] > K else 0.0
        self.sq_max = float(sq.abs().max()) if K else 0.0
        self.bias = None if bias is None else bias.numpy()
        self.b_max = 0.0 if bias is None else float(bias.abs().max())
        self.has_w = cols.shape[1] > K

    def __call__(self, block: torch.Tensor):
        if not self.usable:
            return None
        f = block.numpy()
        hn = np.sqrt(np.einsum("ij,ij->i", f, f).astype(np.float64))
        if not len(hn) or not hn.max() * max(self.mean_norm, self.w_norm, 1.0) < 1e30:
            return None  # float32 products could overflow (or a norm did): score this block in float64
        tiny_rows = hn < 1e-15  # float32 squares may have underflowed: these rows are scored in float64
        hn *= 1.001  # the float32 sum of squares is within (d u) of the exact one: an upper bound of ||h||
        s = (block @ self.cols32).numpy().astype(np.float64)
        eps = 2.0**-52
        K = self.K
        rows = np.arange(len(f))
        tiny = self.tiny + self.tiny_h * hn
        # nearest center: D_c = ||mu_c||^2 - 2 h.mu_c, smallest wins; unsure when another D_c is within 2 bounds
        dist = self.sq - 2 * s[:, :K]
        ncc = dist.argmin(1)
        bound = 2 * (self.gamma * hn * self.mean_norm + tiny) + 2 * eps * (self.sq_max + 2 * hn * self.mean_norm)
        unsure = np.count_nonzero(dist <= (dist[rows, ncc] + 2 * bound)[:, None], axis=1) > 1
        unsure |= tiny_rows
        model = None
        if self.has_w:
            logit = s[:, K:] if self.bias is None else s[:, K:] + self.bias
            model = logit.argmax(1)
            bound = (self.gamma * hn * self.w_norm + tiny) + 2 * eps * (self.b_max + hn * self.w_norm)
            unsure |= np.count_nonzero(logit >= (logit[rows, model] - 2 * bound)[:, None], axis=1) > 1
            model = torch.from_numpy(model)
        return torch.from_numpy(ncc), model, torch.from_numpy(np.flatnonzero(unsure))
