"""Class names shared by every stage: chromosome types and polarity.

Type indices are 0-based as in the paper's labels (0-21 autosomes 1-22, 22 = X, 23 = Y);
polarity index 1 means the q-arm points down (the karyogram orientation).
"""

TYPE_NAMES = [str(i) for i in range(1, 23)] + ["X", "Y"]
N_TYPES = len(TYPE_NAMES)
X_INDEX = 22
Y_INDEX = 23
# The Denver groups (ISCN): by size and centromere position, X with C and Y with G.
DENVER_GROUPS = {"A": (1, 2, 3), "B": (4, 5), "C": (6, 7, 8, 9, 10, 11, 12, "X"),
                 "D": (13, 14, 15), "E": (16, 17, 18), "F": (19, 20), "G": (21, 22, "Y")}
POLARITY_NAMES = ["q-arm up", "q-arm down"]
Q_ARM_DOWN = 1


def type_index(name):
    """0-based index of a type given as '1'-'22', 'X' or 'Y' (or a 1-24 label)."""
    text = str(name).strip().upper()
    if text in TYPE_NAMES:
        return TYPE_NAMES.index(text)
    if text.isdigit() and 1 <= int(text) <= 24:
        return int(text) - 1
    raise ValueError(f"unknown chromosome type {name!r}: expected 1-22, X or Y")


def denver_group(index):
    """The Denver group letter (A-G) of a 0-based type index."""
    name = TYPE_NAMES[index]
    return next(g for g, members in DENVER_GROUPS.items() if name in map(str, members))
