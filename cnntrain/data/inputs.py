"""Reading the inputs a user names, safely: image files through Pillow (optional: pip install
'cnntrain[images]'), .npy arrays (one image or a stack) and MNIST's IDX image files, each
checked before it is read: regular files only (a FIFO or device is refused, never opened
blocking), headers first, a cap on the pixel count, and one-line errors naming the file as
display_name shows it. A folder stands for the input files in it. numpy only at import time.
"""

import contextlib
import io
import logging
import math
import os
import stat
import warnings
from pathlib import Path

import numpy as np

from cnntrain.errors import CnnTrainError, one_line_reason, require_extra
from cnntrain.fileio import NotARegularFile, file_kind, open_regular_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".ppm",
                  ".pbm", ".pnm", ".webp")
ARRAY_SUFFIXES = (".npy",)
IDX_SUFFIXES = (".idx", ".idx3-ubyte", "-ubyte")

# The formats Pillow may read an input as: those above. Pillow knows more (EPS runs
# Ghostscript, some decode whole archives), which a file of any name must not reach.
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "GIF", "TIFF", "PPM", "WEBP")
IMAGE_FORMAT_NAMES = "PNG, JPEG, BMP, GIF, TIFF, PGM/PPM/PBM, WebP"
# The largest picture read: 4096x4096 pixels, any shape. Preprocessing one takes about 32
# bytes a pixel at its peak, so this bounds it near half a gigabyte; a digit needs far less.
MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE
# The largest image file read: a 4096x4096 picture of 16-bit RGBA, stored uncompressed, fits.
MAX_IMAGE_BYTES = 256 << 20
# What a damaged IDX file of the user's own should do (the data cache's advice is another).
INPUT_IDX_ADVICE = "check it is an intact IDX image file"

_PILLOW_LOG = logging.NullHandler()


class InputError(CnnTrainError):
    """An input file cannot be read as a picture or an array of pictures."""


def display_name(path):
    """A file name as every message and result line shows it: as it is, or quoted with
    backslash escapes (Python-style, undecodable bytes as \\xNN) when it holds a control
    character such as a newline, a quote, a backslash or bytes that are not text, so each
    line names exactly one file and no name can pass for another."""
    name = os.fspath(path)
    if name and name.isprintable() and not any(c in name for c in "'\"\\"):
        return name
    return "'" + "".join(_escaped(c) for c in name) + "'"


def _escaped(char):
    if "\udc80" <= char <= "\udcff":  # a byte os.fsdecode could not decode, kept as is
        return f"\\x{ord(char) - 0xdc00:02x}"
    if char in "'\\":
        return "\\" + char
    if char.isprintable():
        return char
    return char.encode("unicode_escape").decode("ascii")


def _refuse_special(name, kind):
    raise InputError(f"{name}: is {kind}, not a regular file; give a picture, .npy or IDX file")


def open_input(path):
    """Open an input file for reading, binary; InputError (one line) for a path that is
    empty, missing, a folder or not a regular file. A FIFO or device is refused before it is
    opened, and opened without blocking, so one put in its place meanwhile cannot hang us."""
    name = display_name(path)
    if os.fspath(path) == "":
        raise InputError(f"{name}: an empty file name; name a file or folder (. for the "
                         "current folder)")
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{name}: is a folder")
        if not stat.S_ISREG(mode):
            _refuse_special(name, file_kind(mode))
        return open_regular_file(path)
    except NotARegularFile as exc:  # replaced by a FIFO or device since the stat
        _refuse_special(name, exc.kind)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise InputError(f"{name}: cannot read: {getattr(exc, 'strerror', None) or exc}"
                         ) from None


def check_pixels(name, height, width):
    """InputError if one picture of height x width is over MAX_PIXELS: refused from its
    header, before its pixels are decoded or read."""
    if height * width > MAX_PIXELS:
        raise InputError(f"{name}: a {width}x{height} picture ({height * width:,} pixels) is "
                         f"over the limit of {MAX_PIXELS:,} pixels ({MAX_SIDE}x{MAX_SIDE}); "
                         "scale it down first")


def picture_grey(picture):
    """An open Pillow picture -> (H, W) float32 grey levels in [0, 1]: 16-bit and float
    pictures scaled to their range, transparent parts as white paper. Shared by load_image
    and `cnntrain serve`'s PNG input."""
    from PIL import Image

    if picture.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(picture, dtype=np.float64)
        top = 65535.0 if picture.mode.startswith("I;16") else max(float(grey.max()), 1.0)
        return np.clip(grey / top, 0, 1).astype(np.float32)
    if picture.mode == "F":
        grey = np.asarray(picture, dtype=np.float64)
        return np.clip(grey / max(float(grey.max()), 1.0), 0, 1).astype(np.float32)
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        white = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(white, picture.convert("RGBA"))
    return np.asarray(picture.convert("L"), dtype=np.float32) / 255.0


def load_image(path):
    """An image file (PNG, JPEG, BMP, GIF, TIFF, PGM, WebP) -> (H, W) float32 grey levels in
    [0, 1]. The first frame of an animation; transparent parts count as white paper; a photo's
    EXIF orientation is applied. InputError (one line naming the file) if it is unreadable or
    over MAX_PIXELS, which is checked on the header, before any pixel is decoded."""
    Image = require_extra("PIL.Image", "reading image files", "images")
    # Pillow logs what it meets in a damaged file; with no handler of its own, Python would
    # print that to stderr beside the error line (adding the same handler twice adds one).
    logging.getLogger("PIL").addHandler(_PILLOW_LOG)
    name = display_name(path)
    with open_input(path) as f:
        data = f.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(f"{name}: over {MAX_IMAGE_BYTES >> 20} MiB, more than any picture "
                         f"within the limit of {MAX_PIXELS:,} pixels needs")
    # Pillow reads a chunk's declared length in one call; from memory that allocates only
    # what the file holds, where a file object would allocate the length first.
    with io.BytesIO(data) as f:
        try:
            with warnings.catch_warnings():
                # Pillow warns about what it meets in a damaged file (EXIF, chunks) and
                # about large pictures, which _decode refuses itself; the errors below say
                # all the user needs, in one line.
                warnings.simplefilter("ignore")
                return _decode(Image, f, name)
        except InputError:
            raise
        except MemoryError:
            raise
        except Image.DecompressionBombError as exc:  # Pillow's own limit, met in open
            raise InputError(f"{name}: too large to read safely ({one_line_reason(exc)}); "
                             f"the limit is {MAX_PIXELS:,} pixels ({MAX_SIDE}x{MAX_SIDE}): "
                             "scale it down first") from None
        except Exception as exc:  # Pillow signals a damaged file with many exception types
            from PIL import UnidentifiedImageError

            if isinstance(exc, UnidentifiedImageError):
                raise InputError(f"{name}: not an image cnntrain reads ({IMAGE_FORMAT_NAMES})"
                                 ) from None
            raise InputError(f"{name}: unreadable image ({one_line_reason(exc)})") from None


def _decode(Image, f, name):
    from PIL import ImageOps

    with Image.open(f, formats=PILLOW_FORMATS) as picture:
        check_pixels(name, picture.height, picture.width)
        picture.seek(0)
        check_pixels(name, picture.height, picture.width)
        with _quiet_stderr():
            picture.load()
        return picture_grey(ImageOps.exif_transpose(picture))


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 pointed at /dev/null meanwhile: libtiff, which Pillow decodes
    compressed TIFF with, prints its own errors there, which would break the one-line rule
    (the exception Pillow raises after them gives the error line)."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep quiet
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
        finally:
            os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _no_picture(name, what):
    return InputError(f"{name}: holds no picture ({what}); give a file with at least one")


def array_header(f, name):
    """An open .npy file -> (shape, dtype, fortran_order), read from its header alone and
    checked: numbers (no objects, no pickle), a shape of (H, W), (N, H, W) or (N, 1, H, W)
    with at least one picture, each within MAX_PIXELS, and a file long enough to hold them."""
    from numpy.lib import format as npy

    file_size = os.fstat(f.fileno()).st_size
    try:
        version = npy.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npy.read_array_header_2_0(f)
        else:
            raise ValueError(f"format version {version} is not one numpy writes")
    except MemoryError:
        raise
    except Exception as exc:  # numpy parses the header text with tokenize and ast
        raise InputError(f"{name}: not a readable .npy array ({one_line_reason(exc)})") from None
    if dtype.hasobject or dtype.kind not in "uifb" or dtype.fields is not None:
        raise InputError(f"{name}: holds {dtype}, not numbers; give grey levels as integers "
                         "0..255 or floats in [0, 1]")
    if not 2 <= len(shape) <= 4 or (len(shape) == 4 and shape[1] != 1):
        raise InputError(f"{name}: expected numbers shaped (H, W), (N, H, W) or (N, 1, H, W), "
                         f"got {dtype} {shape}")
    if 0 in shape:
        raise _no_picture(name, f"shape {shape}")
    check_pixels(name, shape[-2], shape[-1])
    needed = math.prod(shape) * dtype.itemsize
    if needed > file_size - f.tell():
        raise InputError(f"{name}: truncated: its header declares {dtype} {shape}, "
                         f"{needed:,} bytes, but the file holds {file_size - f.tell():,}")
    return shape, dtype, fortran


def load_array_stack(path):
    """A .npy file -> (N, H, W) grey levels: one (H, W) image, a stack (N, H, W) or
    (N, 1, H, W). Its header is checked (array_header) before its data is read; no pickle.
    InputError (one line) if it is not such an array."""
    name = display_name(path)
    with open_input(path) as f:
        if f.read(4) == b"PK\x03\x04":  # what numpy.savez writes
            raise InputError(f"{name}: an .npz archive, not a .npy array of images")
        f.seek(0)
        shape, dtype, fortran = array_header(f, name)
        count = math.prod(shape)
        data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:  # the file shrank while being read
        raise InputError(f"{name}: truncated while being read")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.reshape((-1, *shape[-2:]))


def load_idx_stack(path):
    """An MNIST IDX image file (e.g. t10k-images-idx3-ubyte) -> (N, H, W) uint8, its header
    checked (cnntrain.data.mnist.read_idx_dims) before its payload is read."""
    from cnntrain.data.mnist import read_idx_dims
    from cnntrain.errors import DataError

    name = display_name(path)
    with open_input(path) as f:
        try:
            dims = read_idx_dims(f, name, advice=INPUT_IDX_ADVICE)
        except DataError as exc:
            raise InputError(str(exc)) from None
        if len(dims) not in (2, 3):
            raise InputError(f"{name}: an IDX file of shape {dims}, not images (N, H, W)")
        if 0 in dims:
            raise _no_picture(name, f"shape {dims}")
        check_pixels(name, *dims[-2:])
        data = f.read(math.prod(dims))
    if len(data) != math.prod(dims):
        raise InputError(f"{name}: truncated while being read")
    return np.frombuffer(data, dtype=np.uint8).reshape((-1, *dims[-2:]))


def is_idx(path):
    name = Path(path).name.lower()
    return name.endswith(IDX_SUFFIXES) or "idx3" in name


def is_array(path):
    return Path(path).suffix.lower() in ARRAY_SUFFIXES


def is_image(path):
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def is_input_name(path):
    return is_image(path) or is_array(path) or is_idx(path)


def read_input(path):
    """Any supported input file -> [(label, (H, W) grey levels)]: one entry for an image file,
    one per image of a stack ("file[i]"); labels are display_name's. InputError (one line) if
    it cannot be read; for a folder (one expand_inputs found empty or could not list), the
    reason."""
    name = display_name(path)
    if os.fspath(path) and os.path.isdir(path) and not folder_inputs(Path(path)):
        raise InputError(f"{name}: a folder with no image, .npy or IDX file in it")
    if is_array(path) or is_idx(path):
        stack = load_array_stack(path) if is_array(path) else load_idx_stack(path)
        if len(stack) == 1:
            return [(name, stack[0])]
        return [(f"{name}[{i}]", image) for i, image in enumerate(stack)]
    return [(name, load_image(path))]


def folder_inputs(folder):
    """The input files directly in `folder`, sorted by name: every name of an image, .npy or
    IDX file that is not hidden and not a folder. A FIFO or device of such a name is kept, so
    reading it gives its one-line refusal instead of a silent skip."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise InputError(f"{display_name(folder)}: cannot list: {exc.strerror or exc}") from None
    return [p for p in entries
            if not p.name.startswith(".") and is_input_name(p) and not p.is_dir()]


def expand_inputs(paths):
    """Paths as given -> files to read, in order: a folder stands for every image, .npy and
    IDX file directly in it (folder_inputs); a file stands for itself, whatever its name. An
    empty path stays as it is (not the current folder), for read_input to refuse."""
    files = []
    for given in paths:
        path = Path(given) if os.fspath(given) else given
        if os.fspath(given) and path.is_dir():
            try:
                inside = folder_inputs(path)
            except InputError:  # read_input gives the folder's error line
                inside = []
            files.extend(inside or [path])  # an empty folder is reported, not skipped
        else:
            files.append(path)
    return files


def read_single_input(path):
    """`plot --maps --input PATH`: the pictures of one input, as `cnntrain predict PATH` would
    read them. A folder is taken as predict takes it when it holds one input file; with more,
    it is refused in one line, since one picture is drawn."""
    files = expand_inputs([path])
    if len(files) > 1:
        raise InputError(f"{display_name(path)}: a folder of {len(files)} input files; "
                         f"--input takes one: name one of them (e.g. "
                         f"{display_name(files[0])}), or read them all with cnntrain predict")
    return read_input(files[0])
