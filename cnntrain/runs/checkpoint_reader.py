"""Reading a checkpoint that may be foreign, truncated or hostile (the format is
cnntrain.runs.checkpoint's). Reading never unpickles and never trusts a size: every member's
name, zip entry and .npy header (dtype, order, shape) is checked before any data is read, a zip
bomb is refused from its directory, and meta.json is bounded in size and depth and must be
strict JSON. So a bad file is a one-line error, reading it allocates no more than the file's
size allows, and nothing in it is ever executed.

What a network needs of the arrays is the caller's to say, since only the checkpoint's own
config tells: load_checkpoint's `layout` is called with meta.json once that is read and gives
each member's dtype and shape (a checkpoint_checks.Layout, build.NetworkLayout makes it), and
every member is compared with it -- none missing, none extra, none of another dtype or shape --
before any other array's data is read.
"""

import ast
import json
import math
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from cnntrain.errors import CheckpointError, one_line_reason
from cnntrain.fileio import NotARegularFile, open_regular_file
from cnntrain.runs.checkpoint import FORMAT_VERSION, Checkpoint, non_finite_entry
from cnntrain.runs.checkpoint_checks import (
    fields_problem,
    is_whole,
    layout_problem,
    order_problem,
    shown,
)

# Reading bounds. A checkpoint is read member by member, and each member's zip entry and
# .npy header are checked before any of its data is read, so what a file makes cnntrain
# allocate is bounded by the file's own size, never by what it claims.
MAX_MEMBERS = 4096
NPY_MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER = 4096          # np.save writes about 128 bytes
MAX_NDIM = 8
# What deflated members may declare in all: weights compress about 1.1-fold, a bomb of zeros
# about 1000-fold; the slack lets small arrays of zeros (fresh biases, velocities) through.
MAX_EXPANSION = 64
EXPANSION_SLACK = 64 << 20
MAX_META_BYTES = 16 << 20
MAX_JSON_DEPTH = 64
READ_CHUNK = 16 << 20
MEMBER_NAME = re.compile(r"(?:(?:param|buffer)/[A-Za-z0-9_.]{1,200}|optim/[A-Za-z0-9_.]{1,200}"
                         r"\.v|epoch_order|meta\.json)\.npy")
# What a hostile or damaged zip makes zipfile, zlib or the .npy header parser raise.
UNREADABLE = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error,
              ValueError, NotImplementedError, RuntimeError, UnicodeDecodeError, OverflowError,
              struct.error)


@dataclass(frozen=True)
class _Member:
    """One checked member: its zip entry, and its array's dtype, shape and header length."""

    info: zipfile.ZipInfo
    dtype: np.dtype
    shape: tuple
    offset: int


class _Refused(Exception):
    """What is wrong with one member; load_checkpoint adds the file and member names."""


def _folder_error(path):
    return CheckpointError(f"{path}: is a folder; give a .npz checkpoint, "
                           "e.g. runs/lenet5/checkpoints/best.npz")


def _open_checkpoint(path):
    """`path` opened for reading; CheckpointError unless it is a regular file that starts like
    a zip archive. Opened once, without blocking, and checked by its descriptor: a FIFO or a
    device is refused rather than waited on, and every later read is of this one file even if
    the path is replaced meanwhile."""
    try:
        f = open_regular_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise _folder_error(path) from None
    except NotARegularFile as exc:
        if exc.kind == "a folder":
            raise _folder_error(path) from None
        raise CheckpointError(f"{path}: {exc}; give a .npz checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({one_line_reason(exc)})") from None
    try:
        if f.read(4) != b"PK\x03\x04":
            # np.load would take any other file for a pickle; refuse it before it gets the
            # chance.
            raise CheckpointError(f"{path}: truncated or not a .npz checkpoint "
                                  "(it does not start like a zip archive)")
        f.seek(0)
    except OSError as exc:
        f.close()
        raise CheckpointError(f"{path}: cannot be read ({one_line_reason(exc)})") from None
    except CheckpointError:
        f.close()
        raise
    return f


def _entry_problem(info):
    """What is wrong with a zip entry's name, method or declared sizes, or None."""
    if not MEMBER_NAME.fullmatch(info.filename):
        return ("is not a member of a cnntrain checkpoint (those are param/NAME, buffer/NAME, "
                "optim/NAME.v, epoch_order and meta.json)")
    if info.flag_bits & 0x1:
        return "is encrypted"
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            return (f"declares {info.file_size} bytes but stores {info.compress_size} "
                    "uncompressed")
    elif info.compress_type != zipfile.ZIP_DEFLATED:
        return (f"uses zip compression method {info.compress_type}; only stored and deflated "
                "are read")
    return None


def _header_dict(head):
    """The .npy header's dictionary from the first bytes of a member."""
    if head[:6] != NPY_MAGIC:
        raise _Refused("is not a .npy array (it lacks the .npy magic)")
    version = tuple(head[6:8])
    if version == (1, 0):
        size, start, encoding = int.from_bytes(head[8:10], "little"), 10, "latin1"
    elif version in ((2, 0), (3, 0)):
        size, start = int.from_bytes(head[8:12], "little"), 12
        encoding = "latin1" if version == (2, 0) else "utf-8"
    else:
        raise _Refused(f"has .npy format version {version}, not 1.0, 2.0 or 3.0")
    if size > MAX_NPY_HEADER or len(head) < start + size:
        raise _Refused(f"has a .npy header of {size} bytes, cut short or over {MAX_NPY_HEADER}")
    try:
        header = ast.literal_eval(head[start:start + size].decode(encoding))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
        raise _Refused("has an unreadable .npy header") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise _Refused("has a .npy header that is not {'descr', 'fortran_order', 'shape'}")
    return header, start + size


def _header_dtype(descr):
    if not isinstance(descr, str):
        raise _Refused("holds a structured array, not numbers")
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError, SyntaxError):
        raise _Refused(f"has an unknown dtype {shown(descr)}") from None
    if dtype.hasobject:
        raise _Refused("holds object arrays, which cnntrain never writes; refusing to load it "
                       "(pickled data is never read)")
    if dtype.kind not in "fiu" or dtype.fields is not None or dtype.subdtype is not None \
            or dtype.itemsize > 8:
        raise _Refused(f"holds {dtype} data, not numbers")
    return dtype


def _header_shape(shape):
    if not (isinstance(shape, tuple) and len(shape) <= MAX_NDIM
            and all(is_whole(n) for n in shape)):
        raise _Refused(f"declares shape {shown(str(shape))}, not up to {MAX_NDIM} sizes >= 0")
    return shape


def _member(zf, info):
    """Check one entry and its .npy header, reading no more than the header."""
    problem = _entry_problem(info)
    if problem:
        raise _Refused(problem)
    with zf.open(info) as f:
        head = f.read(min(info.file_size, 12 + MAX_NPY_HEADER))
    header, offset = _header_dict(head)
    dtype, shape = _header_dtype(header["descr"]), _header_shape(header["shape"])
    if header["fortran_order"] is not False:
        raise _Refused("is stored in Fortran order; cnntrain writes C order only")
    nbytes = math.prod(shape) * dtype.itemsize
    if offset + nbytes != info.file_size:
        raise _Refused(f"declares shape {shape} of {dtype} ({nbytes} bytes), but its zip entry "
                       f"holds {info.file_size - offset}")
    return _Member(info, dtype, shape, offset)


def _check_expansion(path, infos, size):
    """CheckpointError if the deflated members together declare more than MAX_EXPANSION times
    the file's size (plus EXPANSION_SLACK): a zip bomb is refused from its directory alone."""
    stored = sum(info.compress_size for info in infos)
    if stored > size:
        # Entries that share their bytes would each be read (and kept) whole.
        raise CheckpointError(f"{path}: its members store {stored} bytes in all, more than the "
                              f"file's {size} (overlapping entries); use a checkpoint cnntrain "
                              "wrote")
    deflated = [info for info in infos if info.compress_type == zipfile.ZIP_DEFLATED]
    declared = sum(info.file_size for info in deflated)
    if declared > MAX_EXPANSION * size + EXPANSION_SLACK:
        largest = max(deflated, key=lambda info: info.file_size)
        raise CheckpointError(
            f"{path}: member {shown(largest.filename)} declares {largest.file_size} bytes from "
            f"{largest.compress_size} compressed, and the members {declared} bytes in all from a "
            f"file of {size}, more than {MAX_EXPANSION}-fold (a zip bomb, not weights); "
            "cnntrain writes checkpoints uncompressed")


def _members(path, zf, size):
    """{name without '.npy': _Member} of every entry, each checked before any data is read."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise CheckpointError(f"{path}: holds {len(infos)} members, more than a checkpoint "
                              f"has ({MAX_MEMBERS}); not a cnntrain checkpoint")
    names = [info.filename for info in infos]
    if "meta.json.npy" not in names:
        raise CheckpointError(f"{path}: not a cnntrain checkpoint (it has no meta.json entry)")
    _check_expansion(path, infos, size)
    members = {}
    for info in infos:
        name = shown(info.filename)
        if info.filename in members:
            raise CheckpointError(f"{path}: member {name} appears twice; not a cnntrain "
                                  "checkpoint")
        try:
            members[info.filename] = _member(zf, info)
        except _Refused as exc:
            raise CheckpointError(f"{path}: member {name} {exc}; use a checkpoint cnntrain "
                                  "wrote") from None
    return {name[:-len(".npy")]: member for name, member in members.items()}


def _read_array(zf, member, into=None):
    """The member's data, read in chunks into a buffer of the declared size (already checked
    against the file), then checked against the zip's CRC. The buffer is `into` when that is
    an array of the member's shape and (native) dtype, which is then returned: the network's
    own array, filled without another copy; otherwise a fresh array."""
    native = member.dtype.newbyteorder("=")
    if not (into is not None and member.dtype.isnative and into.dtype == native
            and into.shape == member.shape and into.flags.c_contiguous):
        into = None
    value = np.empty(member.shape, member.dtype) if into is None else into
    buffer = memoryview(value.reshape(-1).view(np.uint8))
    with zf.open(member.info) as f:
        f.read(member.offset)
        done = 0
        while done < len(buffer):
            chunk = f.read(min(READ_CHUNK, len(buffer) - done))
            if not chunk:
                raise EOFError(f"{member.info.filename} ends early")
            buffer[done:done + len(chunk)] = chunk
            done += len(chunk)
        f.read(1)  # reaching the end makes zipfile check the CRC
    return value if member.dtype.isnative else value.astype(native)


def json_depth(text):
    """How deeply text's JSON arrays and objects nest, counted without recursion: brackets
    inside strings are dropped first. Unbalanced text is counted as it stands."""
    outside = re.sub(r'"(?:[^"\\]|\\.)*"', "", text).encode("utf-8", "replace")
    codes = np.frombuffer(outside, dtype=np.uint8)
    steps = np.isin(codes, (ord("["), ord("{"))).astype(np.int64) \
        - np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def _refuse_constant(name):
    raise ValueError(f"it holds {name}, which is not a number JSON allows")


def parse_meta(data, max_bytes=MAX_META_BYTES, max_depth=MAX_JSON_DEPTH):
    """meta.json's bytes -> its object; ValueError (one line) for text that is too large, too
    deep, not UTF-8, not strict JSON (NaN, Infinity) or not an object."""
    if len(data) > max_bytes:
        raise ValueError(f"it is {len(data)} bytes, more than {max_bytes}")
    text = data.decode("utf-8")
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"it nests {depth} levels deep, more than {max_depth}")
    meta = json.loads(text, parse_constant=_refuse_constant)
    if not isinstance(meta, dict):
        raise ValueError("it is not a JSON object")
    return meta


def _read_meta(path, zf, member):
    if member.dtype != np.uint8 or len(member.shape) != 1:
        raise CheckpointError(f"{path}: its meta.json entry is {member.dtype} of shape "
                              f"{member.shape}, not UTF-8 text")
    if member.shape[0] > MAX_META_BYTES:
        raise CheckpointError(f"{path}: its meta.json entry is {member.shape[0]} bytes, more "
                              f"than {MAX_META_BYTES}; not a cnntrain checkpoint")
    data = _read_array(zf, member).tobytes()
    try:
        meta = parse_meta(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: its meta.json entry is unreadable "
                              f"({one_line_reason(exc)}); use another checkpoint") from None
    if "format_version" not in meta:
        raise CheckpointError(f"{path}: not a cnntrain checkpoint (meta.json lacks "
                              "'format_version')")
    version = meta["format_version"]
    if not is_whole(version):
        raise CheckpointError(f"{path}: its meta.json 'format_version' is {shown(version)}, "
                              "not a whole number")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written in checkpoint format {version}, newer than this "
                              f"cnntrain reads ({FORMAT_VERSION}); upgrade cnntrain to read it")
    for key in ("config", "epoch", "step"):
        if key not in meta:
            raise CheckpointError(f"{path}: not a cnntrain checkpoint (meta.json lacks '{key}')")
    return meta


def _sorted_arrays(path, arrays):
    """(params, buffers, optimizer) from {member name: array}."""
    params, buffers, optimizer = {}, {}, {}
    for name, value in arrays.items():
        prefix, _, key = name.partition("/")
        {"param": params, "buffer": buffers, "optim": optimizer}[prefix][key] = value
    if not params:
        raise CheckpointError(f"{path}: holds no parameters; not a cnntrain checkpoint")
    return params, buffers, optimizer



def load_checkpoint(path, layout=None):
    """Read and validate a checkpoint; CheckpointError (one line) for anything unusable.

    Every member's name, zip entry and .npy header are checked first; then meta.json is read
    (bounded in size and depth, strict JSON) and checked; then, given `layout` (a function
    meta -> Layout: what the network of that meta.json needs), every other member's dtype and
    shape is compared with what it needs; only then is array data read. Whatever `layout`
    raises (its config may be wrong) propagates."""
    with _open_checkpoint(path) as f:
        return _read_checkpoint(path, f, os.fstat(f.fileno()).st_size, layout)


def _refused(path, problem):
    return CheckpointError(f"{path}: {problem}; the file was edited or damaged, use another "
                           "checkpoint")


def _read_checkpoint(path, f, size, layout):
    """load_checkpoint's work on `f`, the opened file of `size` bytes."""
    zf = _unless_unreadable(path, zipfile.ZipFile, f)
    with zf:
        members, meta = _unless_unreadable(path, _read_head, path, zf, size)
        into = {}
        if layout is not None:
            # Outside _unless_unreadable: what the layout raises is about its config, not the zip.
            needs = layout(meta)
            _check_layout(path, members, needs)
            into = {name: need.into for name, need in needs.needs.items()}
        order, arrays = _unless_unreadable(path, _read_body, path, zf, members, into)
    params, buffers, optimizer = _sorted_arrays(path, arrays)
    bad = non_finite_entry(params, optimizer, buffers)
    if bad:
        raise CheckpointError(f"{path}: {bad} holds NaN or infinite values (a diverged model), "
                              "so it can be neither evaluated nor continued; use an earlier "
                              "checkpoint or train again with a lower learning rate")
    return Checkpoint(params=params, optimizer=optimizer, buffers=buffers, epoch_order=order,
                      meta=meta, source=str(path))


def _unless_unreadable(path, work, *args):
    """work(*args), with what a hostile or damaged zip makes it raise as one CheckpointError."""
    try:
        return work(*args)
    except UNREADABLE as exc:
        raise CheckpointError(f"{path}: truncated or not a .npz checkpoint "
                              f"({one_line_reason(exc)})") from None


def _read_head(path, zf, size):
    """({name: _Member} of every member but meta.json, meta) with no array data read but
    meta.json's, which is checked field by field."""
    members = _members(path, zf, size)
    meta = _read_meta(path, zf, members.pop("meta.json"))
    problem = fields_problem(meta, "epoch_order" in members)
    if problem:
        raise _refused(path, problem)
    return members, meta


def _read_body(path, zf, members, into):
    """(epoch_order or None, {name: array} of the other members): the array data, each read
    into its array in `into` ({name: array or None}) where it has one."""
    order_member = members.pop("epoch_order", None)
    order = None if order_member is None else _read_array(zf, order_member)
    problem = order_problem(order)
    if problem:
        raise _refused(path, problem)
    return order, {name: _read_array(zf, member, into.get(name))
                   for name, member in members.items()}


def _check_layout(path, members, layout):
    problem = layout_problem({name: (member.dtype, member.shape)
                              for name, member in members.items()}, layout)
    if problem:
        raise CheckpointError(f"{path}: {problem}; the file was edited or damaged, or made for "
                              "another network; use another checkpoint")
