"""ISCN-style numerical karyotype of one cell, from its dispatched chromosome types.

Only whole-chromosome counts are described (no structural changes, no mosaicism):

- total count, then the sex chromosomes written out as X's then Y's:
  ``46,XX``, ``46,XY``, ``45,X``, ``47,XXY``, ``48,XXYY``;
- then one ``+k`` per extra copy and one ``-k`` per missing copy of each autosome k, in
  numerical order: ``47,XY,+21``, ``45,XX,-7``, ``48,XX,+13,+21``, ``48,XY,+21,+21``,
  ``44,XY,-7,-7``.

Not ISCN: when no X and no Y was found the sex field is ``?`` (``44,?``, ``45,?,+21``). It is
meant to be read as "no sex chromosome found", and ``parse_karyotype`` reads it back as
0 X and 0 Y, so every count vector round-trips.

``parse_karyotype`` is a little lenient: it ignores case and whitespace and accepts the
``+k``/``-k`` items in any order, but rejects a type that is both gained and lost, sex
chromosomes written as ``+X``/``-Y`` items, Y before X, and a total that does not match.
"""

import re

import numpy as np

from vfinfer.calls.dispatch import dispatch_counts
from vfinfer.model.classes import N_TYPES, TYPE_NAMES, X_INDEX, Y_INDEX

NO_SEX_CHROMOSOMES = "?"
REVIEW_NOTE = (
    "this is a suggestion from automatic classification and needs review by a cytogeneticist"
)
_SEX_RE = re.compile(r"X*Y*|\?")
_ITEM_RE = re.compile(r"([+-])(\d+)")


def _sex_field(n_x, n_y):
    if n_x == 0 and n_y == 0:
        return NO_SEX_CHROMOSOMES
    return "X" * n_x + "Y" * n_y


def karyotype_summary(types):
    """Numerical karyotype string and warnings for one cell.

    ``types``: 0-based type indices of the cell's chromosomes (e.g. from ``dispatch``).
    Returns ``(text, warnings)``; ``warnings`` is empty for ``46,XX`` and ``46,XY``, otherwise
    one warning naming each abnormal type and saying it needs review by a cytogeneticist.
    """
    counts = dispatch_counts(types)
    n_x, n_y = int(counts[X_INDEX]), int(counts[Y_INDEX])
    fields = [str(int(counts.sum())), _sex_field(n_x, n_y)]
    abnormal = []
    for k in range(X_INDEX):
        change = int(counts[k]) - 2
        if change:
            sign = "+" if change > 0 else "-"
            fields.extend([f"{sign}{TYPE_NAMES[k]}"] * abs(change))
            copies = "copy" if counts[k] == 1 else "copies"
            abnormal.append(f"chromosome {TYPE_NAMES[k]} ({counts[k]} {copies})")
    if (n_x, n_y) not in ((2, 0), (1, 1)):
        sex = "none found" if fields[1] == NO_SEX_CHROMOSOMES else fields[1]
        abnormal.insert(0, f"sex chromosomes ({sex})")
    text = ",".join(fields)
    if counts.sum() == 0:
        return text, ["no chromosomes"]
    if not abnormal:
        return text, []
    return text, [f"Possible numerical abnormality: {', '.join(abnormal)}; {REVIEW_NOTE}."]


def parse_karyotype(text):
    """Counts of the 24 types (0-based, X = 22, Y = 23) from a numerical karyotype string.

    Reads what ``karyotype_summary`` writes (``46,XX``, ``47,XY,+21``, ``45,X``, ``48,XXYY``,
    ``44,?`` ...). Raises ValueError, saying what is wrong, on any other text (TypeError if
    ``text`` is not a string).
    """
    if not isinstance(text, str):
        raise TypeError(f"karyotype must be a string, got {type(text).__name__}")
    clean = "".join(text.split()).upper()
    fields = clean.split(",")
    if len(fields) < 2 or not fields[0].isdigit():
        raise ValueError(
            f"bad karyotype {text!r}: expected 'total,sex[,+k|-k...]' such as '47,XY,+21'"
        )
    if not _SEX_RE.fullmatch(fields[1]) or not fields[1]:
        raise ValueError(
            f"bad karyotype {text!r}: sex chromosomes must be X's then Y's (e.g. XX, XY, X, XXY)"
            f" or '?', got {fields[1]!r}"
        )
    counts = np.full(N_TYPES, 2, dtype=np.int64)
    counts[X_INDEX] = fields[1].count("X")
    counts[Y_INDEX] = fields[1].count("Y")
    signs = {}
    for item in fields[2:]:
        match = _ITEM_RE.fullmatch(item)
        if not match:
            raise ValueError(
                f"bad karyotype {text!r}: item {item!r} is not '+k' or '-k' with k in 1-22"
            )
        sign, number = match.group(1), int(match.group(2))
        if not 1 <= number <= X_INDEX:
            raise ValueError(f"bad karyotype {text!r}: autosome {number} is not in 1-22")
        if signs.setdefault(number, sign) != sign:
            raise ValueError(f"bad karyotype {text!r}: chromosome {number} is both gained and lost")
        counts[number - 1] += 1 if sign == "+" else -1
        if counts[number - 1] < 0:
            raise ValueError(f"bad karyotype {text!r}: more than two losses of chromosome {number}")
    total = int(fields[0])
    if total != counts.sum():
        raise ValueError(
            f"bad karyotype {text!r}: total {total} does not match the {counts.sum()} "
            "chromosomes described"
        )
    return counts
