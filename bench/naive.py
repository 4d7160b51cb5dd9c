"""A straightforward NC1-NC4 in the style of the published neural-collapse reference scripts (the notebook that
accompanies Papyan, Han & Donoho 2020 and the many scripts derived from it): two passes over a loader of batches;
per batch and class, the within-class covariance as a sum of per-sample outer products (``z.unsqueeze(-1) @
z.unsqueeze(1)``), and the nearest-class-center rule as a per-sample list of distances. ``bench/run.py`` compares
nc-probe's vectorised, streaming engine against it; it also cross-checks nc-probe's numbers.
"""

from __future__ import annotations

import numpy as np
import torch


def naive_nc(H: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, batch_size: int = 128) -> dict[str, float]:
    H = torch.as_tensor(H, dtype=torch.float64)
    y = torch.as_tensor(y)
    W = torch.as_tensor(W, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    C, d = W.shape
    batches = [(H[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    mean = [torch.zeros(d, dtype=torch.float64) for _ in range(C)]
    counts = [0] * C
    Sw = torch.zeros(d, d, dtype=torch.float64)
    net_correct = ncc_match = 0
    M_rows = torch.empty(0)  # the class means, set after the "Mean" pass, read by the "Cov" pass
    for computation in ("Mean", "Cov"):
        for h, target in batches:
            output = h @ W.T + b
            for c in range(C):
                idxs = (target == c).nonzero(as_tuple=True)[0]
                if len(idxs) == 0:
                    continue
                h_c = h[idxs, :]
                if computation == "Mean":
                    mean[c] += torch.sum(h_c, dim=0)
                    counts[c] += h_c.shape[0]
                else:
                    z = h_c - M_rows[c].unsqueeze(0)
                    cov = torch.matmul(z.unsqueeze(-1), z.unsqueeze(1))
                    Sw += torch.sum(cov, dim=0)
                    net_pred = torch.argmax(output[idxs, :], dim=1)
                    net_correct += int(sum(net_pred == target[idxs]))
                    scores = torch.stack([torch.norm(h_c[i, :] - M_rows, dim=1) for i in range(h_c.shape[0])])
                    ncc_match += int(sum(torch.argmin(scores, dim=1) == net_pred))
        if computation == "Mean":
            M_rows = torch.stack([m / n for m, n in zip(mean, counts)])
    N = sum(counts)
    Sw /= N
    mu_g = M_rows.mean(0)
    M = (M_rows - mu_g).T
    Sb = M @ M.T / C
    nc1 = float(torch.trace(Sw @ torch.linalg.pinv(Sb, hermitian=True)) / C)
    norms = M.norm(dim=0)
    cos = (M / norms).T @ (M / norms)
    iu = torch.triu_indices(C, C, 1)
    return {"nc1": nc1,
            "nc2_equinorm_M": float(norms.std(unbiased=False) / norms.mean()),
            "nc2_equiangle_M": float(cos[iu[0], iu[1]].std(unbiased=False)),
            "nc3": float(((W.T / W.norm() - M / M.norm()) ** 2).sum()),
            "nc4": 1 - ncc_match / N,
            "acc_model": net_correct / N}
