"""Fuzzing the input readers (`cnntrain predict`, `plot --maps --input`): thousands of
mutated .npy, IDX and image files, each of which must give pictures within the pixel cap
(each then a 28x28 field or a one-line error) or a one-line InputError naming the file:
never another exception, a hang or a bomb.

The mutator is seeded, so every run tries the same files. It flips bytes, truncates,
inserts, splices and, knowing each format's header, writes huge or zero dimensions into it
(recomputing a PNG chunk's CRC, so Pillow gets past it). The files are read in a child
process whose address space is capped at MEMORY_CAP and whose every read is given
CASE_SECONDS, so a bomb or a hang fails the test instead of the machine.

Run by hand: python -m tests.data.test_fuzz_inputs FOLDER SEED CASES_PER_SEED_FILE
"""

import io
import json
import random
import resource
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

from tests.support.proctools import child_env

MEMORY_CAP = 1 << 30
CASE_SECONDS = 20
CASES_PER_SEED_FILE = 500
SEED = 27
HUGE = (0, 1, 2 ** 15, 2 ** 16 - 1, 2 ** 24, 2 ** 31 - 1, 2 ** 32 - 1, 4097, 10 ** 9)


# --------------------------------------------------------------------------- seed files


def seed_files():
    """{name: bytes} of good inputs of every kind the readers take."""
    from PIL import Image

    from tests.data.test_preprocess import SEVEN, canvas

    grey = canvas((36, 30), np.kron(SEVEN, np.ones((2, 2))), 3, 4)
    rgb = np.stack([grey, 255 - grey, grey], axis=-1)
    pictures = {
        "grey.png": (Image.fromarray(grey), {}),
        "rgba.png": (Image.fromarray(np.dstack([rgb, grey])), {}),
        "deep.png": (Image.fromarray(grey.astype(np.uint16) * 257), {}),
        "palette.png": (Image.fromarray(grey).convert("P"), {}),
        "photo.jpg": (Image.fromarray(rgb), {"quality": 90}),
        "grey.bmp": (Image.fromarray(grey), {}),
        "anim.gif": (Image.fromarray(grey).convert("P"), {}),
        "raw.tif": (Image.fromarray(grey), {}),
        "packed.tif": (Image.fromarray(rgb), {"compression": "tiff_deflate"}),
        "grey.pgm": (Image.fromarray(grey), {}),
        "colour.ppm": (Image.fromarray(rgb), {}),
        "lossy.webp": (Image.fromarray(rgb), {"quality": 80}),
    }
    files = {}
    for name, (picture, options) in pictures.items():
        out = io.BytesIO()
        picture.save(out, format=Image.registered_extensions()[Path(name).suffix], **options)
        files[name] = out.getvalue()
    arrays = {
        "one.npy": grey,
        "stack.npy": np.stack([grey, grey[::-1]]).astype(np.float32) / 255,
        "channels.npy": (grey[None, None] / 255).astype(">f8"),
        "mask.npy": grey < 128,
        "fortran.npy": np.asfortranarray(grey.astype(np.int16)),
    }
    for name, array in arrays.items():
        out = io.BytesIO()
        np.save(out, array)
        files[name] = out.getvalue()
    stack = np.stack([grey[:28, :28]] * 2)
    files["digits-idx3-ubyte"] = (b"\0\0\x08\x03" + np.array(stack.shape, ">u4").tobytes()
                                  + stack.tobytes())
    return files


# --------------------------------------------------------------------------- the mutator


def flip(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(data))
        data[at] = rng.randrange(256) if rng.random() < 0.5 else data[at] ^ (1 << rng.randrange(8))
    return bytes(data), "flip"


def truncate(rng, data):
    return data[:rng.randrange(len(data))], "truncate"


def insert(rng, data):
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:], "insert"


def splice(rng, data):
    """A stretch of the file copied over another place: repeated chunks, shifted tables."""
    start = rng.randrange(len(data))
    piece = data[start:start + rng.randint(1, 256)]
    at = rng.randrange(len(data))
    return data[:at] + piece + data[at + len(piece):], "splice"


def put(data, offset, fmt, value):
    """`value` written over `data` at `offset` as struct `fmt` ('>I', '<H'...), wrapped to its
    width (negative values as two's complement); nothing past the end."""
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        return data
    packed = struct.pack(fmt.upper(), value & ((1 << (8 * size)) - 1))
    return data[:offset] + packed + data[offset + size:]


def png_dims(rng, data):
    """Huge (or zero) width and height in IHDR, with its CRC made right again."""
    data = put(put(data, 16, ">I", rng.choice(HUGE)), 20, ">I", rng.choice(HUGE))
    return put(data, 29, ">I", zlib.crc32(data[12:29])), "png-dims"


def jpeg_dims(rng, data):
    at = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    if at < 0:
        return flip(rng, data)
    return put(put(data, at + 5, ">H", rng.choice(HUGE)), at + 7, ">H", rng.choice(HUGE)), \
        "jpeg-dims"


def little_endian_dims(offsets, fmt):
    def edit(rng, data):
        for offset in offsets:
            data = put(data, offset, fmt, rng.choice(HUGE) * rng.choice((1, -1)))
        return data, "dims"
    return edit


def gif_dims(rng, data):
    """The screen's size, or the first frame's (its image descriptor)."""
    at = data.find(b"\x2c", 13) if rng.random() < 0.5 else 1
    return put(put(data, at + 5, "<H", rng.choice(HUGE)), at + 7, "<H", rng.choice(HUGE)), \
        "gif-dims"


def tiff_dims(rng, data):
    """Width (tag 256), length (257) or rows per strip (278), wherever their entries are."""
    for tag in (256, 257, 278, 279):
        at = data.find(struct.pack("<H", tag))
        if at >= 0 and rng.random() < 0.6:
            data = put(put(data, at + 2, "<H", rng.choice((3, 4))), at + 8, "<I",
                       rng.choice(HUGE))
    return data, "tiff-dims"


def netpbm_dims(rng, data):
    head, _, rest = data.partition(b"\n")
    size, _, rest = rest.partition(b"\n")
    size = f"{rng.choice(HUGE)} {rng.choice(HUGE)}".encode()
    return head + b"\n" + size + b"\n" + rest, "pnm-dims"


def npy_shape(rng, data):
    """A header declaring another shape (huge, empty, other ranks) or another dtype."""
    end = data.index(b"\n") + 1
    header = data[10:end].decode("latin1")
    shape = tuple(rng.choice(HUGE + (28, 3)) for _ in range(rng.randint(0, 5)))
    header = header[:header.index("'shape':")] + f"'shape': {shape}, }}"
    if rng.random() < 0.3:
        descr = rng.choice(["|O", "<U8", "<c16", "|V4", "<M8[s]", "|u1", "<f2", "[('a', '<i4')]"])
        header = header.replace(header[header.index("'descr':"):header.index("'fortran")],
                                f"'descr': '{descr}', ")
    header = header.ljust(64 * ((len(header) + 11) // 64 + 1) - 11) + "\n"
    return data[:8] + struct.pack("<H", len(header)) + header.encode("latin1") + data[end:], \
        "npy-shape"


def idx_dims(rng, data):
    rank = rng.choice((0, 1, 2, 3, 4, 255))
    dims = np.array([rng.choice(HUGE + (28,)) for _ in range(min(rank, 4))], ">u4").tobytes()
    return b"\0\0" + bytes([rng.choice((8, 8, 8, 9, 0x0D)), rank]) + dims + data[16:], \
        "idx-dims"


HEADER_EDITS = {".png": png_dims, ".jpg": jpeg_dims, ".gif": gif_dims, ".tif": tiff_dims,
                ".pgm": netpbm_dims, ".ppm": netpbm_dims, ".npy": npy_shape,
                ".bmp": little_endian_dims((18, 22), "<I"),
                ".webp": little_endian_dims((26, 28), "<H"), "-ubyte": idx_dims}


def mutate(rng, name, data):
    """One mutated copy of a seed file -> (bytes, what was done)."""
    edit = next(fn for suffix, fn in HEADER_EDITS.items() if name.endswith(suffix))
    kinds = [flip, truncate, insert, splice, edit, edit]
    data, done = blow(rng, rng.choice(kinds), data)
    if rng.random() < 0.25 and data:  # a second, different blow
        data, more = blow(rng, rng.choice(kinds), data)
        done += "+" + more
    return data, done


def blow(rng, kind, data):
    """kind(rng, data); a header edit that no longer finds its header flips bytes instead."""
    try:
        return kind(rng, data)
    except (ValueError, IndexError):
        return flip(rng, data)


# --------------------------------------------------------------------------- the child


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"no answer within {CASE_SECONDS} s")


def check_case(path):
    """Read one file as predict does -> ("read" or "refused", None) if it gave pictures
    within the cap, each made into a field or refused in one line, or a proper one-line
    error; else (None, what went wrong)."""
    from cnntrain.apps.predict import to_field
    from cnntrain.data.inputs import MAX_PIXELS, InputError, display_name, read_input
    from cnntrain.errors import CnnTrainError

    try:
        entries = read_input(path)
    except InputError as exc:
        message = str(exc)
        if "\n" in message or not message.startswith(display_name(path) + ": "):
            return None, f"bad message: {message!r}"
        if "object at 0x" in message or "<_io." in message:
            return None, f"message names an object, not the file: {message!r}"
        return "refused", None
    if not entries:
        return None, "no pictures and no error"
    for label, grey in entries:
        grey = np.asarray(grey)
        if grey.ndim != 2 or not 0 < grey.size <= MAX_PIXELS:
            return None, f"{label}: picture of shape {grey.shape}"
        try:  # and what predict makes of it: a field, or a one-line error
            field = to_field(grey, label)
        except CnnTrainError as exc:
            if "\n" in str(exc) or not str(exc).startswith(label + ": "):
                return None, f"bad message: {str(exc)!r}"
            continue
        if field.shape != (28, 28) or not np.isfinite(field).all():
            return None, f"{label}: a field of shape {field.shape}, or not finite"
    return "read", None


def run_cases(folder, seed, per_file):
    """Mutate every seed file `per_file` times and read each mutant; -> summary dict."""
    folder = Path(folder)
    rng = random.Random(seed)
    signal.signal(signal.SIGALRM, _alarm)
    outcomes = {"cases": 0, "read": 0, "refused": 0, "failures": []}
    for name, original in sorted(seed_files().items()):
        for case in range(per_file):
            data, done = mutate(rng, name, original)
            path = folder / f"{case}-{name}"
            path.write_bytes(data)
            signal.alarm(CASE_SECONDS)
            try:
                way_out, problem = check_case(path)
            except Hang as exc:
                way_out, problem = None, str(exc)
            except MemoryError:
                way_out, problem = None, "MemoryError: over the memory cap"
            except Exception as exc:  # what the test is there to find
                way_out, problem = None, f"{type(exc).__name__}: {exc}"[:300]
            finally:
                signal.alarm(0)
            outcomes["cases"] += 1
            if problem is None:
                outcomes[way_out] += 1
                path.unlink()
            else:  # kept for reproduction
                outcomes["failures"].append({"file": str(path), "mutation": done,
                                             "problem": problem})
    return outcomes


def main():
    folder, seed, per_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(run_cases(folder, seed, per_file)))


# --------------------------------------------------------------------------- the test


def test_mutated_inputs_give_pictures_or_one_line_errors_within_memory_and_time(tmp_path):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    child = subprocess.run(
        [sys.executable, "-m", "tests.data.test_fuzz_inputs", str(tmp_path), str(SEED),
         str(CASES_PER_SEED_FILE)],
        capture_output=True, text=True, timeout=600, env=child_env(tmp_path), preexec_fn=limit,
        cwd=Path(__file__).resolve().parents[2], stdin=subprocess.DEVNULL)
    assert child.returncode == 0, child.stderr[-3000:]
    outcomes = json.loads(child.stdout)
    assert outcomes["failures"] == [], json.dumps(outcomes["failures"][:10], indent=1)
    assert outcomes["cases"] == len(seed_files()) * CASES_PER_SEED_FILE
    # The mutants are neither all harmless nor all broken: both ways out are exercised.
    assert outcomes["read"] > outcomes["cases"] // 10, outcomes
    assert outcomes["refused"] > outcomes["cases"] // 3, outcomes
    assert child.stderr == "", child.stderr[-3000:]


if __name__ == "__main__":
    main()
