"""Class names shared by every stage: chromosome types and polarity.

Type indices are 0-based as in the paper's labels (0-21 autosomes 1-22, 22 = X, 23 = Y);
polarity index 1 means the q-arm points down (the karyogram orientation).
"""

TYPE_NAMES = [str(i) for i in range(1, 23)] + ["X", "Y"]
N_TYPES = len(TYPE_NAMES)
X_INDEX = 22
Y_INDEX = 23
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
