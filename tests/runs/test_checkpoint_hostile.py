"""Hostile checkpoints (issue 27, cases 8 and 11): every member's name, zip entry and .npy
header is checked before its data is read, meta.json is bounded in size and depth and must be
strict JSON, generator states are checked field by field, and a weight of another dtype than
the run's is refused, not converted. Each is a one-line error in eval, fit --resume, predict,
export and serve."""

import io
import json
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib

import numpy as np
import pytest

from cnntrain.apps import serve
from cnntrain.runs.checkpoint_reader import load_checkpoint
from tests.support.checkpoints import write_checkpoint
from tests.support.clitools import assert_one_line_error, invoke, small_run_env


@pytest.fixture
def env(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir):
    env = small_run_env(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir)
    # A checkpoint that loads would otherwise serve until stopped.
    monkeypatch.setattr(serve, "serve_until_stopped", lambda server, echo: server.server_close())
    digit = tmp_path / "digit.npy"
    np.save(digit, np.zeros((28, 28), np.float32))
    env["digit"] = digit
    return env


@pytest.fixture
def good(env):
    """A checkpoint of the small network, as cnntrain writes it."""
    path = env["tmp"] / "good.npz"
    write_checkpoint(path)
    return path


def npy(array):
    """The .npy bytes np.save writes for `array`."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_header(descr, shape, fortran_order=False):
    """A .npy header alone, declaring whatever it is given."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": fortran_order, "shape": shape})
    return buffer.getvalue()


def members_of(path):
    """{member name: bytes} of a zip."""
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def with_member(good, path, name, data):
    """A copy of the checkpoint `good` with member `name` replaced by (or added as) `data`."""
    members = members_of(good)
    members[name] = data
    return write_zip(path, members)


def with_meta(good, path, text):
    return with_member(good, path, "meta.json.npy", npy(np.frombuffer(text.encode(), np.uint8)))


def edited_meta(good, path, edit):
    meta = json.loads(bytes(np.load(io.BytesIO(members_of(good)["meta.json.npy"]))).decode())
    edit(meta)
    return with_meta(good, path, json.dumps(meta))


def deflated_zeros(header, n_mib):
    """A raw deflate stream of `header` then n_mib MiB of zeros, built without compressing
    them all: after a full flush the compressor starts afresh, so each MiB compresses to the
    same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    mib = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return start + mib * n_mib + compressor.flush()


def raw_zip(path, entries):
    """A zip written by hand from (name, method, data as stored, declared size): the declared
    size is whatever it is given, as a hostile file's would be, in a zip64 field when it
    needs one. A deflated entry's CRC is left 0: reading it to the end would be the failure."""
    body, directory = b"", b""
    for name, method, data, size in entries:
        encoded = name.encode()
        crc = zlib.crc32(data) if method == zipfile.ZIP_STORED else 0
        extra = b""
        sizes = (len(data), size)
        if size >= 0xFFFFFFFF:
            extra = struct.pack("<HHQQ", 1, 16, size, len(data))
            sizes = (0xFFFFFFFF, 0xFFFFFFFF)
        fields = struct.pack("<HHHHHIIIHH", 45, 0, method, 0, 0x21, crc, *sizes, len(encoded),
                             len(extra))
        directory += (b"PK\x01\x02" + struct.pack("<H", 45) + fields
                      + struct.pack("<HHHII", 0, 0, 0, 0, len(body)) + encoded + extra)
        body += b"PK\x03\x04" + fields + encoded + extra + data
    end = struct.pack("<HHHHIIH", 0, 0, len(entries), len(entries), len(directory), len(body), 0)
    path.write_bytes(body + directory + b"PK\x05\x06" + end)
    return path


COMMANDS = {
    "eval": lambda env, path: invoke("eval", path),
    "resume": lambda env, path: invoke("fit", "--resume", path, "-q"),
    "predict": lambda env, path: invoke("predict", path, env["digit"]),
    "export": lambda env, path: invoke("export", path, "-o", env["tmp"] / "model.onnx"),
    "serve": lambda env, path: invoke("serve", path, "--port", 0),
}


def assert_refused_everywhere(env, path, *fragments):
    for run in COMMANDS.values():
        result = run(env, path)
        assert_one_line_error(result, 1, str(path), *fragments)
    assert not (env["tmp"] / "model.onnx").exists()


# ------------------------------------------------------------------ case 8

def test_a_deeply_nested_meta_json_is_refused_without_recursion(env, good):
    path = with_meta(good, env["tmp"] / "deep.npz", "[" * 100_000 + "]" * 100_000)
    assert_refused_everywhere(env, path, "meta.json", "nests 100000 levels deep, more than 64")


def test_brackets_inside_strings_do_not_count_as_depth(env, good):
    path = edited_meta(good, env["tmp"] / "brackets.npz",
                       lambda meta: meta.update(run_id="[" * 1000 + "{" * 1000))
    assert load_checkpoint(path).meta["run_id"].startswith("[[[")


def test_a_plain_text_member_is_not_taken_for_an_array(env, good):
    path = with_member(good, env["tmp"] / "text.npz", "meta.json.npy", b'{"epoch": 1}')
    assert_refused_everywhere(env, path, "member \"meta.json.npy\"", "is not a .npy array")


def test_a_member_declaring_more_than_it_holds_is_refused_before_reading(env, good):
    path = with_member(good, env["tmp"] / "huge.npz", "param/conv1.W.npy",
                       npy_header("<f4", (10 ** 12,)) + bytes(100))
    assert_refused_everywhere(env, path, "member \"param/conv1.W.npy\"",
                              "declares shape (1000000000000,) of float32 (4000000000000 bytes)",
                              "holds 100")


HEADERS = {
    "fortran order": (npy_header("<f4", (8, 1, 5, 5), fortran_order=True) + bytes(800),
                      "Fortran order"),
    "structured": (npy_header([("a", "<f4")], (200,)) + bytes(800), "structured"),
    "complex": (npy_header("<c8", (100,)) + bytes(800), "complex64 data, not numbers"),
    "strings": (npy_header("<U10", (20,)) + bytes(800), "data, not numbers"),
    "negative size": (npy_header("<f4", (-1, 200)) + bytes(800), "not up to 8 sizes >= 0"),
    "too many dimensions": (npy_header("<f4", (1,) * 9) + bytes(4), "not up to 8 sizes"),
    "bad version": (b"\x93NUMPY\x09\x00" + npy_header("<f4", (2,))[8:] + bytes(8), "version"),
    "header code": (b"\x93NUMPY\x01\x00\x20\x00" + b"__import__('os').getcwd() ".ljust(32),
                    "unreadable .npy header"),
}


@pytest.mark.parametrize("kind", list(HEADERS))
def test_hostile_npy_headers_are_refused_naming_the_member(env, good, kind):
    data, fragment = HEADERS[kind]
    path = with_member(good, env["tmp"] / "header.npz", "param/conv2.W.npy", data)
    assert_one_line_error(invoke("eval", path), 1, str(path), "param/conv2.W.npy", fragment)


def test_a_member_outside_the_format_is_refused(env, good):
    path = with_member(good, env["tmp"] / "extra.npz", "../evil.npy", npy(np.ones(3)))
    assert_one_line_error(invoke("eval", path), 1, str(path), '"../evil.npy"',
                          "is not a member of a cnntrain checkpoint")


@pytest.mark.parametrize("n_mib", [3700, 8192])
def test_a_zip_bomb_is_refused_without_decompressing_it(good, tmp_path, n_mib):
    """3.7 GiB of zeros in a 4 MB member, or 8 GiB in a 9 MB one (sizes in zip64 fields), read
    under a 1 GiB address-space cap: reading it whole would fail with MemoryError, not the
    refusal."""
    header = npy_header("<f4", ((n_mib << 20) // 4,))
    meta = members_of(good)["meta.json.npy"]
    bomb = raw_zip(tmp_path / "bomb.npz", [
        ("meta.json.npy", zipfile.ZIP_STORED, meta, len(meta)),
        ("param/conv1.W.npy", zipfile.ZIP_DEFLATED, deflated_zeros(header, n_mib),
         len(header) + (n_mib << 20))])
    assert bomb.stat().st_size < 10 << 20
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from cnntrain.runs.checkpoint_reader import load_checkpoint
        from cnntrain.errors import CheckpointError
        try:
            load_checkpoint({str(bomb)!r})
        except CheckpointError as exc:
            print(exc)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=dict(__import__("os").environ,
                                                OPENBLAS_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert "member \"param/conv1.W.npy\" declares" in proc.stdout
    assert "more than 64-fold (a zip bomb" in proc.stdout


def test_a_compressed_checkpoint_of_weights_is_still_read(env, good):
    path = write_zip(env["tmp"] / "compressed.npz", members_of(good), zipfile.ZIP_DEFLATED)
    result = invoke("eval", path)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout


def test_a_member_cut_short_is_refused(env, good):
    whole = members_of(good)["param/dense1.W.npy"]
    path = with_member(good, env["tmp"] / "short.npz", "param/dense1.W.npy", whole[:-40])
    assert_one_line_error(invoke("eval", path), 1, str(path), "param/dense1.W.npy",
                          "its zip entry holds")


# ------------------------------------------------------------------ case 11

def test_nan_in_a_hand_edited_history_is_refused(env):
    assert invoke("fit", "--config", env["config"], "-q", "--set", "train.epochs=1").exit_code == 0
    last = env["run"] / "checkpoints" / "last.npz"
    path = edited_meta(last, env["tmp"] / "nan.npz",
                       lambda meta: meta["history"][0].update(val_loss=float("nan")))
    for command in ("eval", "resume", "predict", "export", "serve"):
        assert_one_line_error(COMMANDS[command](env, path), 1, str(path), "meta.json",
                              "it holds NaN, which is not a number JSON allows")


def test_a_history_that_could_not_be_scored_is_saved_as_null(env, good, tmp_path):
    from cnntrain.runs.checkpoint import save_checkpoint
    ckpt = load_checkpoint(good)
    ckpt.meta.update(epoch=1, history=[dict.fromkeys(
        ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
         "test_acc", "seconds", "images_per_s"), 1.0)])
    ckpt.meta["history"][0].update(epoch=1, step=16, test_loss=float("inf"))
    save_checkpoint(tmp_path / "inf.npz", ckpt)
    assert load_checkpoint(tmp_path / "inf.npz").meta["history"][0]["test_loss"] is None


RNG_EDITS = {
    "inc text": (lambda rng: rng["state"].update(inc="5"), "'rng' field 'state.inc' is \"5\""),
    "state too big": (lambda rng: rng["state"].update(state=1 << 130), "'state.state' is"),
    "other generator": (lambda rng: rng.update(bit_generator="MT19937"),
                        "'bit_generator' is \"MT19937\""),
    "has_uint32 two": (lambda rng: rng.update(has_uint32=2), "'has_uint32' is 2"),
    "uinteger negative": (lambda rng: rng.update(uinteger=-1), "'uinteger' is -1"),
    "field missing": (lambda rng: rng.pop("uinteger"), "not a generator state"),
}


@pytest.mark.parametrize("edit", list(RNG_EDITS))
def test_a_hand_edited_generator_state_is_refused_naming_the_field(env, edit):
    assert invoke("fit", "--config", env["config"], "-q", "--set", "train.epochs=1").exit_code == 0
    change, fragment = RNG_EDITS[edit]
    path = edited_meta(env["run"] / "checkpoints" / "last.npz", env["tmp"] / "rng.npz",
                       lambda meta: change(meta["rng"]))
    for command in ("resume", "eval"):
        assert_one_line_error(COMMANDS[command](env, path), 1, str(path), fragment,
                              "edited or damaged")


def test_a_layer_generator_state_is_checked_too(env, good):
    path = edited_meta(good, env["tmp"] / "layer-rng.npz", lambda meta: meta.update(
        layer_rngs={"dropout1": {"bit_generator": "PCG64", "state": {"state": 1, "inc": "x"},
                                 "has_uint32": 0, "uinteger": 0}}))
    assert_one_line_error(invoke("eval", path), 1, "'layer_rngs' \"dropout1\" field 'state.inc'")


@pytest.mark.parametrize("dtype", ["int64", "float16", "float64"])
def test_weights_of_another_dtype_are_refused_not_converted(env, dtype):
    assert invoke("fit", "--config", env["config"], "-q", "--set", "train.epochs=1").exit_code == 0
    last = env["run"] / "checkpoints" / "last.npz"
    weights = np.load(io.BytesIO(members_of(last)["param/conv1.W.npy"]))
    path = with_member(last, env["tmp"] / f"{dtype}.npz", "param/conv1.W.npy",
                       npy(weights.astype(dtype)))
    assert_refused_everywhere(env, path, f"member param/conv1.W holds {dtype}",
                              "train.dtype is float32")


def test_a_velocity_of_another_dtype_is_refused_on_resume(env):
    assert invoke("fit", "--config", env["config"], "-q", "--set", "train.epochs=1").exit_code == 0
    last = env["run"] / "checkpoints" / "last.npz"
    velocity = np.load(io.BytesIO(members_of(last)["optim/dense2.b.v.npy"]))
    path = with_member(last, env["tmp"] / "velocity.npz", "optim/dense2.b.v.npy",
                       npy(velocity.astype(np.float64)))
    assert_one_line_error(COMMANDS["resume"](env, path), 1, str(path),
                          "member optim/dense2.b.v holds float64")


def test_a_fifo_is_refused_without_blocking(env, tmp_path):
    import os
    fifo = tmp_path / "ckpt.npz"
    os.mkfifo(fifo)
    assert_one_line_error(invoke("eval", fifo), 1, str(fifo), "not a regular file")


def test_meta_json_bounds_are_exact_and_strings_are_not_counted():
    from cnntrain.runs.checkpoint_reader import MAX_JSON_DEPTH, parse_meta
    nested = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    assert parse_meta(f'{{"a": {nested}}}'.encode())["a"]
    with pytest.raises(ValueError, match="nests 65 levels deep, more than 64"):
        parse_meta(f'{{"a": [{nested}]}}'.encode())
    assert parse_meta(b'{"a": "\\"' + b"[" * 65 + b'"}')
    with pytest.raises(ValueError, match="more than 10"):
        parse_meta(b'{"a": 12345678}', max_bytes=10)
    for constant in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ValueError, match=f"it holds {constant}"):
            parse_meta(f'{{"a": {constant}}}'.encode())
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_meta(b"[1]")


# ------------------------------------------------------------------ case 8: the network's needs
# Each member's shape and dtype is compared with what the network of the checkpoint's own
# config needs before any array of it is read: only meta.json (which says what that network
# is) is read first. The reader is patched to record what it reads.

@pytest.fixture
def reads(monkeypatch):
    """The members whose data load_checkpoint reads, in order."""
    from cnntrain.runs import checkpoint_reader
    read, recorded = checkpoint_reader._read_array, []

    def recording(zf, member, *args):
        recorded.append(member.info.filename)
        return read(zf, member, *args)

    monkeypatch.setattr(checkpoint_reader, "_read_array", recording)
    return recorded


def resumable(path, order_size=500, **sections):
    """A checkpoint as a stop mid-epoch saves it: weights, velocities, training generator and
    the epoch's order (500 training images: synthetic MNIST's 600 less the small config's 100
    held out)."""
    from cnntrain.config import config_to_ini
    from cnntrain.runs.build import build_optimizer, random_streams
    from cnntrain.runs.checkpoint import Checkpoint, save_checkpoint
    from tests.support.checkpoints import make_network
    network, cfg = make_network(**sections)
    meta = {"epoch": 0, "step": 3, "step_in_epoch": 3, "loss_sum": 6.0, "correct": 30,
            "seen": 96, "seconds": 1.0, "history": [], "config": config_to_ini(cfg),
            "rng": random_streams(0)[2].bit_generator.state}
    save_checkpoint(path, Checkpoint(
        params=network.params, buffers=network.buffers,
        optimizer=build_optimizer(cfg, network).state_dict(),
        epoch_order=np.random.default_rng(0).permutation(order_size), meta=meta))
    return path


HUGE = 12 << 20  # float32 values: 48 MiB of zeros, which deflate to about 48 KiB


def test_a_huge_member_of_the_wrong_shape_is_refused_before_any_array_is_read(env, reads):
    base = resumable(env["tmp"] / "base.npz")
    members = members_of(base)
    members["param/conv1.W.npy"] = npy(np.zeros(HUGE, np.float32))
    path = write_zip(env["tmp"] / "huge-shape.npz", members, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    for command, run in COMMANDS.items():
        reads.clear()
        result = run(env, path)
        assert_one_line_error(result, 1, str(path),
                              f"member param/conv1.W holds float32 of shape ({HUGE},)",
                              "needs float32 of shape (4, 1, 5, 5)")
        assert reads == ["meta.json.npy"], command


def changed(base, path, edit):
    members = members_of(base)
    edit(members)
    return write_zip(path, members)


def _as(name, value):
    return lambda members: members.update({name: npy(value)})


def _drop(name):
    return lambda members: members.pop(name)


NEEDS = {
    "wrong shape": (_as("param/dense2.W.npy", np.zeros((10, 32), np.float32)),
                    "member param/dense2.W holds float32 of shape (10, 32), but its config "
                    "(train.dtype is float32) needs float32 of shape (32, 10)"),
    "wrong dtype": (_as("param/conv1.W.npy", np.zeros((4, 1, 5, 5), np.int64)),
                    "member param/conv1.W holds int64 of shape (4, 1, 5, 5), but its config "
                    "(train.dtype is float32) needs float32 of shape (4, 1, 5, 5)"),
    "missing weight": (_drop("param/dense2.b.npy"),
                       "it has no member param/dense2.b, which its config (train.dtype is "
                       "float32) needs (float32 of shape (10,))"),
    "extra weight": (_as("param/dense3.W.npy", np.zeros(3, np.float32)),
                     "member param/dense3.W (float32 of shape (3,)) is not part of what its "
                     "config"),
    "extra buffer": (_as("buffer/batchnorm1.running_mean.npy", np.zeros(4, np.float32)),
                     "member buffer/batchnorm1.running_mean (float32 of shape (4,)) is not part"),
    "extra velocity": (_as("optim/conv9.W.v.npy", np.zeros(4, np.float32)),
                       "member optim/conv9.W.v (float32 of shape (4,)) is not part"),
    "velocity shape": (_as("optim/dense1.b.v.npy", np.zeros(33, np.float32)),
                       "member optim/dense1.b.v holds float32 of shape (33,), but its config "
                       "(train.dtype is float32) needs float32 of shape (32,)"),
    "order too long": (_as("epoch_order.npy", np.arange(70_000)),
                       "member epoch_order holds int64 of shape (70000,), but its config "
                       "(train.dtype is float32) needs int64 of shape (1..59900,)"),
    "order of floats": (_as("epoch_order.npy", np.arange(500.0)),
                        "member epoch_order holds float64 of shape (500,), but its config "
                        "(train.dtype is float32) needs int64"),
}


@pytest.mark.parametrize("case", list(NEEDS))
def test_what_the_network_does_not_need_is_refused_before_reading_it(env, reads, case):
    """In eval (which today read every array first, or evaluated a checkpoint whose
    epoch_order no training split has)."""
    edit, fragment = NEEDS[case]
    path = changed(resumable(env["tmp"] / "base.npz"), env["tmp"] / "edited.npz", edit)
    reads.clear()
    assert_one_line_error(invoke("eval", path), 1, str(path), fragment,
                          "edited or damaged, or made for another network")
    assert reads == ["meta.json.npy"]


def test_a_resume_needs_every_velocity_before_reading(env, reads):
    path = changed(resumable(env["tmp"] / "base.npz"), env["tmp"] / "no-velocity.npz",
                   _drop("optim/conv2.W.v.npy"))
    reads.clear()
    assert_one_line_error(COMMANDS["resume"](env, path), 1, str(path),
                          "it has no member optim/conv2.W.v, which its config (train.dtype is "
                          "float32) needs (float32 of shape (8, 4, 5, 5))")
    assert reads == ["meta.json.npy"]


def test_an_epoch_order_must_have_the_configured_training_size(env, reads):
    """train_size = 400: the order of 500 images cannot be this run's."""
    path = resumable(env["tmp"] / "sized.npz", data={"val_size": 100, "train_size": 400})
    reads.clear()
    for command in ("eval", "resume"):
        assert_one_line_error(COMMANDS[command](env, path), 1, str(path),
                              "member epoch_order holds int64 of shape (500,)",
                              "needs int64 of shape (400,)")
    assert reads == ["meta.json.npy"] * 2


def test_what_cnntrain_writes_passes_the_needs(env, tmp_path):
    """The checks refuse nothing cnntrain writes: a mid-epoch checkpoint with velocities, a
    checkpoint of weights alone (velocities are not needed to evaluate), and weights stored
    big-endian (the same numbers; read in the machine's order)."""
    from cnntrain.runs.build import NetworkLayout, load_network
    path = resumable(tmp_path / "mid.npz")
    assert load_checkpoint(path, NetworkLayout(path, resume=True)).epoch_order.shape == (500,)
    network, cfg = write_checkpoint(tmp_path / "weights.npz")
    assert load_network(tmp_path / "weights.npz")[2].n_params == network.n_params
    weights = network.params["conv1.W"]
    swapped = changed(tmp_path / "weights.npz", tmp_path / "big-endian.npz",
                      _as("param/conv1.W.npy", weights.astype(">f4")))
    np.testing.assert_array_equal(load_network(swapped)[2].params["conv1.W"], weights)


def test_a_member_larger_than_memory_is_refused_by_its_shape_under_a_memory_cap(good, tmp_path):
    """1.5 GiB of zeros declared by param/conv1.W, which needs (4, 1, 5, 5): within the zip
    bomb bound, as the file also stores 24 MiB of random weights (an extra member), and read
    by Predictor.from_checkpoint under a 1 GiB address-space cap, where reading it would fail
    with MemoryError instead of the refusal."""
    n_mib = 1536
    header = npy_header("<f4", ((n_mib << 20) // 4,))
    entries = [(name, zipfile.ZIP_STORED, data, len(data))
               for name, data in members_of(good).items() if name != "param/conv1.W.npy"]
    padding = npy(np.random.default_rng(0).random(6 << 20, dtype=np.float32))
    entries += [("param/conv1.W.npy", zipfile.ZIP_DEFLATED, deflated_zeros(header, n_mib),
                 len(header) + (n_mib << 20)),
                ("param/padding.W.npy", zipfile.ZIP_STORED, padding, len(padding))]
    path = raw_zip(tmp_path / "large.npz", entries)
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from cnntrain.errors import CheckpointError
        from cnntrain.apps.inference import Predictor
        try:
            Predictor.from_checkpoint({str(path)!r})
        except CheckpointError as exc:
            print(exc)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=dict(__import__("os").environ,
                                                OPENBLAS_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (f"member param/conv1.W holds float32 of shape ({(n_mib << 20) // 4},), but its "
            "config (train.dtype is float32) needs float32 of shape (4, 1, 5, 5)") in proc.stdout
