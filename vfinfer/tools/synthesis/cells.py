"""Synthetic G-banded chromosome images, laid out like the Pki-3 style data.

Each of the 24 types gets its real relative length and centromere index and a fixed, made-up
banding signature (deterministic from the type index), so that a classifier has to use length,
centromere position and bands together. Every rendered image then varies in size, width,
bending, rotation, band contrast, texture, blur and noise. Images are 8-bit grayscale, dark
bands on a white (255) background, chromosome upright with the p-arm at the top (q-arm down).

- ``render_chromosome(type_index, rng, scale=1.0)``: one image (uint8 array).
- ``write_cases(karyotype, out_dir, seed, cases=1, flip_polarity=0.0)``: whole cells written as
  ``out_dir/<case>/<case>_<nn>.png`` plus rows in ``out_dir/labels.csv``
  (``cell,slide,file,type,polarity``; type 1-24, polarity 1 = q-arm down).
- ``make_training_set(out_dir, seed, n_cases)``: a mix of normal and abnormal cells for a demo.

The bands are synthetic: they are not the real ISCN band patterns, only a stand-in with the
right kind of structure. Nothing here is derived from real images.
"""

import csv
import io
import os
import re

import cv2
import numpy as np

from vfinfer.model.classes import N_TYPES
from vfinfer.util.atomic import write_atomic
from vfinfer.util.images import encode_png

# Relative length (% of the haploid autosomal length) and centromere index (p-arm / total) of
# each type, in type-index order (0-21 = chromosomes 1-22, 22 = X, 23 = Y). Standard published
# figures, approximate: the Paris Conference (1971) / ISCN relative lengths and centromere
# indices of mitotic chromosomes as tabulated in human genetics textbooks (e.g. Thompson &
# Thompson). For the acrocentrics the index is taken at the low end of the published range
# (the short arm without its stalk and satellite); Y varies between people.
_FACTS_TABLE = """
type  rel. length  centromere index  (note)
1     8.44         0.48              metacentric
2     8.02         0.39              submetacentric
3     6.83         0.47              metacentric
4     6.30         0.29              submetacentric
5     6.08         0.29              submetacentric
6     5.90         0.39
7     5.36         0.39
8     4.93         0.34
9     4.80         0.35
10    4.59         0.33
11    4.61         0.40
12    4.66         0.30
13    3.74         0.17              acrocentric
14    3.56         0.18              acrocentric
15    3.46         0.20              acrocentric
16    3.36         0.41
17    3.25         0.34
18    2.93         0.31
19    2.67         0.47              metacentric
20    2.56         0.45              metacentric
21    1.90         0.20              acrocentric
22    2.04         0.20              acrocentric
X     5.12         0.40              submetacentric
Y     2.15         0.30
"""
CHROMOSOME_FACTS = {t: (float(row[1]), float(row[2])) for t, row in enumerate(
    line.split() for line in _FACTS_TABLE.strip().splitlines()[1:])}
RELATIVE_LENGTH = np.array([CHROMOSOME_FACTS[t][0] for t in range(N_TYPES)])
CENTROMERE_INDEX = np.array([CHROMOSOME_FACTS[t][1] for t in range(N_TYPES)])

# Pixels per percent of haploid autosomal length at scale 1: chromosome 1 comes out about
# 120 px tall and 21 about 27 px, as in the real cut-outs.
PX_PER_PERCENT = 14.0
# Mean width of one band (light or dark), in percent of haploid length (about a 300-400 band
# level at this resolution).
_BAND_WIDTH = 0.36
_PROFILE_SAMPLES = 512
_BACKGROUND = 255
_PROFILE_POS = ((np.arange(_PROFILE_SAMPLES) + 0.5) / _PROFILE_SAMPLES).astype(np.float32)

DEFAULT_KARYOTYPES = (
    ("46,XX", 0.36),
    ("46,XY", 0.36),
    ("47,XX,+21", 0.05),
    ("47,XY,+21", 0.05),
    ("47,XY,+18", 0.03),
    ("47,XX,+18", 0.03),
    ("47,XX,+13", 0.02),
    ("47,XY,+13", 0.02),
    ("45,X", 0.04),
    ("47,XXY", 0.04),
)


def _arm_segments(rs, arm_length, centromere_end):
    """Band darkness values and widths for one arm, from its telomere to the centromere."""
    n = max(1 if arm_length < 1.0 else 2, round(arm_length / _BAND_WIDTH))
    widths = rs.gamma(3.0, 1.0, size=n)
    widths *= arm_length / widths.sum()
    dark = np.empty(n)
    for i in range(n):
        if i % 2 == 0:  # light bands (telomeres are light in G-banding)
            dark[i] = rs.uniform(0.05, 0.35)
        else:
            dark[i] = rs.uniform(0.55, 1.0)
    if centromere_end and n > 1:
        dark[-1] = max(dark[-1], rs.uniform(0.4, 0.8))  # pericentromeric region
    return dark, widths


# Chromosome 22 drawn after its ISCN G-band pattern rather than at random: a pale long arm
# with one dark band (22q12) and one grey band (22q13.1) below the grey pericentromeric
# region and the stalk. Drawn at random, its profile came out close to 21's (correlation
# 0.83), which real 21 and 22 are not (21's q arm carries one wide dark band, 22's is mostly
# pale). (start, end, darkness) from the p-arm end (0) to the q-arm end (1); 0.12 elsewhere.
_CHR22_BANDS = ((0.0, 0.17, 0.3), (0.17, 0.24, 0.55), (0.32, 0.44, 0.9), (0.68, 0.76, 0.45))
_CHR22 = 21


def _random_bands(type_index):
    """A made-up band pattern of one type: darkness per evenly spaced position."""
    rs = np.random.RandomState(1000 + type_index)
    length, ci = CHROMOSOME_FACTS[type_index]
    p_dark, p_w = _arm_segments(rs, length * ci, True)
    q_dark, q_w = _arm_segments(rs, length * (1.0 - ci), True)
    dark = np.concatenate([p_dark, q_dark[::-1]])
    widths = np.concatenate([p_w, q_w[::-1]])
    edges = np.concatenate([[0.0], np.cumsum(widths)]) / length
    pos = (np.arange(_PROFILE_SAMPLES) + 0.5) / _PROFILE_SAMPLES
    idx = np.clip(np.searchsorted(edges, pos, side="right") - 1, 0, len(dark) - 1)
    return dark[idx]


def _drawn_bands(bands):
    """A band pattern given as (start, end, darkness) ranges on a pale (0.12) chromosome."""
    profile = np.full(_PROFILE_SAMPLES, 0.12)
    for start, end, darkness in bands:
        profile[(_PROFILE_POS >= start) & (_PROFILE_POS < end)] = darkness
    return profile


def _make_signature(type_index):
    """Fixed band profile of one type: darkness (0 light - 1 dark) at evenly spaced positions
    from the p-arm end (0) to the q-arm end (1)."""
    profile = (_drawn_bands(_CHR22_BANDS) if type_index == _CHR22
               else _random_bands(type_index))
    # soften band edges a little (band-boundary blur at the profile's own resolution)
    k = cv2.getGaussianKernel(15, 2.5).ravel()
    profile = np.convolve(np.pad(profile, 7, mode="edge"), k, mode="valid")
    return profile.astype(np.float32)


BAND_SIGNATURES = np.stack([_make_signature(t) for t in range(N_TYPES)])


def _as_rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _bend(rng, length):
    """Centre-line offset c(y) and slope c'(y) on a 1-D grid of y in [-L/2, L/2]."""
    y = np.linspace(-0.5, 0.5, 64)
    amp = min(1.0, length / 60.0)
    bow = rng.normal(0.0, 0.18) * amp
    wave = rng.normal(0.0, 0.035) * amp
    c = bow * (y * y - 1.0 / 12.0) + wave * np.sin(2.0 * np.pi * y + rng.uniform(0, np.pi))
    if rng.random() < 0.2:  # a knee somewhere along the chromosome
        y0 = rng.uniform(-0.3, 0.3)
        slope = rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.7) * amp
        soft = 0.04
        c = c + slope * soft * np.logaddexp(0.0, (y - y0) / soft)
    c = c - np.polyval(np.polyfit(y, c, 1), y)  # keep the overall axis upright
    c *= length
    dc = np.gradient(c, y * length)
    return (y * length).astype(np.float32), c.astype(np.float32), dc.astype(np.float32)


def render_chromosome(type_index, rng, scale=1.0, stain=1.0):
    """One synthetic G-banded chromosome of type ``type_index`` (0-23), q-arm down.

    ``rng``: numpy Generator (or a seed). ``scale``: overall size (condensation), 1.0 gives
    chromosome 1 about 120 px tall; each image adds +-10% on top. ``stain``: darkness factor.
    Returns a 2-D uint8 array, white (255) background, tightly cropped with a small margin.
    """
    if not 0 <= int(type_index) < N_TYPES:
        raise ValueError(f"type_index must be 0-{N_TYPES - 1}, got {type_index}")
    t = int(type_index)
    rng = _as_rng(rng)
    rel_len, ci = CHROMOSOME_FACTS[t]
    length = rel_len * PX_PER_PERCENT * scale * rng.uniform(0.9, 1.1) - 3.0
    width = (10.0 + 0.065 * length) * scale ** 0.25 * rng.uniform(0.88, 1.12)
    ci = float(np.clip(ci + rng.normal(0.0, 0.012), 0.1, 0.6))
    r, s = _chromosome_frame(rng, length, width)
    body, core = _chromatids(rng, r, s, length, width, ci)
    band = _band_profile(rng, t, s, length)
    img = _stained(rng, body, core, band, stain)
    return _tight_crop(rng, img)


def _chromosome_frame(rng, length, width):
    """Signed distance ``r`` from the bent axis and position ``s`` along it (0 at the p-arm
    end) for every pixel of an image holding the bent, slightly rotated chromosome."""
    ys, cs, dcs = _bend(rng, length)
    angle = float(np.clip(rng.normal(0.0, 4.0 + 120.0 / (length + 20.0)), -30.0, 30.0))
    theta = np.deg2rad(angle)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    half_w = width / 2.0 + float(np.abs(cs).max()) + 3.0
    half_h = length / 2.0 + 3.0
    out_hw = abs(cos_t) * half_w + abs(sin_t) * half_h
    out_hh = abs(sin_t) * half_w + abs(cos_t) * half_h
    nx, ny = int(np.ceil(2 * out_hw)) + 2, int(np.ceil(2 * out_hh)) + 2
    gx = np.arange(nx, dtype=np.float32) - (nx - 1) / 2.0
    gy = np.arange(ny, dtype=np.float32) - (ny - 1) / 2.0
    big_x, big_y = np.meshgrid(gx, gy)
    x = cos_t * big_x + sin_t * big_y  # inverse rotation into the chromosome frame
    y = -sin_t * big_x + cos_t * big_y
    c = np.interp(y, ys, cs)
    dc = np.interp(y, ys, dcs)
    return (x - c) / np.sqrt(1.0 + dc * dc), y + length / 2.0


def _chromatids(rng, r, s, length, width, ci):
    """Coverage ``body`` and centre weight ``core`` of two sister chromatids, each a rod with
    rounded ends, coming together at the centromere (at ``ci`` of the length)."""
    cw = 0.32 * width  # half-width of one chromatid
    off = width / 2.0 - cw  # chromatid axis offset from the chromosome axis
    g = np.exp(-(((s - ci * length) / (0.9 * cw + 0.6)) ** 2))
    off_s = off * (1.0 - 0.75 * g)
    cw_s = cw * (1.0 - rng.uniform(0.2, 0.35) * g)
    wobble = rng.normal(0.0, 0.07, size=8)  # width wobbles a little along the axis
    cw_s = cw_s * (1.0 + np.interp(s, np.linspace(0.0, length, 8), wobble))
    s_clip = np.clip(s, cw, length - cw)
    ds2 = (s - s_clip) ** 2
    edge = 0.9
    body = np.zeros_like(r)
    core = np.zeros_like(r)
    for sign in (-1.0, 1.0):
        dist = np.sqrt((r - sign * off_s) ** 2 + ds2)
        body = np.maximum(body, np.clip((cw_s - dist) / edge + 0.5, 0.0, 1.0))
        core = np.maximum(core, np.clip(1.0 - (dist / cw_s) ** 2, 0.0, 1.0))
    return body, core


def _band_profile(rng, t, s, length):
    """The type's band signature along the axis, with arm stretch, contrast and noise."""
    u = np.clip(s / length, 0.0, 1.0)
    u = u + rng.uniform(-0.025, 0.025) * np.sin(np.pi * u)
    contrast = rng.uniform(0.75, 1.15)
    jitter = rng.normal(0.0, 0.06, size=24).astype(np.float32)
    profile = np.clip(
        0.5 + contrast * (BAND_SIGNATURES[t] - 0.5)
        + np.interp(_PROFILE_POS, np.linspace(0, 1, 24), jitter), 0.0, 1.0)
    return np.interp(u, _PROFILE_POS, profile)


def _stained(rng, body, core, band, stain):
    """Gray image: blotchy texture, lighter edges, blur, camera noise, ragged outline."""
    ny, nx = body.shape
    tex_small = rng.normal(1.0, 0.26, size=(max(2, ny // 2), max(2, nx // 2))).astype(np.float32)
    texture = cv2.resize(tex_small, (nx, ny), interpolation=cv2.INTER_CUBIC)
    density = body * (0.22 + 0.78 * band) * (0.6 + 0.4 * core) * texture
    density *= stain * rng.uniform(0.9, 1.1) * 1.08
    sigma = rng.uniform(0.5, 0.9)
    density = cv2.GaussianBlur(density.astype(np.float32), (0, 0), sigma)
    mask = cv2.GaussianBlur(body.astype(np.float32), (0, 0), sigma)
    gray = 252.0 - 250.0 * np.clip(density, 0.0, 1.0)
    gray += rng.normal(0.0, 5.0, size=gray.shape)
    rough = rng.uniform(0.1, 0.3, size=gray.shape)  # ragged outline
    gray = np.where(mask > rough, np.clip(gray, 0.0, 250.0), _BACKGROUND)
    return gray.astype(np.uint8)


def _tight_crop(rng, img):
    """Crop to the chromosome with a small white margin."""
    rows = np.flatnonzero((img < _BACKGROUND).any(axis=1))
    cols = np.flatnonzero((img < _BACKGROUND).any(axis=0))
    margin = int(rng.integers(1, 3))
    out = np.full((rows[-1] - rows[0] + 1 + 2 * margin, cols[-1] - cols[0] + 1 + 2 * margin),
                  _BACKGROUND, dtype=np.uint8)
    out[margin:-margin, margin:-margin] = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return out


def _write_png(path, img):
    write_atomic(path, encode_png(img, what=str(path)))


def _karyotype_tag(karyotype):
    tag = re.sub(r"[^A-Za-z0-9+-]", "", karyotype.replace(",", ""))
    return tag or "cell"


LABEL_HEADER = ["cell", "slide", "file", "type", "polarity"]


def write_cases(karyotype, out_dir, seed, cases=1, flip_polarity=0.0):
    """Write ``cases`` synthetic cells of ``karyotype`` (e.g. ``"47,XY,+21"``) to ``out_dir``.

    Layout as the Pki-3 data: ``out_dir/<case>/<case>_<nn>.png`` (shuffled order, names carry
    no label) and rows ``cell,slide,file,type,polarity`` appended to ``out_dir/labels.csv``
    (created with its header if missing). ``slide`` is ``synth-<seed>`` for all cases of the
    call. A fraction ``flip_polarity`` of images is flipped vertically and labelled polarity 0.
    Every file is written atomically; an existing case directory raises ValueError.
    Deterministic given ``seed``. Returns the list of case names.
    """
    from vfinfer.calls.karyotype import parse_karyotype

    counts = parse_karyotype(karyotype)
    if not 0.0 <= float(flip_polarity) <= 1.0:
        raise ValueError(f"flip_polarity must be in [0, 1], got {flip_polarity}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    tag = _karyotype_tag(karyotype)
    names = [f"syn{seed}-{tag}-{k}" for k in range(int(cases))]
    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        if os.path.exists(os.path.join(out_dir, name)):
            raise ValueError(f"case directory {os.path.join(out_dir, name)} already exists")
    slide = f"synth-{seed}"
    types = np.repeat(np.arange(N_TYPES), counts)
    rows = []
    for k, name in enumerate(names):
        rng = np.random.default_rng([seed, k, 0x5EED])
        case_dir = os.path.join(out_dir, name)
        try:
            os.mkdir(case_dir)
        except FileExistsError:
            raise ValueError(f"case directory {case_dir} already exists") from None
        order = rng.permutation(types)
        scale = rng.uniform(0.8, 1.2)  # condensation of this cell
        stain = rng.uniform(0.9, 1.1)
        for nn, t in enumerate(order):
            img = render_chromosome(int(t), rng, scale=scale, stain=stain)
            polarity = 1
            if rng.random() < flip_polarity:
                img = np.ascontiguousarray(img[::-1])
                polarity = 0
            rel = f"{name}/{name}_{nn:02d}.png"
            _write_png(os.path.join(out_dir, rel), img)
            rows.append([name, slide, rel, int(t) + 1, polarity])
    _append_labels(os.path.join(out_dir, "labels.csv"), rows)
    return names


def _append_labels(path, rows):
    existing = ""
    if os.path.exists(path):
        with open(path, newline="") as fh:
            existing = fh.read()
        header = existing.splitlines()[0].split(",") if existing.strip() else []
        if header and header != LABEL_HEADER:
            raise ValueError(f"{path} has header {header}, expected {LABEL_HEADER}")
        if existing and not existing.endswith("\n"):
            existing += "\n"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if not existing.strip():
        existing = ""
        writer.writerow(LABEL_HEADER)
    writer.writerows(rows)
    write_atomic(path, (existing + buf.getvalue()).encode())


def make_training_set(out_dir, seed, n_cases, karyotypes=DEFAULT_KARYOTYPES,
                      flip_polarity=0.0):
    """Write ``n_cases`` synthetic cells, karyotypes drawn from ``karyotypes`` (strings, or
    ``(string, weight)`` pairs; default mostly 46,XX / 46,XY with some trisomies 13/18/21,
    45,X and 47,XXY). Each case is its own slide (one synthetic patient), seeded from
    ``seed`` and its number. Returns the case names."""
    items = [(k, 1.0) if isinstance(k, str) else (k[0], float(k[1])) for k in karyotypes]
    weights = np.array([w for _, w in items])
    if len(items) == 0 or weights.min() < 0 or weights.sum() <= 0:
        raise ValueError("karyotypes must be non-empty with non-negative weights")
    rng = np.random.default_rng([int(seed), 0x7A1])
    picks = rng.choice(len(items), size=int(n_cases), p=weights / weights.sum())
    names = []
    for i, pick in enumerate(picks):
        names += write_cases(items[pick][0], out_dir, seed=int(seed) * 1_000_000 + i,
                             cases=1, flip_polarity=flip_polarity)
    return names


__all__ = [
    "BAND_SIGNATURES",
    "CENTROMERE_INDEX",
    "CHROMOSOME_FACTS",
    "DEFAULT_KARYOTYPES",
    "LABEL_HEADER",
    "RELATIVE_LENGTH",
    "make_training_set",
    "render_chromosome",
    "write_cases",
]
