"""Reading init images and writing PNGs that carry their generation settings."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_write_bytes


# Pillow's decompression-bomb limit (about 13,400 x 13,400): larger files are refused from
# their header, before any pixel is decoded.
MAX_PIXELS = 178_956_970
MAX_FILE_BYTES = 1 << 31


def _cv2():
    import cv2

    # OpenCV logs warnings about broken files on stderr; the error we raise says it in one line
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


def _header(path: Path) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) from the file's header, read by Pillow without
    decoding pixels; None when Pillow does not know the file (cv2 may still read it)."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # sdcli applies its own limit, and names the size
    try:
        with Image.open(path) as im:
            width, height = im.size
            try:
                orientation = int(im.getexif().get(0x0112, 1))
            except Exception:  # a broken EXIF block: cv2 decides, as it does for the pixels
                orientation = 1
            return width, height, orientation
    except Exception:  # Pillow raises many kinds for files it cannot identify
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _read_image_file(path: Path, what: str) -> tuple[np.ndarray, int]:
    """The bytes of an image file whose header was checked, and its EXIF orientation."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"the {what} {path} is a folder, not an image file")
    if not path.is_file():
        raise UsageError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise UsageError(f"cannot read the {what} {path}: the file is empty")
    if size > MAX_FILE_BYTES:
        raise UsageError(f"the {what} {path} is {size / 1e9:.1f} GB; sdcli reads image files of up to {MAX_FILE_BYTES / 1e9:.1f} GB")
    header = _header(path)
    orientation = 1
    if header is not None:
        width, height, orientation = header
        if width * height > MAX_PIXELS:
            raise UsageError(f"the {what} {path} is {width}x{height} pixels; sdcli reads images of up to "
                             f"{MAX_PIXELS:,} pixels (about 13400x13400): scale it down first")
    return np.fromfile(path, dtype=np.uint8), orientation


def _decode(data: np.ndarray, flags: int) -> np.ndarray | None:
    cv2 = _cv2()
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error:  # e.g. a format cv2 reads whose header claims more pixels than it allows
        return None
    return image if image is not None and image.size else None


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an [H, W, ...] array as Pillow's exif_transpose
    and cv2.imread do (for decoders that ignore it, e.g. cv2.IMREAD_UNCHANGED)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](array)) if orientation in ops else array


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3]; EXIF rotation applied; alpha dropped; 16-bit
    files scaled to 8 bits.  UsageError for a missing, empty, unreadable or huge file."""
    data, _ = _read_image_file(path, "image")
    image = _decode(data, _cv2().IMREAD_COLOR)
    if image is None:
        raise UsageError(f"cannot read {path} as an image")
    return np.ascontiguousarray(image[:, :, ::-1])


def read_mask(path: Path) -> np.ndarray:
    """An inpainting mask file as float32 [H, W] in [0, 1] (1: repaint, 0: keep).

    Any format cv2 reads.  An image with an alpha channel that has any transparent pixel
    is masked by its alpha (opaque: repaint), as A1111 does; otherwise by its luminance
    (0.299 R + 0.587 G + 0.114 B, as PIL's convert("L") in diffusers).  16-bit files keep
    their precision; EXIF orientation applies, as it does to the init image.
    """
    cv2 = _cv2()
    data, orientation = _read_image_file(path, "mask")
    raw = _decode(data, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise UsageError(f"cannot read the mask {path} as an image")
    scale = float(np.iinfo(raw.dtype).max) if np.issubdtype(raw.dtype, np.integer) else 1.0
    if raw.ndim == 3 and raw.shape[2] == 4 and (raw[:, :, 3] < scale).any():
        # IMREAD_UNCHANGED ignores the EXIF orientation: applied here
        mask = orient(raw[:, :, 3], orientation).astype(np.float32) / np.float32(scale)
    else:
        # decoded again as gray, which applies the EXIF orientation
        gray = _decode(data, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
        if gray is None:
            raise UsageError(f"cannot read the mask {path} as an image")
        gray_scale = float(np.iinfo(gray.dtype).max) if np.issubdtype(gray.dtype, np.integer) else 1.0
        mask = gray.astype(np.float32) / np.float32(gray_scale)
    return np.clip(mask, 0.0, 1.0)


def read_alpha(path: Path) -> np.ndarray | None:
    """An image file's alpha channel as float32 [H, W] in [0, 1] (1: opaque), EXIF orientation
    applied; None when the file has no alpha channel (OpenAI's image edits: its transparent
    pixels are the ones to repaint)."""
    cv2 = _cv2()
    data, orientation = _read_image_file(path, "image")
    raw = _decode(data, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise UsageError(f"cannot read {path} as an image")
    if raw.ndim != 3 or raw.shape[2] != 4:
        return None
    scale = float(np.iinfo(raw.dtype).max) if np.issubdtype(raw.dtype, np.integer) else 1.0
    return np.clip(orient(raw[:, :, 3], orientation).astype(np.float32) / np.float32(scale), 0.0, 1.0)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A float mask [H, W] resized to the image: area averaging when it shrinks both ways,
    else bilinear (no ringing; at the 0.5 threshold the edge lands where Lanczos puts it)."""
    import cv2

    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape[1] == width and mask.shape[0] == height:
        return mask
    shrinking = width < mask.shape[1] and height < mask.shape[0]
    resized = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0)


def blur_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """A1111's mask blur: a Gaussian of sigma `pixels` along x, then along y, each with a
    kernel of 2 * int(2.5 * pixels + 0.5) + 1 taps (cv2.GaussianBlur, reflected border)."""
    import cv2

    mask = np.asarray(mask, dtype=np.float32)
    if pixels <= 0:
        return mask
    k = 2 * int(2.5 * pixels + 0.5) + 1
    mask = cv2.GaussianBlur(mask, (k, 1), pixels)
    return cv2.GaussianBlur(mask, (1, k), pixels)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width < image.shape[1] and height < image.shape[0]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)


def to_model_input(image: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] to float32 [1, 3, H, W] in [-1, 1], as diffusers' image processor does."""
    x = image.astype(np.float32) / 255.0
    return (x * 2.0 - 1.0).transpose(2, 0, 1)[None]


def to_pixels(decoded: np.ndarray) -> np.ndarray:
    """VAE output [1, 3, H, W] in about [-1, 1] to RGB uint8 [H, W, 3] (diffusers' rounding)."""
    x = np.clip(decoded[0] / 2.0 + 0.5, 0.0, 1.0).transpose(1, 2, 0)
    return (x * 255.0).round().astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def text_chunk(key: str, text: str) -> bytes:
    """tEXt when the text is Latin-1, else iTXt (UTF-8), as Pillow and A1111 do."""
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + text.encode("latin-1"))
    except UnicodeEncodeError:
        return _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8"))


def encode_png(image: np.ndarray, parameters: str | None = None) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    png = buf.tobytes()
    if parameters is None:
        return png
    # The text chunk goes right after IHDR (8-byte signature + 25-byte IHDR chunk).
    head = 8 + 25
    return png[:head] + text_chunk("parameters", parameters) + png[head:]


IMAGE_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode_image(image: np.ndarray, kind: str, parameters: str | None = None, quality: int = 100) -> bytes:
    """RGB uint8 [H, W, 3] as a PNG (encode_png: the parameters in a text chunk), or a JPEG or
    WebP of `quality` (1-100) with the parameters in EXIF's UserComment, where A1111 puts them."""
    if kind == "png":
        return encode_png(image, parameters)
    import io

    from PIL import Image

    exif = Image.Exif()
    if parameters:
        exif[0x8769] = {0x9286: b"UNICODE\0" + parameters.encode("utf-16-be")}  # Exif IFD: UserComment
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(out, {"jpeg": "JPEG", "webp": "WEBP"}[kind],
                                                        quality=int(quality), exif=exif.tobytes())
    return out.getvalue()


def read_png_text(path: Path) -> dict[str, str]:
    """The tEXt/iTXt chunks of a PNG file."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise UsageError(f"{path} is not a PNG file")
    out: dict[str, str] = {}
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _tkey, _, value = rest.partition(b"\0")
            out[key.decode("latin-1")] = (zlib.decompress(value) if compressed else value).decode("utf-8")
        elif kind == b"IEND":
            break
        pos += 12 + length
    return out


def save_png(path: Path, image: np.ndarray, parameters: str | None = None) -> None:
    atomic_write_bytes(Path(path), encode_png(image, parameters))
