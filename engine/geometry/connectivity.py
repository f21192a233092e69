"""Face connectivity of voxel phases, with wrap-around on periodic axes (scipy.ndimage)."""

from __future__ import annotations

import numpy as np


def periodic_components(mask, periodic=(True, True, False)):
    """Face-connected components of ``mask`` with wrap-around on the periodic axes.

    Returns ``(labels, n)``: int32 array with 0 outside and 1..n inside.
    """
    from scipy import ndimage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    mask = np.asarray(mask, bool)
    lab, n = ndimage.label(mask)
    if n == 0:
        return lab.astype(np.int32), 0
    rows, cols = [], []
    for a, per in enumerate(periodic[: mask.ndim]):
        if not per:
            continue
        lo, hi = lab.take(0, axis=a), lab.take(-1, axis=a)
        both = (lo > 0) & (hi > 0)
        rows.append(lo[both])
        cols.append(hi[both])
    if rows:
        r = np.concatenate(rows)
        c = np.concatenate(cols)
        graph = coo_matrix((np.ones(r.size), (r, c)), shape=(n + 1, n + 1))
        _, comp = connected_components(graph, directed=False)
        used, comp = np.unique(comp[1:], return_inverse=True)
        lut = np.concatenate([[0], comp + 1]).astype(np.int32)
        return lut[lab], int(used.size)
    return lab.astype(np.int32), int(n)


def percolating_fraction(mask, axis, periodic=(True, True, False)):
    """Fraction of ``mask`` voxels in clusters touching both faces normal to ``axis``
    (0 if none, or if the phase is absent). The test axis is never wrapped."""
    mask = np.asarray(mask, bool)
    total = np.count_nonzero(mask)
    if total == 0:
        return 0.0
    per = tuple(bool(p) and a != axis for a, p in enumerate(periodic[: mask.ndim]))
    lab, n = periodic_components(mask, per)
    lo = np.unique(lab.take(0, axis=axis))
    hi = np.unique(lab.take(-1, axis=axis))
    span = np.intersect1d(lo[lo > 0], hi[hi > 0])
    if span.size == 0:
        return 0.0
    return float(np.count_nonzero(np.isin(lab, span))) / total
