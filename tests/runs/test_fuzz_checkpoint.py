"""Fuzz the checkpoint reader and the meta.json reader (issue 27): thousands of mutated files,
each of which must load (and then build its network, and restore a resume position) or give a
one-line CnnTrainError; never another exception, a hang, or more memory than the cap.

The cases run in a child process whose address space is capped, so a file that makes the
reader allocate what it declares rather than what it holds fails the test. The mutator is
seeded: a failing case is named by its number and reproduces with the same seed.

Run by hand: python -m tests.runs.test_fuzz_checkpoint FOLDER_OF_BASE_CHECKPOINTS CASES SEED
"""

import io
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MEMORY_CAP = 2 << 30
CASE_SECONDS = 10
CHECKPOINT_CASES = 2500
META_CASES = 3000


# ------------------------------------------------------------------ mutations

def members_of(data):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def zip_of(members, compression=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buffer.getvalue()


NAMES = ["meta.json.npy", "epoch_order.npy", "param/x.npy", "param/conv1.W", "optim/conv1.W.npy",
         "buffer/bn.running_mean.npy", "../../etc/passwd", "param/.npy", "a" * 300 + ".npy",
         "param/conv1.W.npy", "optim/conv1.W.v.npy", "meta.json"]
DESCRS = ["<f4", "<f8", "<f2", "<i8", "|u1", "|b1", "<c8", "|O", "<U3", "|V4", ">f4", "f4,f4",
          "(2,)f4", "<f16", "float32", "", 3, None]
SHAPES = [(), (0,), (10 ** 12,), (-1,), (2 ** 63,), (1,) * 9, (3, 5), (25,), "x", [4], (1.5,),
          (True,), (2 ** 31, 2 ** 31)]


def header_bytes(descr, shape, fortran):
    text = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("latin1")
    text += b" " * (63 - (len(text) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def edit_header(rng, data):
    """Replace a member's .npy header by one with another dtype, shape or order."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
        descr, shape, body = array.dtype.str, array.shape, array.tobytes()
    except Exception:
        descr, shape, body = "<f4", (1,), data
    choice = rng.randrange(3)
    if choice == 0:
        descr = rng.choice(DESCRS)
    elif choice == 1:
        shape = rng.choice(SHAPES + [tuple(n + rng.randint(-2, 2) for n in shape)])
    fortran = rng.choice([False, True, 1, "no"]) if choice == 2 else False
    return header_bytes(descr, shape, fortran) + body


def flip_bytes(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def meta_value(rng):
    return rng.choice([None, True, -1, 1.5, "x", [], {}, 10 ** 40, 2 ** 128, "NaN", [[[]]],
                       {"a": {"b": [1, "2"]}}, 0, 1, "PCG64"])


def mutate_json(rng, obj, depth=0):
    """obj with one value somewhere in it replaced, removed or added."""
    if isinstance(obj, dict) and obj and (depth < 4 and rng.random() < 0.7):
        key = rng.choice(sorted(obj))
        return dict(obj, **{key: mutate_json(rng, obj[key], depth + 1)})
    if isinstance(obj, list) and obj and (depth < 4 and rng.random() < 0.7):
        i = rng.randrange(len(obj))
        return obj[:i] + [mutate_json(rng, obj[i], depth + 1)] + obj[i + 1:]
    if isinstance(obj, dict) and obj and rng.random() < 0.3:
        key = rng.choice(sorted(obj))
        return {k: v for k, v in obj.items() if k != key}
    return meta_value(rng)


def mutate_text(rng, text):
    """JSON text with a textual edit: nesting, a non-finite constant, a cut, stray bytes."""
    choice = rng.randrange(6)
    at = rng.randrange(len(text) + 1)
    if choice == 0:
        n = rng.choice([10, 100, 5000, 100_000])
        return text[:at] + "[" * n + "]" * n + text[at:]
    if choice == 1:
        return text.replace("0", rng.choice(["NaN", "Infinity", "-Infinity", "1e999"]), 1)
    if choice == 2:
        return text[:at]
    if choice == 3:
        return text[:at] + rng.choice(['"', "\\", "{", "]", "\x00", "\udcff", ",,"]) + text[at:]
    if choice == 4:
        return '"' + "[" * rng.choice([100, 100_000]) + '"'
    return text[:at] + "9" * rng.choice([10, 5000]) + text[at:]


def meta_text_of(members):
    for name, data in members:
        if name == "meta.json.npy":
            return bytes(np.load(io.BytesIO(data), allow_pickle=False)).decode()
    return "{}"


def npy_text(text):
    buffer = io.BytesIO()
    np.save(buffer, np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8))
    return buffer.getvalue()


def mutate_members(rng, members):
    members = list(members)
    i = rng.randrange(len(members))
    name, data = members[i]
    choice = rng.randrange(8)
    if choice == 0:
        members[i] = (rng.choice(NAMES), data)
    elif choice == 1:
        del members[i]
    elif choice == 2:
        members.append(members[i])
    elif choice == 3:
        j = rng.randrange(len(members))
        members[i], members[j] = (name, members[j][1]), (members[j][0], data)
    elif choice == 4:
        members[i] = (name, edit_header(rng, data))
    elif choice == 5:
        cut = rng.randrange(len(data) + 1)
        members[i] = (name, data[:cut] + (bytes(rng.randrange(64)) if rng.random() < 0.5 else b""))
    elif choice == 6:
        meta = json.loads(meta_text_of(members))
        text = json.dumps(mutate_json(rng, meta))
        members = [(n, npy_text(text) if n == "meta.json.npy" else d) for n, d in members]
    else:
        text = mutate_text(rng, meta_text_of(members))
        members = [(n, npy_text(text) if n == "meta.json.npy" else d) for n, d in members]
    return members


def declared_size_edit(rng, data):
    """Patch a central-directory entry's declared sizes, as a bomb or a liar would."""
    at = data.rfind(b"PK\x01\x02", 0, rng.randrange(len(data)) + 1)
    if at < 0:
        at = data.find(b"PK\x01\x02")
    data = bytearray(data)
    field = at + rng.choice([20, 24])  # compressed size, uncompressed size
    data[field:field + 4] = struct.pack("<I", rng.choice([0, 1, 2 ** 32 - 1, 10 ** 9, 99]))
    if rng.random() < 0.5:
        data[at + 10:at + 12] = struct.pack("<H", rng.choice([8, 12, 14, 99]))
    return bytes(data)


def mutated_checkpoint(rng, base):
    choice = rng.randrange(6)
    if choice == 0:
        return flip_bytes(rng, base)
    if choice == 1:
        return base[:rng.randrange(len(base))]
    if choice == 2:
        return declared_size_edit(rng, base)
    members = members_of(base)
    for _ in range(rng.randint(1, 3)):
        if members:
            members = mutate_members(rng, members)
    compression = zipfile.ZIP_DEFLATED if choice == 3 else zipfile.ZIP_STORED
    data = zip_of(members, compression)
    return flip_bytes(rng, data) if choice == 4 and rng.random() < 0.3 else data


# ------------------------------------------------------------------ the child

class Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise Hang(f"no result within {CASE_SECONDS} s")


def read_fully(path):
    """Everything eval and resume do with a checkpoint before they need data: eval's load,
    checked against its network, and resume's, checked against its network and optimizer,
    then its position restored."""
    from cnntrain.runs.build import (
        NetworkLayout,
        build_model,
        build_optimizer,
        layer_seeds,
        load_network,
        random_streams,
    )
    from cnntrain.runs.checkpoint_reader import load_checkpoint
    from cnntrain.runs.fit import _restore
    load_network(path)
    layout = NetworkLayout(path, resume=True)
    ckpt = load_checkpoint(path, layout)
    cfg = layout.cfg
    network = build_model(cfg, None, layer_seeds(cfg.train.seed))
    _restore(network, build_optimizer(cfg, network), random_streams(cfg.train.seed)[2], ckpt,
             500, 16)


def check_case(run, label):
    """None if run() returned or raised a one-line CnnTrainError; else what went wrong."""
    from cnntrain.errors import CnnTrainError
    signal.alarm(CASE_SECONDS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a raw warning would reach the user too
            run()
    except CnnTrainError as exc:
        message = str(exc)
        if not message or "\n" in message or "\r" in message:
            return f"{label}: CnnTrainError not one line: {message!r}"
    except Exception as exc:  # noqa: BLE001 (any other exception is what the test looks for)
        import traceback
        return f"{label}: {type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"
    finally:
        signal.alarm(0)
    return None


def fuzz(folder, cases, seed):
    """Mutate each base checkpoint in `folder` `cases` times in all, and meta.json texts as
    many again; print a summary line; return the failures."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    signal.signal(signal.SIGALRM, _on_alarm)
    warnings.simplefilter("ignore")  # zipfile warns of the duplicate names the mutator writes
    rng = random.Random(seed)
    bases = [p.read_bytes() for p in sorted(Path(folder).glob("base*.npz"))]
    target = Path(folder) / "case.npz"
    failures, loaded, started = [], 0, time.monotonic()
    for case in range(cases):
        base = bases[case % len(bases)]
        try:
            target.write_bytes(mutated_checkpoint(rng, base))
        except (ValueError, zipfile.BadZipFile, struct.error, OSError, UnicodeEncodeError):
            continue  # the mutation itself could not be written; nothing to read
        failure = check_case(lambda: read_fully(target), f"checkpoint case {case}")
        loaded += failure is None and _loads(target)
        if failure:
            failures.append(failure)
    from cnntrain.runs.checkpoint_reader import parse_meta
    texts = [meta_text_of(members_of(base)) for base in bases]
    for case in range(cases):
        text = mutate_text(rng, rng.choice(texts)) if case % 2 else \
            json.dumps(mutate_json(rng, json.loads(rng.choice(texts))))
        data = text.encode("utf-8", "surrogatepass")
        failure = check_case(lambda data=data: _parse(parse_meta, data), f"meta case {case}")
        if failure:
            failures.append(failure)
    print(json.dumps({"cases": 2 * cases, "checkpoints_loaded": loaded,
                      "seconds": round(time.monotonic() - started, 1),
                      "failures": len(failures)}))
    return failures


def _loads(path):
    from cnntrain.errors import CnnTrainError
    from cnntrain.runs.checkpoint_reader import load_checkpoint
    try:
        load_checkpoint(path)
        return True
    except CnnTrainError:
        return False


def _parse(parse_meta, data):
    """parse_meta's ValueError is its one-line refusal; the reader wraps it in a
    CheckpointError."""
    from cnntrain.errors import CheckpointError
    try:
        parse_meta(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"meta.json is unreadable ({' '.join(str(exc).split())})") from None


# ------------------------------------------------------------------ the test

def write_bases(folder):
    """Base checkpoints: the small network mid-epoch with generator and velocities; one with
    batch norm and dropout (buffers, layer generators) after an epoch; and that one
    compressed."""
    from cnntrain.runs.build import build_optimizer, random_streams
    from cnntrain.runs.checkpoint import Checkpoint, save_checkpoint
    from cnntrain.runs.metrics import METRIC_KEYS
    from tests.support.checkpoints import make_network
    layer_lists = [None, ["conv 4 5 pad=2", "batchnorm", "relu", "maxpool 2", "flatten",
                          "dropout 0.5", "dense 10"]]
    for i, layers in enumerate(layer_lists):
        network, cfg = make_network(layers)
        optimizer = build_optimizer(cfg, network)
        from cnntrain.config import config_to_ini
        history = [{key: 0.5 for key in METRIC_KEYS} | {"epoch": 1, "step": 16}] if i else []
        meta = {"epoch": len(history), "step": 16 * len(history) + 3 * (1 - i),
                "step_in_epoch": 3 * (1 - i), "loss_sum": 200.0, "correct": 30, "seen": 96,
                "seconds": 1.0, "history": history, "config": config_to_ini(cfg),
                "rng": random_streams(0)[2].bit_generator.state, "run_id": "abc"}
        if network.random_layers:
            meta["layer_rngs"] = network.random_state()
        order = None if i else np.random.default_rng(0).permutation(500)
        save_checkpoint(folder / f"base{i}.npz",
                        Checkpoint(params=network.params, buffers=network.buffers,
                                   optimizer=optimizer.state_dict(), epoch_order=order,
                                   meta=meta))
    with zipfile.ZipFile(folder / "base1.npz") as zf:
        members = [(info.filename, zf.read(info)) for info in zf.infolist()]
    (folder / "base2.npz").write_bytes(zip_of(members, zipfile.ZIP_DEFLATED))


def test_mutated_checkpoints_and_meta_json_load_or_give_one_line_errors(tmp_path):
    from cnntrain.runs.checkpoint_reader import load_checkpoint
    write_bases(tmp_path)
    for base in tmp_path.glob("base*.npz"):
        load_checkpoint(base)  # the bases themselves are valid
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "tests.runs.test_fuzz_checkpoint", str(tmp_path),
                           str(CHECKPOINT_CASES), "27"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["failures"] == 0 and summary["cases"] == 2 * CHECKPOINT_CASES
    # The mutations are not all fatal: some files still load, and those pass every check.
    assert summary["checkpoints_loaded"] > 0


if __name__ == "__main__":
    found = fuzz(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    for failure in found[:20]:
        print(failure)
    sys.exit(1 if found else 0)
