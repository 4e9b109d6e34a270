"""Per-cell type assignment: the dispatch strategy of Algorithm 1 (Qin et al. 2019, Sec. II-D).

The paper dispatches chromosomes twice. The first pass gives each chromosome its most probable
type (Alg. 1 lines 2-4). The second pass looks at each type k that got more chromosomes than a
normal cell holds (S = 2, or S = 1 for Y), keeps the most probable ones and moves the rest to
their second most probable type (lines 5-16). Then it warns about every type whose final count
is not normal (line 17).

Indices here are 0-based (see ``vfinfer.model.classes``): the paper's type k = 1..24 is index k - 1,
so Y (paper's k = 24) is ``Y_INDEX`` = 23.

Points the paper leaves open, and how they are settled here:

- Order of types: one pass over k = 1..24 in order (indices 0..23), as in line 5.
- Sorting in line 8: by P_ik descending; ties keep chromosome order (lower row index first), i.e.
  a stable sort.
- Threshold in line 8: the extra (S+1)-th chromosome is kept only if every one of the top S+1
  has P_ik strictly greater than ``threshold`` (a probability equal to it does not count).
- Second choice in line 11: argmax over j != k, where only k is excluded; on a tie the lowest
  type index wins (as with ``np.argmax``). The same lowest-index rule breaks ties in line 3.
- No cascade: T_k comes from the first pass only. A chromosome moved to its second choice j*
  goes straight into O_j* and is never re-checked against j*'s capacity, even when j* comes
  later in the loop; so a type can end with more than S (+1) chromosomes.
- Warnings (line 17) use the final sets O_k, so moved chromosomes count for their new type.
  One warning per autosome with |O_k| != 2, one if |O_X| + |O_Y| != 2.
- Input: an N x 24 array of finite numbers. Rows are not checked to sum to 1: the argmax steps
  only need scores, and only the threshold assumes probabilities. N = 0 gives an empty result
  and the single warning ``"no chromosomes"``.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
from numpy.typing import ArrayLike

from vfinfer.model.classes import N_TYPES, TYPE_NAMES, X_INDEX, Y_INDEX

NORMAL_AUTOSOME_COUNT = 2
NORMAL_SEX_COUNT = 2


def check_probs(probs: ArrayLike) -> np.ndarray:
    """Return ``probs`` as a float64 (N, 24) array, or raise ValueError.

    Parameters
    ----------
    probs : array_like
        (N, 24) scores, one row per chromosome; N may be 0.

    Returns
    -------
    np.ndarray
        (N, 24) float64.

    Raises
    ------
    ValueError
        Not numeric, not (N, 24), or with NaN or infinite values (the rows are named).
    """
    try:
        arr = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"probabilities must be numeric: {exc}") from None
    if arr.ndim != 2 or arr.shape[1] != N_TYPES:
        raise ValueError(
            f"probabilities must be an N x {N_TYPES} array (one row per chromosome), "
            f"got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        bad = np.unique(np.nonzero(~np.isfinite(arr))[0])
        raise ValueError(f"probabilities must be finite; rows with NaN or inf: {bad.tolist()}")
    return arr


def argmax_types(probs: ArrayLike) -> np.ndarray:
    """Most probable type of each chromosome: Algorithm 1 lines 2-4 only, no dispatch.

    Parameters
    ----------
    probs : array_like
        (N, 24) type probabilities of one cell, one row per chromosome.

    Returns
    -------
    np.ndarray
        (N,) int64 0-based type indices (``vfinfer.model.classes.TYPE_NAMES``); ties go to
        the lowest index.

    Raises
    ------
    ValueError
        ``probs`` is not a finite (N, 24) array (``check_probs``).
    """
    return np.argmax(check_probs(probs), axis=1).astype(np.int64)


def dispatch_counts(types: ArrayLike) -> np.ndarray:
    """Number of chromosomes of each of the 24 types.

    Parameters
    ----------
    types : array_like
        (N,) integer 0-based type indices in 0..23 (as ``dispatch`` returns); N may be 0.

    Returns
    -------
    np.ndarray
        (24,) int64 counts, index k for type k.

    Raises
    ------
    ValueError
        ``types`` is not 1-D, not integer, or out of 0..23.
    """
    arr = np.asarray(types)
    if arr.ndim != 1:
        raise ValueError(f"types must be a 1-D array of type indices, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(N_TYPES, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"types must be integers, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= N_TYPES:
        raise ValueError(f"type indices must be in 0..{N_TYPES - 1}, got {arr.min()}..{arr.max()}")
    return np.bincount(arr, minlength=N_TYPES).astype(np.int64)


def _second_choice(row: np.ndarray, k: int) -> int:
    """Alg. 1 line 11: argmax over j != k (lowest index on ties)."""
    masked = row.copy()
    masked[k] = -np.inf
    return int(np.argmax(masked))


def count_warnings(counts: Union[np.ndarray, Sequence[int]]) -> list[str]:
    """Algorithm 1 line 17: warnings for autosomes with a count != 2 and for X + Y != 2.

    Parameters
    ----------
    counts : np.ndarray or sequence of int
        (24,) chromosomes per type (``dispatch_counts``).

    Returns
    -------
    list of str
        One plain-English warning per autosome whose count is not 2, then one when X + Y is
        not 2; empty for a normal cell.
    """
    warnings = []
    for k in range(X_INDEX):
        if counts[k] != NORMAL_AUTOSOME_COUNT:
            warnings.append(
                f"chromosome {TYPE_NAMES[k]}: {counts[k]} found, {NORMAL_AUTOSOME_COUNT} expected"
            )
    n_x, n_y = counts[X_INDEX], counts[Y_INDEX]
    if n_x + n_y != NORMAL_SEX_COUNT:
        warnings.append(
            f"sex chromosomes: {n_x + n_y} found (X: {n_x}, Y: {n_y}), {NORMAL_SEX_COUNT} expected"
        )
    return warnings


def dispatch(probs: ArrayLike, threshold: float = 0.9) -> tuple[np.ndarray, list[str]]:
    """Assign each chromosome of one cell to a type with Algorithm 1 of the paper (Qin et
    al. 2019, Sec. II-D): argmax first, then each over-full type keeps its most probable
    chromosomes and sends the others to their second choice.

    See the module docstring for how the points the paper leaves open are settled.

    Parameters
    ----------
    probs : array_like
        (N, 24) predicted type probabilities, one row per chromosome of the cell.
    threshold : float
        The paper's confidence threshold th (0.9 in Sec. III-C): a type keeps one chromosome
        over its normal count when all of its top S + 1 have a probability above it.

    Returns
    -------
    types : np.ndarray
        (N,) int64 0-based type indices: chromosome i is in O_{types[i]}.
    warnings : list of str
        Plain-English count warnings (line 17); ``["no chromosomes"]`` when N = 0.

    Raises
    ------
    ValueError
        ``probs`` is not a finite (N, 24) array, or ``threshold`` is not a number.
    """
    p = check_probs(probs)
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number, got {threshold!r}") from None
    if np.isnan(threshold):
        raise ValueError("threshold must be a number, got NaN")
    if p.shape[0] == 0:
        return np.empty(0, dtype=np.int64), ["no chromosomes"]

    first = np.argmax(p, axis=1)  # lines 2-4: T_k = {i : first[i] == k}
    types = first.astype(np.int64)  # O_k starts as T_k; only moved chromosomes change
    for k in range(N_TYPES):  # line 5
        capacity = 1 if k == Y_INDEX else 2  # line 6: S
        members = np.flatnonzero(first == k)  # T_k, in chromosome order
        if members.size <= capacity:  # lines 13-14: O_k = O_k U T_k
            continue
        # line 8: sort T_k by P_ik descending (stable: lower index first on ties)
        ranked = members[np.argsort(-p[members, k], kind="stable")]
        extra_ok = bool(np.all(p[ranked[: capacity + 1], k] > threshold))
        n_keep = capacity + 1 if extra_ok else capacity  # |Q_k|; line 9 keeps Q_k in O_k
        for i in ranked[n_keep:]:  # lines 10-12: T_k \ Q_k to second choice, no cascade
            types[i] = _second_choice(p[i], k)
    return types, count_warnings(dispatch_counts(types))
