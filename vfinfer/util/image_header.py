"""An image's size from its header, before anything is decoded.

A decoder allocates what the header asks for: a 300 KB TIFF can declare 8000 x 8000 pixels and
take 125 MB the moment OpenCV opens it. So every file is measured here first and refused when
its size cannot be read: the formats below are the ones accepted, each with the header field
that holds its size.

    fmt, width, height = image_size(data)     # raises HeaderError

PNG (IHDR), JPEG (the SOF marker), BMP (the DIB header), TIFF and BigTIFF (ImageWidth /
ImageLength of the first page, which is the one read), WebP (VP8, VP8L, VP8X), GIF (the
logical screen), JPEG 2000 (the jp2 ``ihdr`` box or the codestream's SIZ marker), PNM and PAM
(P1-P7), PFM, Sun raster, Radiance HDR and AVIF (the ``ispe`` property).
"""

from __future__ import annotations

import re
import struct

_PNG = b"\x89PNG\r\n\x1a\n"
_JP2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K = b"\xff\x4f\xff\x51"
_SUN = b"\x59\xa6\x6a\x95"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNM_MAGIC = (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")
_REFUSED = {  # recognised, but their size is not read here: refused by name
    b"\x76\x2f\x31\x01": "OpenEXR",
}


class HeaderError(ValueError):
    """The file's size cannot be read before decoding (``problem`` says why)."""


def image_size(data) -> tuple[str, int, int]:
    """``(format name, width, height)`` read from the header of ``data`` (bytes).

    Raises ``HeaderError`` for a format outside the accepted ones, or a header that is cut
    short or inconsistent (the file is then refused without being decoded).
    """
    data = data if isinstance(data, bytes) else bytes(data)
    for name, reader in _READERS:
        try:
            found = reader(data)
        except (struct.error, IndexError, ValueError) as exc:
            raise HeaderError(f"{name} header cut short or damaged ({exc})") from None
        if found is not None:
            fmt, width, height = found
            if width <= 0 or height <= 0:
                raise HeaderError(f"its {fmt} header declares {width} x {height} pixels")
            return fmt, int(width), int(height)
    for magic, name in _REFUSED.items():
        if data.startswith(magic):
            raise HeaderError(f"{name} images are not accepted (their size is not read before "
                              "decoding): convert to PNG or TIFF")
    raise HeaderError("not a readable image (corrupt or not an image file; accepted: "
                      f"{', '.join(name for name, _ in _READERS)})")


def _png(data):
    if data.startswith(_PNG):
        if data[12:16] != b"IHDR":
            raise ValueError("no IHDR chunk first")
        return ("PNG",) + struct.unpack(">II", data[16:24])
    return None


def _jpeg(data):
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("no frame header before the image data")
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            pos += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return "JPEG", width, height
        pos += 2 + length
    raise ValueError("no frame header")


def _bmp(data):
    if not data.startswith(b"BM"):
        return None
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return "BMP", abs(width), abs(height)


def _tiff(data):
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        return None
    (version,) = struct.unpack(order + "H", data[2:4])
    if version == 42:
        (offset,) = struct.unpack(order + "I", data[4:8])
        count_fmt, entry_size, value_at = "H", 12, 8
    elif version == 43:  # BigTIFF
        (offset,) = struct.unpack(order + "Q", data[8:16])
        count_fmt, entry_size, value_at = "Q", 20, 12
    else:
        return None
    return ("TIFF",) + _tiff_size(data, order, offset, count_fmt, entry_size, value_at)


def _tiff_size(data, order, offset, count_fmt, entry_size, value_at):
    """ImageWidth (256) and ImageLength (257) of the IFD at ``offset``."""
    (count,) = struct.unpack_from(order + count_fmt, data, offset)
    start = offset + struct.calcsize(count_fmt)
    found = {}
    for k in range(count):
        entry = start + k * entry_size
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag in (256, 257):
            fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if fmt is None:
                raise ValueError(f"tag {tag} of type {kind}")
            (found[tag],) = struct.unpack_from(order + fmt, data, entry + value_at)
    if 256 not in found or 257 not in found:
        raise ValueError("no ImageWidth / ImageLength in the first page")
    return found[256], found[257]


def _webp(data):
    if not (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return "WebP", width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        (bits,) = struct.unpack("<I", data[21:25])
        return "WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return "WebP", width, height
    raise ValueError(f"unknown WebP chunk {chunk!r}")


def _gif(data):
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ("GIF",) + struct.unpack("<HH", data[6:10])
    return None


def _jpeg2000(data):
    if data.startswith(_J2K):
        x, y, x0, y0 = struct.unpack(">IIII", data[8:24])
        return "JPEG 2000", x - x0, y - y0
    if not data.startswith(_JP2):
        return None
    height, width = _box_numbers(data, b"ihdr", 4)
    return "JPEG 2000", width, height


def _netpbm(data):
    if data[:2] in _PNM_MAGIC or data[:2] in (b"PF", b"Pf"):
        head = re.sub(rb"#[^\n]*", b" ", data[2:512])
        fields = head.split()
        return "PNM", int(fields[0]), int(fields[1])
    if data[:3] == b"P7\n":
        width = re.search(rb"\nWIDTH\s+(\d+)", data[:1024])
        height = re.search(rb"\nHEIGHT\s+(\d+)", data[:1024])
        if not (width and height):
            raise ValueError("no WIDTH / HEIGHT")
        return "PAM", int(width.group(1)), int(height.group(1))
    return None


def _sun(data):
    if data.startswith(_SUN):
        return ("Sun raster",) + struct.unpack(">II", data[4:12])
    return None


def _hdr(data):
    if not (data.startswith(b"#?RADIANCE") or data.startswith(b"#?RGBE")):
        return None
    size = re.search(rb"\n([-+])Y (\d+) ([-+])X (\d+)\n", data[:4096])
    if size is None:
        raise ValueError("no resolution line")
    return "Radiance HDR", int(size.group(4)), int(size.group(2))


def _avif(data):
    if data[4:8] != b"ftyp" or data[8:12] not in (b"avif", b"avis"):
        return None
    width, height = _box_numbers(data, b"ispe", 8)
    return "AVIF", width, height


def _box_numbers(data, tag, skip):
    """The two big-endian 32-bit numbers ``skip`` bytes after the first ``tag`` (an ISO
    box type: jp2's ``ihdr``, HEIF's ``ispe``)."""
    at = data.find(tag)
    if at < 0:
        raise ValueError(f"no {tag.decode()} box")
    return struct.unpack(">II", data[at + skip:at + skip + 8])


_READERS = (("PNG", _png), ("JPEG", _jpeg), ("BMP", _bmp), ("TIFF", _tiff), ("WebP", _webp),
            ("GIF", _gif), ("JPEG 2000", _jpeg2000), ("PNM", _netpbm), ("Sun raster", _sun),
            ("Radiance HDR", _hdr), ("AVIF", _avif))
