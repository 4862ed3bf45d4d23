"""Issue 27, cases 4 and 7 (and case 11's `export -o DIR` / `-o ''`): what cnntrain does with an
output path that is not a plain new or regular file, and with closed standard streams.

A device, FIFO, socket or /dev/stdout is written through and stays what it was; a symbolic link
stays a link while its target is replaced atomically; a folder, an empty path or a block device
is refused in one line naming what the user gave. Every command behaves with stdout, stderr or
both closed as it does with a terminal.
"""

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest

from cnntrain import fileio
from tests.support import proctools
from tests.support.clitools import assert_one_line_error, invoke, small_config, use_synthetic_mnist

# ------------------------------------------------------------------ the machine's own nodes

SYSTEM_NODES = ("/dev/null", "/dev/full", "/dev/stdout", "/dev/stderr")


def node_state(path):
    info = os.lstat(path)
    return info.st_mode, info.st_rdev, os.readlink(path) if stat.S_ISLNK(info.st_mode) else None


def restore_node(path, state):
    mode, rdev, link = state
    os.unlink(path)
    if link is not None:
        os.symlink(link, path)
    else:
        os.mknod(path, mode, rdev)


@pytest.fixture(autouse=True)
def system_nodes_stay():
    """The bug this file tests turned the machine's /dev/null and /dev/stdout into regular
    files for every process after it; should it come back, put them back, then fail."""
    before = {path: node_state(path) for path in SYSTEM_NODES if os.path.lexists(path)}
    yield
    replaced = [path for path, state in before.items() if node_state(path) != state]
    for path in replaced:
        restore_node(path, before[path])
    assert not replaced, f"{replaced} were replaced (now put back)"


def device_twin(folder, name, device):
    """A node in `folder` for the same character device as `device` (/dev/null, /dev/full),
    so a test that fails cannot harm the machine's; `device` itself where mknod is not
    allowed (and where nothing could replace it either)."""
    path = Path(folder) / name
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.stat(device).st_rdev)
    except PermissionError:
        return Path(device)
    return path


def is_device_like(path, device):
    info = os.lstat(path)
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == os.stat(device).st_rdev


class FifoReader:
    """`cat FIFO` in a thread: .result() is what writers sent until the last one closed it."""

    def __init__(self, path):
        # Opened first, without waiting: a writer need not wait for the thread, and this end
        # still reaches the FIFO should its name be replaced, to release a thread nobody fed.
        self.held = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = None
        self.thread = threading.Thread(target=self._read, args=(path,), daemon=True)
        self.thread.start()

    def _read(self, path):
        with open(path, "rb") as f:
            self.data = f.read()

    def result(self, timeout=60):
        deadline = time.monotonic() + timeout
        while self.thread.is_alive() and time.monotonic() < deadline:
            os.close(os.open(f"/proc/self/fd/{self.held}", os.O_WRONLY | os.O_NONBLOCK))
            self.thread.join(0.1)
        os.close(self.held)
        return self.data


class SocketReader:
    """A UNIX stream socket at `path` taking one connection in a thread; .result() is what
    it received, None if nobody connected."""

    def __init__(self, path):
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.data = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            connection, _ = self.server.accept()
        except OSError:  # shut down by result(): nobody came
            return
        with connection:
            chunks = []
            while chunk := connection.recv(1 << 16):
                chunks.append(chunk)
        self.data = b"".join(chunks)

    def result(self, timeout=60):
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.shutdown(socket.SHUT_RDWR)
            self.thread.join(timeout)
        self.server.close()
        return self.data


# ------------------------------------------------------------------ one small run to write from

@pytest.fixture(scope="module")
def world(tmp_path_factory, synthetic_mnist):
    """A one-epoch run on synthetic MNIST, a picture of a digit, and the data environment
    (kept in place for the module's tests, for eval and plot --maps)."""
    tmp = tmp_path_factory.mktemp("special")
    data_dir = synthetic_mnist.write(tmp / "mnist")
    config = tmp / "small.ini"
    config.write_text(small_config(train={"epochs": 1}))
    run = tmp / "runs" / "base"
    np.save(tmp / "digit.npy", synthetic_mnist.test_images[0])
    with pytest.MonkeyPatch.context() as mp:
        use_synthetic_mnist(mp, synthetic_mnist, data_dir)
        result = invoke("fit", "--config", config, "--out", run, "-q")
        assert result.exit_code == 0, result.output
        yield {"tmp": tmp, "config": config, "run": run, "data_dir": data_dir,
               "checkpoint": run / "checkpoints" / "best.npz", "digit": tmp / "digit.npy",
               "table": synthetic_mnist.table}


# Each command that writes a file the user names: its arguments for output `out`, and a name
# such a file would have.
WRITERS = {
    "export": (lambda w, out: ["export", w["checkpoint"], "-o", out], "model.onnx"),
    "plot": (lambda w, out: ["plot", w["run"], "-o", out], "curves.png"),
    "plot --filters": (lambda w, out: ["plot", "--filters", w["checkpoint"], "-o", out],
                       "filters.png"),
    "summarize --csv": (lambda w, out: ["summarize", w["run"], "--csv", out], "runs.csv"),
    "eval --errors": (lambda w, out: ["eval", w["checkpoint"], "--errors", out, "--json"],
                      "errors.png"),
}


def write_with(world, writer, out):
    arguments, _ = WRITERS[writer]
    return invoke(*arguments(world, out))


def as_a_regular_file(world, writer, tmp_path):
    """The bytes `writer` puts into a regular file: what a device or FIFO must receive."""
    out = tmp_path / "regular" / WRITERS[writer][1]
    result = write_with(world, writer, out)
    assert result.exit_code == 0, result.output
    return out.read_bytes()


# ------------------------------------------------------------------ devices, FIFOs, sockets

@pytest.mark.parametrize("writer", WRITERS)
def test_a_character_device_is_written_through_and_stays_a_device(world, writer, tmp_path):
    node = device_twin(tmp_path, WRITERS[writer][1], "/dev/null")
    result = write_with(world, writer, node)
    assert result.exit_code == 0, result.output
    assert is_device_like(node, "/dev/null")


@pytest.mark.parametrize("writer", WRITERS)
def test_a_full_device_is_a_one_line_error_naming_the_path_given(world, writer, tmp_path):
    node = device_twin(tmp_path, WRITERS[writer][1], "/dev/full")
    result = write_with(world, writer, node)
    assert_one_line_error(result, 1, "No space left on device", str(node))
    assert ".tmp" not in result.stderr
    assert is_device_like(node, "/dev/full")


@pytest.mark.parametrize("writer", WRITERS)
def test_a_fifo_gets_the_whole_output_and_stays_a_fifo(world, writer, tmp_path):
    expected = as_a_regular_file(world, writer, tmp_path)
    fifo = tmp_path / WRITERS[writer][1]
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    result = write_with(world, writer, fifo)
    received = reader.result()
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert received == expected
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("writer", ["export", "summarize --csv"])
def test_a_unix_socket_gets_the_whole_output_and_stays_a_socket(world, writer, tmp_path):
    expected = as_a_regular_file(world, writer, tmp_path)
    path = tmp_path / WRITERS[writer][1]
    reader = SocketReader(path)
    result = write_with(world, writer, path)
    received = reader.result()
    assert result.exit_code == 0, result.output
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert received == expected


def test_a_socket_nobody_listens_on_is_a_one_line_error(world, tmp_path):
    path = tmp_path / "gone.csv"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))  # bound, never listening: as a server that has died
        result = write_with(world, "summarize --csv", path)
    assert_one_line_error(result, 1, "Connection refused", str(path))
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


@pytest.mark.skipif(not hasattr(os, "mknod"), reason="no mknod")
def test_a_block_device_is_refused_and_left_alone(world, tmp_path):
    node = tmp_path / "disk.onnx"
    try:
        os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    except PermissionError:
        pytest.skip("making a block device node needs root")
    result = write_with(world, "export", node)
    assert_one_line_error(result, 2, f"{node} is a block device", "give the name of a file")
    assert stat.S_ISBLK(os.lstat(node).st_mode)


# ------------------------------------------------------------------ /dev/stdout

def launcher(world, *args):
    """The command line of the real CLI on the world's synthetic MNIST (tests.support.proctools)."""
    return [sys.executable, "-c", proctools.LAUNCHER, json.dumps(world["table"]), "{}",
            *map(str, args)]


def in_shell(world, script, *args, **run):
    """bash -c SCRIPT with args as $1...; bytes in and out."""
    run.setdefault("capture_output", True)
    return subprocess.run(["bash", "-c", script, "cnntrain", *args], timeout=300,
                          env=proctools.child_env(world["data_dir"]), cwd=world["tmp"], **run)


def cnntrain(world, *args, redirect=""):
    """The real CLI in a child process; `redirect` is shell redirections applied to it, such
    as '>&-' to start it with stdout closed."""
    return in_shell(world, f'exec "$@" {redirect}', *launcher(world, *args))


@pytest.fixture(params=["/dev/stdout", "a link to /proc/self/fd/1"])
def stdout_name(request, tmp_path):
    """/dev/stdout itself, and a link of the same kind in tmp_path (what the tests of the
    code before the fix were run with: that code replaced the machine's /dev/stdout)."""
    if request.param == "/dev/stdout":
        return "/dev/stdout"
    link = tmp_path / "stdout.out"
    link.symlink_to("/proc/self/fd/1")
    return str(link)


def test_export_to_dev_stdout_sends_exactly_the_model_down_the_pipe(world, tmp_path,
                                                                    stdout_name):
    expected = as_a_regular_file(world, "export", tmp_path)
    done = cnntrain(world, "export", world["checkpoint"], "-o", stdout_name)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected
    onnx.checker.check_model(onnx.load_from_string(done.stdout))
    # The line saying so goes to stderr: on stdout it would follow the model's bytes.
    assert done.stderr.decode().startswith(f"wrote {stdout_name}: ")
    assert os.path.islink(stdout_name)


def test_dev_stdout_writes_where_the_shell_left_off(world, tmp_path, stdout_name):
    """`{ echo header; cnntrain summarize RUN --csv /dev/stdout; } > FILE`: the CSV follows
    the table, after the header; nothing is replaced, nothing written over."""
    expected_csv = as_a_regular_file(world, "summarize --csv", tmp_path)
    listing = tmp_path / "listing.txt"
    done = in_shell(world, 'out=$1; shift; { echo header; "$@"; } >> "$out"', listing,
                    *launcher(world, "summarize", world["run"], "--csv", stdout_name))
    assert done.returncode == 0, done.stderr
    table = invoke("summarize", world["run"]).stdout.encode()
    assert listing.read_bytes() == b"header\n" + table + expected_csv
    assert done.stderr.decode() == f"wrote {stdout_name}\n"
    assert os.path.islink(stdout_name)


def test_a_picture_to_dev_stdout_needs_no_png_name(world, tmp_path, stdout_name):
    expected = as_a_regular_file(world, "plot --filters", tmp_path)
    done = cnntrain(world, "plot", "--filters", world["checkpoint"], "-o", stdout_name)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected


# ------------------------------------------------------------------ symbolic links

def test_a_link_to_a_file_stays_a_link_and_its_target_is_replaced_atomically(world, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "real.png").write_bytes(b"an older picture")
    link = tmp_path / "latest.png"
    link.symlink_to(Path("elsewhere") / "real.png")  # relative, as ln -s makes them
    result = write_with(world, "plot", link)
    assert result.exit_code == 0, result.output
    assert os.readlink(link) == str(Path("elsewhere") / "real.png")
    assert (elsewhere / "real.png").read_bytes() == as_a_regular_file(world, "plot", tmp_path)
    assert not list(tmp_path.rglob(".*.tmp"))


def test_a_dangling_link_gets_its_target_made(world, tmp_path):
    link = tmp_path / "runs.csv"
    link.symlink_to(tmp_path / "tables" / "runs.csv")
    result = write_with(world, "summarize --csv", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink()
    assert (tmp_path / "tables" / "runs.csv").read_bytes() == \
        as_a_regular_file(world, "summarize --csv", tmp_path)


def test_a_link_to_a_folder_is_refused_naming_the_link(world, tmp_path):
    (tmp_path / "pictures").mkdir()
    link = tmp_path / "out.png"
    link.symlink_to(tmp_path / "pictures")
    result = write_with(world, "plot", link)
    assert_one_line_error(result, 2, f"{link} leads to {tmp_path / 'pictures'}, which is a folder")
    assert link.is_symlink() and not list((tmp_path / "pictures").iterdir())


def test_a_loop_of_links_is_a_one_line_error(world, tmp_path):
    (tmp_path / "a.onnx").symlink_to("b.onnx")
    (tmp_path / "b.onnx").symlink_to("a.onnx")
    result = write_with(world, "export", tmp_path / "a.onnx")
    assert_one_line_error(result, 1, "Too many levels of symbolic links", str(tmp_path / "a.onnx"))
    assert os.readlink(tmp_path / "a.onnx") == "b.onnx"


# ------------------------------------------------------------------ refused paths

@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("kind", ["empty", "folder", "folder/", "new folder/"])
def test_a_folder_or_an_empty_path_is_refused_naming_what_was_given(world, writer, kind,
                                                                    tmp_path):
    folder = tmp_path / "out.png"  # a name a picture could have: refused for being a folder
    folder.mkdir()
    given = {"empty": "", "folder": str(folder), "folder/": f"{folder}/",
             "new folder/": f"{tmp_path / 'new'}/"}[kind]
    named = {"empty": "the output path '' is empty"}.get(kind, given)
    result = write_with(world, writer, given)
    assert_one_line_error(result, 2, named, "give the name of a file to write")
    assert ".tmp" not in result.stderr
    assert not list(folder.iterdir()) and not (tmp_path / "new").exists()


# ------------------------------------------------------------------ errors name the path given

@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_write_names_the_path_given_never_a_temporary_file(world, tmp_path,
                                                                    monkeypatch, failing):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the user's older model")
    real = getattr(os, failing)

    def fail(*args):
        if failing == "replace":  # as the kernel would report it: the names of the call
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(args[0]), None, str(args[1]))
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fileio.os, failing, fail)
    result = write_with(world, "export", out)
    monkeypatch.setattr(fileio.os, failing, real)
    assert_one_line_error(result, 1, f"Input/output error: {out}")
    assert ".tmp" not in result.stderr
    assert out.read_bytes() == b"the user's older model" and not list(tmp_path.glob(".*"))


# ------------------------------------------------------------------ closed standard streams

CLOSED = {"stdout": ">&-", "stderr": "2>&-", "stdout and stderr": ">&- 2>&-"}


def test_fit_trains_as_usual_whatever_standard_stream_is_closed(world):
    """`cnntrain fit ... >&-` died of 'NoneType' object has no attribute 'isatty' and made no
    run; with stderr or both closed too it must train, log and save as usual."""
    for name, redirect in CLOSED.items():
        out = world["tmp"] / "runs" / f"closed {name}"
        done = cnntrain(world, "fit", "--config", world["config"], "--out", out,
                        "--set", "train.epochs=2", redirect=redirect)
        assert done.returncode == 0, (name, done.stderr)
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in metrics] == [1, 2], name
        assert json.loads((out / "summary.json").read_text())["epochs"] == 2, name
        assert {p.name for p in (out / "checkpoints").iterdir()} == {"best.npz", "last.npz"}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_until_answered(world, redirect):
    """Start serve with `redirect`, wait for its API to answer, stop it with SIGTERM; its exit
    code, or None if it never answered."""
    port = free_port()
    command = launcher(world, "serve", world["checkpoint"], "--port", port)
    proc = subprocess.Popen(["bash", "-c", f'exec "$@" {redirect}', "cnntrain", *command],
                            env=proctools.child_env(world["data_dir"]), cwd=world["tmp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/model", timeout=10):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            return None
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_every_command_behaves_with_closed_standard_streams_as_with_a_terminal(world):
    """Each command, with stdout, stderr or both closed: the exit code it has with a terminal,
    and the file it writes. (Before: fit failed with stdout closed; eval, download and
    gradcheck with both closed.)"""
    w, tmp = world, world["tmp"]
    commands = [  # (arguments, exit code, file it makes)
        (["eval", w["checkpoint"]], 0, None),
        (["eval", w["checkpoint"], "--errors", tmp / "errors.png"], 0, tmp / "errors.png"),
        (["eval", tmp / "missing.npz"], 1, None),
        (["download"], 0, None),
        (["info", "--config", w["config"]], 0, None),
        (["gradcheck", "--config", w["config"], "--images", "2", "--probes", "2"], 0, None),
        (["summarize", w["run"], "--csv", tmp / "runs.csv"], 0, tmp / "runs.csv"),
        (["plot", w["run"], "-o", tmp / "curves.png"], 0, tmp / "curves.png"),
        (["plot", "--maps", w["checkpoint"], "-o", tmp / "maps.png"], 0, tmp / "maps.png"),
        (["predict", w["checkpoint"], w["digit"]], 0, None),
        (["export", w["checkpoint"], "-o", tmp / "model.onnx"], 0, tmp / "model.onnx"),
        (["runinfo", w["run"], "state"], 0, None),
        (["fit", "--config", w["config"], "--set", "train.lr=oops"], 2, None),
        (["--help"], 0, None),
    ]
    for name, redirect in CLOSED.items():
        for arguments, code, made in commands:
            if made is not None:
                made.unlink(missing_ok=True)
            done = cnntrain(world, *arguments, redirect=redirect)
            assert done.returncode == code, (name, arguments, done.stderr)
            assert made is None or made.stat().st_size > 0, (name, arguments)
        assert serve_until_answered(world, redirect) == 0, name
