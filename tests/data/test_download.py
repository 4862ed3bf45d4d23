"""cnntrain.data.download and the parts it drives (mirrors, cache, attempts, stream,
verifier, patience): mirror/folder resolution and the verified download.

Downloads go to a loopback server (tests/support/mnist_server.py) serving small synthetic IDX files
with the checksum table overridden for them; faults are injected per path and request count.
"""

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnntrain.data import attempts, cache, download, mirrors, patience, stream
from cnntrain.data.download import MNIST_FILES, ensure_mnist
from cnntrain.data.mirrors import DEFAULT_MIRRORS, resolve_data_dir, resolve_mirrors
from cnntrain.errors import DataError
from tests.support.mnist_server import (
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    free_port,
)

REPO = Path(__file__).resolve().parents[2]
MANIFEST = ".cnntrain-verified.json"


@pytest.fixture(autouse=True)
def sleeps(monkeypatch):
    """Record the backoff waits instead of waiting."""
    waited = []
    monkeypatch.setattr(attempts, "_sleep", waited.append)
    return waited


@pytest.fixture
def hash_calls(monkeypatch):
    """Count the re-hashing of cached files."""
    calls = []
    real = cache._sha256_file

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(cache, "_sha256_file", counting)
    return calls


def fetch(data_dir, mirrors, synthetic, **kwargs):
    kwargs = {"progress": False, "files": synthetic.table, "timeout": (2, 5), "retries": 2,
              "backoff": 0.01, **kwargs}
    return ensure_mnist(data_dir, mirrors, **kwargs)


def assert_complete(data_dir, synthetic):
    for name, raw in synthetic.raw.items():
        assert (data_dir / name).read_bytes() == raw, name
    assert not list(data_dir.glob("*.part"))


def dead_mirror():
    return f"http://127.0.0.1:{free_port()}/"


# --------------------------------------------------------------------------- resolution


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("CNNTRAIN_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "cnntrain" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid per XDG: ignored
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "cnntrain" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "cnntrain" / "mnist"
    assert resolve_data_dir(config_dir=str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert resolve_data_dir(config_dir="~/mnist") == tmp_path / "home" / "mnist"
    monkeypatch.setenv("CNNTRAIN_DATA_DIR", "")  # empty counts as unset
    assert resolve_data_dir(config_dir=str(tmp_path / "cfg")) == tmp_path / "cfg"
    monkeypatch.setenv("CNNTRAIN_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(config_dir=str(tmp_path / "cfg")) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "cli", str(tmp_path / "cfg")) == tmp_path / "cli"


def test_resolve_mirrors_precedence(monkeypatch):
    monkeypatch.delenv("CNNTRAIN_MNIST_MIRRORS", raising=False)
    assert resolve_mirrors() == list(DEFAULT_MIRRORS)
    assert resolve_mirrors(config_mirrors=("http://cfg/m",)) == ["http://cfg/m/", *DEFAULT_MIRRORS]
    monkeypatch.setenv("CNNTRAIN_MNIST_MIRRORS", " ")
    assert resolve_mirrors(config_mirrors=["http://cfg/"]) == ["http://cfg/", *DEFAULT_MIRRORS]
    monkeypatch.setenv("CNNTRAIN_MNIST_MIRRORS", "http://e1/, /srv/mnist ,http://e2/")
    assert resolve_mirrors(config_mirrors=["http://cfg/"]) == [
        "http://e1/", "/srv/mnist", "http://e2/", *DEFAULT_MIRRORS]
    assert resolve_mirrors(["http://cli/"], ["http://cfg/"]) == ["http://cli/", *DEFAULT_MIRRORS]
    # the defaults are not repeated when given first, and keep their place after the user's
    assert resolve_mirrors([DEFAULT_MIRRORS[1], "http://cli/", "http://cli"]) == [
        DEFAULT_MIRRORS[1], "http://cli/", DEFAULT_MIRRORS[0]]
    assert "yann.lecun.com" not in " ".join(resolve_mirrors())


def test_fetch_mnist_takes_the_flags_before_the_config(monkeypatch, tmp_path, synthetic_mnist,
                                                      mnist_server):
    monkeypatch.setattr(download, "MNIST_FILES", synthetic_mnist.table)
    monkeypatch.setattr(mirrors, "DEFAULT_MIRRORS", ())
    for name in ("CNNTRAIN_DATA_DIR", "CNNTRAIN_MNIST_MIRRORS"):
        monkeypatch.delenv(name, raising=False)
    dead = dead_mirror()
    # The config's folder and mirror when no flag is given...
    folder, paths = download.fetch_mnist(config_dir=str(tmp_path / "cfg"),
                                         config_mirrors=[mnist_server.mirror("c")],
                                         progress=False)
    assert folder == tmp_path / "cfg" and sorted(paths) == sorted(synthetic_mnist.table)
    assert_complete(folder, synthetic_mnist)
    # ...and the flags' when given (the config's mirror, dead, would fail the download).
    folder, _ = download.fetch_mnist(str(tmp_path / "flag"), [mnist_server.mirror("f")],
                                     config_dir=str(tmp_path / "cfg"), config_mirrors=[dead],
                                     progress=False)
    assert folder == tmp_path / "flag"
    assert_complete(folder, synthetic_mnist)


def test_mnist_table_and_public_mirrors():
    assert MNIST_FILES["train-images-idx3-ubyte"] == (
        47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db")
    assert sorted(MNIST_FILES) == sorted([TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS])
    assert DEFAULT_MIRRORS == ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                               "https://storage.googleapis.com/cvdf-datasets/mnist/")


# --------------------------------------------------------------------------- downloading


def test_download_stores_verified_decompressed_files(mnist_server, synthetic_mnist, tmp_path):
    target = tmp_path / "new" / "dir"
    paths = fetch(target, [mnist_server.mirror("a")], synthetic_mnist)
    assert paths == {name: target / name for name in synthetic_mnist.table}
    assert_complete(target, synthetic_mnist)
    assert not list(target.glob("*.gz"))
    assert mnist_server.hits("/a/*") == 4
    manifest = json.loads((target / MANIFEST).read_text())["files"]
    for name, (size, sha) in synthetic_mnist.table.items():
        assert manifest[name]["size"] == size and manifest[name]["sha256"] == sha
        assert manifest[name]["mtime_ns"] == (target / name).stat().st_mtime_ns


def test_404_goes_to_next_mirror_without_retrying(mnist_server, synthetic_mnist, tmp_path,
                                                   sleeps):
    mnist_server.add_fault("/a/*", "status", code=404)
    fetch(tmp_path, [mnist_server.mirror("a"), mnist_server.mirror("b")], synthetic_mnist,
          retries=3)
    assert_complete(tmp_path, synthetic_mnist)
    assert mnist_server.hits("/a/*") == 4 and mnist_server.hits("/b/*") == 4
    assert sleeps == []


def test_500_is_retried_with_exponential_backoff(mnist_server, synthetic_mnist, tmp_path,
                                                 sleeps):
    mnist_server.add_fault("/a/train-labels-idx1-ubyte.gz", "status", code=500, times=2)
    fetch(tmp_path, [mnist_server.mirror("a"), mnist_server.mirror("b")], synthetic_mnist,
          retries=3, backoff=0.5)
    assert_complete(tmp_path, synthetic_mnist)
    assert mnist_server.hits("/a/train-labels*") == 3
    assert mnist_server.hits("/b/*") == 0
    assert sleeps == [0.5, 1.0]


def test_persistent_5xx_exhausts_retries_then_next_mirror(mnist_server, synthetic_mnist,
                                                          tmp_path, sleeps):
    mnist_server.add_fault("/a/*", "status", code=503)
    fetch(tmp_path, [mnist_server.mirror("a"), mnist_server.mirror("b")], synthetic_mnist,
          retries=2, backoff=0.1)
    assert_complete(tmp_path, synthetic_mnist)
    # all retries for the first file; a mirror that used them up gets one attempt per later file
    assert mnist_server.hits("/a/*") == 3 + 1 * 3
    assert sleeps == [0.1, 0.2]


def test_html_page_with_200_goes_to_next_mirror(mnist_server, synthetic_mnist, tmp_path):
    mnist_server.add_fault("/a/*", "html")
    fetch(tmp_path, [mnist_server.mirror("a"), mnist_server.mirror("b")], synthetic_mnist)
    assert_complete(tmp_path, synthetic_mnist)
    assert mnist_server.hits("/a/*") == 4  # wrong content is not retried


def test_html_page_error_says_what_was_received(mnist_server, synthetic_mnist, tmp_path):
    mnist_server.add_fault("/a/*", "html")
    with pytest.raises(DataError) as info:
        fetch(tmp_path, [mnist_server.mirror("a")], synthetic_mnist)
    message = str(info.value)
    assert mnist_server.mirror("a") in message
    assert "text/html" in message and "<!DOCTYPE html>" in message
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / TRAIN_IMAGES).exists()


@pytest.mark.parametrize("fault", ["truncate", "reset"])
def test_truncated_or_reset_response_is_retried(mnist_server, synthetic_mnist, tmp_path, sleeps,
                                                fault):
    mnist_server.add_fault("/a/train-images-idx3-ubyte.gz", fault, times=1)
    fetch(tmp_path, [mnist_server.mirror("a")], synthetic_mnist)
    assert_complete(tmp_path, synthetic_mnist)
    assert mnist_server.hits("/a/train-images*") == 2
    assert len(sleeps) == 1


def test_persistent_truncation_is_reported(mnist_server, synthetic_mnist, tmp_path):
    mnist_server.add_fault("/a/*", "truncate", keep=100)
    with pytest.raises(DataError, match=r"cut short.*\(after 3 attempts\)"):
        fetch(tmp_path, [mnist_server.mirror("a")], synthetic_mnist, retries=2)
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("before_headers", [False, True])
def test_stalled_response_times_out_and_moves_on(mnist_server, synthetic_mnist, tmp_path,
                                                 before_headers):
    mnist_server.add_fault("/a/train-images-idx3-ubyte.gz", "stall", seconds=20,
                           before_headers=before_headers)
    started = time.monotonic()
    fetch(tmp_path, [mnist_server.mirror("a"), mnist_server.mirror("b")], synthetic_mnist,
          timeout=(2, 0.3), retries=1)
    elapsed = time.monotonic() - started
    assert_complete(tmp_path, synthetic_mnist)
    assert mnist_server.hits("/a/train-images*") == 2  # retried once, then mirror b
    assert mnist_server.hits("/b/train-images*") == 1
    assert elapsed < 5, f"the read timeout did not cut the stall short ({elapsed:.1f} s)"


def test_stall_error_message(mnist_server, synthetic_mnist, tmp_path):
    mnist_server.add_fault("/a/*", "stall", seconds=20)
    with pytest.raises(DataError, match="read timed out"):
        fetch(tmp_path, [mnist_server.mirror("a")], synthetic_mnist, timeout=(2, 0.2), retries=0)


def test_wrong_checksum_goes_to_next_mirror(mnist_server, synthetic_mnist, tmp_path):
    mnist_server.add_fault("/a/*", "corrupt")
    fetch(tmp_path, [mnist_server.mirror("a"), mnist_server.mirror("b")], synthetic_mnist)
    assert_complete(tmp_path, synthetic_mnist)
    assert mnist_server.hits("/a/*") == 4
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        fetch(tmp_path / "other", [mnist_server.mirror("a")], synthetic_mnist)


def test_every_mirror_failing_lists_each_and_leaves_nothing(mnist_server, synthetic_mnist,
                                                            tmp_path):
    mnist_server.add_fault("/a/*", "status", code=404)
    mnist_server.add_fault("/b/*", "html")
    mnist_server.add_fault("/c/*", "truncate")
    dead = dead_mirror()
    mirrors = [mnist_server.mirror("a"), mnist_server.mirror("b"), mnist_server.mirror("c"), dead]
    target = tmp_path / "mnist"
    with pytest.raises(DataError) as info:
        fetch(target, mirrors, synthetic_mnist, retries=1)
    lines = str(info.value).splitlines()
    assert TRAIN_IMAGES in lines[0]
    by_mirror = {m: [line for line in lines if line.strip().startswith(m)] for m in mirrors}
    assert all(len(found) == 1 for found in by_mirror.values()), lines
    assert "HTTP 404" in by_mirror[mirrors[0]][0]
    assert "text/html" in by_mirror[mirrors[1]][0]
    assert "cut short" in by_mirror[mirrors[2]][0]
    assert "refused" in by_mirror[dead][0]
    # how to place the files by hand: which folder, which names
    assert any(str(target) in line for line in lines)
    for name in synthetic_mnist.table:
        assert any(line.strip() == name for line in lines), name
    leftovers = {p.name for p in target.iterdir()}
    assert leftovers <= {".cnntrain.lock", MANIFEST}, leftovers


def test_unreachable_mirror_is_not_retried_for_every_file(mnist_server, synthetic_mnist,
                                                          tmp_path, sleeps):
    fetch(tmp_path, [dead_mirror(), mnist_server.mirror("b")], synthetic_mnist, retries=2)
    assert_complete(tmp_path, synthetic_mnist)
    assert len(sleeps) == 2  # the retries of the first file only


def test_failure_keeps_verified_files_and_names_the_missing(mnist_server, synthetic_mnist,
                                                            tmp_path):
    mnist_server.add_fault(f"/a/{TEST_IMAGES}.gz", "status", code=404)
    with pytest.raises(DataError) as info:
        fetch(tmp_path, [mnist_server.mirror("a")], synthetic_mnist)
    lines = [line.strip() for line in str(info.value).splitlines()]
    assert TEST_IMAGES in lines and TEST_LABELS in lines
    assert TRAIN_IMAGES not in lines and TRAIN_LABELS not in lines
    assert (tmp_path / TRAIN_IMAGES).read_bytes() == synthetic_mnist.raw[TRAIN_IMAGES]
    assert not (tmp_path / TEST_IMAGES).exists() and not list(tmp_path.glob("*.part"))
    # the next call fetches only what is missing
    before = mnist_server.hits()
    fetch(tmp_path, [mnist_server.mirror("b")], synthetic_mnist)
    assert_complete(tmp_path, synthetic_mnist)
    assert mnist_server.hits() - before == 2


_CHILD = r"""
import json, sys, time
from pathlib import Path
from cnntrain.data.download import ensure_mnist

cfg = json.loads(sys.argv[1])
Path(cfg["ready"]).touch()
deadline = time.monotonic() + 30
while not all(Path(p).exists() for p in cfg["everyone"]):  # start both downloads together
    if time.monotonic() > deadline:
        sys.exit("barrier timed out")
    time.sleep(0.002)
files = {name: tuple(entry) for name, entry in cfg["files"].items()}
ensure_mnist(cfg["dir"], cfg["mirrors"], files=files, timeout=(5, 10), retries=0, progress=True)
"""


def test_two_processes_downloading_into_one_folder(mnist_server, synthetic_mnist, tmp_path):
    mnist_server.add_fault("*", "delay", seconds=0.25)  # keep the first download going a while
    target = tmp_path / "mnist"
    ready = [str(tmp_path / f"ready{i}") for i in range(2)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    children = []
    for flag in ready:
        cfg = {"ready": flag, "everyone": ready, "dir": str(target),
               "mirrors": [mnist_server.mirror("a")], "files": synthetic_mnist.table}
        children.append(subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg)],
                                         env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True))
    results = [child.communicate(timeout=60) for child in children]
    for child, (_, err) in zip(children, results):
        assert child.returncode == 0, err
    assert_complete(target, synthetic_mnist)
    # one of them downloaded; the other waited on the lock, then found everything verified
    assert mnist_server.hits() == 4
    waited = ["Waiting for another process" in err for _, err in results]
    assert sorted(waited) == [False, True], results
    manifest = json.loads((target / MANIFEST).read_text())["files"]
    assert sorted(manifest) == sorted(synthetic_mnist.table)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_cache_is_downloaded_again(mnist_server, synthetic_mnist, tmp_path, damage):
    mirror = [mnist_server.mirror("a")]
    fetch(tmp_path, mirror, synthetic_mnist)
    victim = tmp_path / TRAIN_IMAGES
    content = bytearray(victim.read_bytes())
    if damage == "flip":  # same size: only the mtime and the hash can tell
        content[len(content) // 2] ^= 0x01
        victim.write_bytes(bytes(content))
    else:
        victim.write_bytes(bytes(content[:-100]))
    fetch(tmp_path, mirror, synthetic_mnist)
    assert_complete(tmp_path, synthetic_mnist)
    assert mnist_server.hits(f"/a/{TRAIN_IMAGES}.gz") == 2
    assert mnist_server.hits() == 5


def test_corrupted_cache_with_no_mirror_is_reported(mnist_server, synthetic_mnist, tmp_path):
    fetch(tmp_path, [mnist_server.mirror("a")], synthetic_mnist)
    with open(tmp_path / TRAIN_LABELS, "r+b") as f:
        f.seek(20)
        f.write(b"\xff")
    with pytest.raises(DataError) as info:
        fetch(tmp_path, [dead_mirror()], synthetic_mnist, retries=0)
    message = str(info.value)
    assert TRAIN_LABELS in message and "corrupt" in message and "refused" in message


def test_verified_manifest_skips_hashing_and_network(mnist_server, synthetic_mnist, tmp_path,
                                                     hash_calls):
    mirror = [mnist_server.mirror("a")]
    fetch(tmp_path, mirror, synthetic_mnist)
    assert mnist_server.hits() == 4
    hash_calls.clear()
    started = time.perf_counter()
    fetch(tmp_path, mirror, synthetic_mnist)
    fast = time.perf_counter() - started
    assert hash_calls == [] and mnist_server.hits() == 4
    assert fast < 0.5
    # a changed mtime means: hash that file again (and only it), still no download
    stat = (tmp_path / TEST_LABELS).stat()
    os.utime(tmp_path / TEST_LABELS, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    fetch(tmp_path, mirror, synthetic_mnist)
    assert hash_calls == [TEST_LABELS] and mnist_server.hits() == 4
    fetch(tmp_path, mirror, synthetic_mnist)
    assert hash_calls == [TEST_LABELS]
    # without the manifest, everything is hashed once and remembered again
    (tmp_path / MANIFEST).unlink()
    fetch(tmp_path, mirror, synthetic_mnist)
    assert sorted(hash_calls[1:]) == sorted(synthetic_mnist.table)
    assert mnist_server.hits() == 4


def test_files_placed_by_hand_need_no_mirror(synthetic_mnist, tmp_path, hash_calls):
    synthetic_mnist.write(tmp_path)
    paths = fetch(tmp_path, [], synthetic_mnist)
    assert paths[TRAIN_IMAGES] == tmp_path / TRAIN_IMAGES
    assert sorted(hash_calls) == sorted(synthetic_mnist.table)
    manifest = json.loads((tmp_path / MANIFEST).read_text())["files"]
    assert manifest.keys() == synthetic_mnist.table.keys()


def test_gz_files_placed_by_hand_are_decompressed(synthetic_mnist, tmp_path):
    synthetic_mnist.write(tmp_path, compressed=True)
    fetch(tmp_path, [], synthetic_mnist)
    assert_complete(tmp_path, synthetic_mnist)


def test_no_mirror_and_no_files(synthetic_mnist, tmp_path):
    with pytest.raises(DataError, match="no mirror was given"):
        fetch(tmp_path, [], synthetic_mnist)


@pytest.mark.parametrize("layout", ["gz-folder", "raw-folder", "file-url"])
def test_local_folder_as_mirror(synthetic_mnist, tmp_path, layout):
    source = synthetic_mnist.write(tmp_path / "offline", compressed=layout != "raw-folder")
    mirror = source.as_uri() if layout == "file-url" else str(source)
    fetch(tmp_path / "mnist", ["/nonexistent/folder", mirror], synthetic_mnist)
    assert_complete(tmp_path / "mnist", synthetic_mnist)


def test_stale_part_files_are_cleaned(mnist_server, synthetic_mnist, tmp_path):
    (tmp_path / (TRAIN_IMAGES + ".part")).write_bytes(b"left by a killed process")
    fetch(tmp_path, [mnist_server.mirror("a")], synthetic_mnist)
    assert_complete(tmp_path, synthetic_mnist)


def test_progress_flag(mnist_server, synthetic_mnist, tmp_path, capsys):
    fetch(tmp_path / "quiet", [mnist_server.mirror("a")], synthetic_mnist, progress=False)
    assert capsys.readouterr().err == ""
    fetch(tmp_path / "loud", [mnist_server.mirror("a")], synthetic_mnist, progress=True)
    assert TRAIN_IMAGES in capsys.readouterr().err


def test_bad_download_arguments(synthetic_mnist, tmp_path):
    with pytest.raises(ValueError, match="timeout"):
        fetch(tmp_path, [], synthetic_mnist, timeout=(0, 5))
    with pytest.raises(ValueError, match="retries"):
        fetch(tmp_path, [], synthetic_mnist, retries=-1)
    with pytest.raises(DataError, match="unsupported URL scheme 'ftp'"):
        fetch(tmp_path, ["ftp://example.org/mnist/"], synthetic_mnist)


def test_session_keeps_tls_verification_on(monkeypatch, synthetic_mnist, tmp_path):
    seen = {}

    def fake_get(self, url, **kwargs):
        seen.update(kwargs, verify_attr=self.verify)
        raise stream.requests.exceptions.ConnectTimeout("no network in this test")

    monkeypatch.setattr(stream.requests.Session, "get", fake_get)
    with pytest.raises(DataError, match="connect timed out"):
        fetch(tmp_path, ["https://mirror.invalid/mnist/"], synthetic_mnist, retries=0,
              timeout=(3, 7))
    assert seen["timeout"] == (3.0, 7.0) and seen["stream"] is True
    assert "verify" not in seen and seen["verify_attr"] is True


# --------------------------------------------------------------------------- in-place changes


def change_in_place(path):
    """Flip one byte without changing the size, then set the mtime back as `touch -r` would:
    only the ctime (which no user command can set back) and the content tell."""
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(before.st_size // 2)
        byte = f.read(1)
        f.seek(before.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size, before.st_mtime_ns, before.st_ino)


def test_in_place_change_with_mtime_restored_is_noticed(mnist_server, synthetic_mnist, tmp_path,
                                                        capsys):
    mirror = [mnist_server.mirror("a")]
    fetch(tmp_path, mirror, synthetic_mnist)
    change_in_place(tmp_path / TRAIN_LABELS)
    capsys.readouterr()
    fetch(tmp_path, mirror, synthetic_mnist)
    assert_complete(tmp_path, synthetic_mnist)
    assert mnist_server.hits(f"/a/{TRAIN_LABELS}.gz") == 2 and mnist_server.hits() == 5
    told = capsys.readouterr().err.strip().splitlines()
    assert len(told) == 1 and str(tmp_path / TRAIN_LABELS) in told[0], told
    assert "corrupt" in told[0] and "fetching it again" in told[0]
    # the repaired copy is trusted again: no more hashing, no more downloads
    fetch(tmp_path, mirror, synthetic_mnist)
    assert mnist_server.hits() == 5


def test_training_refuses_a_cache_changed_in_place(monkeypatch, synthetic_mnist, tmp_path):
    """`cnntrain download` records the files; one is then changed in place with its mtime
    restored; `cnntrain fit` must not train on it (no mirror is reachable to repair it)."""
    from tests.support.clitools import (
        invoke,
        small_config,
        use_synthetic_mnist,
    )

    data_dir = synthetic_mnist.write(tmp_path / "mnist")
    use_synthetic_mnist(monkeypatch, synthetic_mnist, data_dir)
    assert invoke("download", "-q", "--mirror", dead_mirror()).exit_code == 0  # hashes, records
    change_in_place(data_dir / TRAIN_IMAGES)
    config = tmp_path / "small.ini"
    config.write_text(small_config())
    monkeypatch.setattr(mirrors, "DEFAULT_MIRRORS", ())
    result = invoke("fit", "--config", config, "--out", tmp_path / "run", "-q",
                    "--mirror", dead_mirror())
    assert result.exit_code == 1
    assert "SHA-256" in result.stderr and f"{TRAIN_IMAGES} (cached copy is corrupt" in result.stderr
    assert not (tmp_path / "run").exists()


def test_download_verify_hashes_everything_and_repairs(mnist_server, synthetic_mnist, tmp_path,
                                                       monkeypatch, hash_calls):
    from tests.support.clitools import invoke, use_synthetic_mnist

    use_synthetic_mnist(monkeypatch, synthetic_mnist, tmp_path)
    mirror = mnist_server.mirror("a")
    assert invoke("download", "-q", "--mirror", mirror).exit_code == 0
    # A change the fast check cannot see (the manifest rewritten to match, as a restored
    # backup or a file system without ctimes would leave it): only hashing finds it.
    victim = tmp_path / TEST_IMAGES
    change_in_place(victim)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["files"][TEST_IMAGES].update(cache._stat_key(victim.stat()))
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    hash_calls.clear()
    trusting = invoke("download", "-q", "--mirror", mirror)
    assert trusting.exit_code == 0 and hash_calls == [] and mnist_server.hits() == 4

    checked = invoke("download", "-q", "--verify", "--mirror", mirror)
    assert checked.exit_code == 0, checked.output
    assert sorted(hash_calls) == sorted(synthetic_mnist.table)
    assert "each hashed again" in checked.stdout
    told = checked.stderr.strip().splitlines()
    assert len(told) == 1 and TEST_IMAGES in told[0] and "corrupt" in told[0], told
    assert mnist_server.hits(f"/a/{TEST_IMAGES}.gz") == 2 and mnist_server.hits() == 5
    assert_complete(tmp_path, synthetic_mnist)
    # everything sound: --verify hashes all again and downloads nothing
    hash_calls.clear()
    again = invoke("download", "-q", "--verify", "--mirror", mirror)
    assert again.exit_code == 0 and again.stderr == ""
    assert sorted(hash_calls) == sorted(synthetic_mnist.table) and mnist_server.hits() == 5


def test_verify_reports_corruption_it_cannot_repair(synthetic_mnist, tmp_path, monkeypatch):
    from tests.support.clitools import invoke, use_synthetic_mnist

    use_synthetic_mnist(monkeypatch, synthetic_mnist, synthetic_mnist.write(tmp_path))
    monkeypatch.setattr(mirrors, "DEFAULT_MIRRORS", ())
    assert invoke("download", "-q", "--mirror", dead_mirror()).exit_code == 0
    (tmp_path / TRAIN_LABELS).write_bytes(b"\0" * len(synthetic_mnist.raw[TRAIN_LABELS]))
    result = invoke("download", "-q", "--verify", "--mirror", dead_mirror())
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{tmp_path / TRAIN_LABELS}: cached copy is corrupt" in result.stderr
    assert "refused" in result.stderr


# --------------------------------------------------------------------------- local failures


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_unwritable_data_folder_is_not_told_to_make_room(mnist_server, synthetic_mnist,
                                                         tmp_path, monkeypatch, code):
    def refuse(path, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(attempts, "open", refuse, raising=False)  # the .part file cannot be made
    with pytest.raises(DataError) as info:
        fetch(tmp_path, [mnist_server.mirror("a")], synthetic_mnist)
    message = str(info.value)
    assert "\n" not in message and "make room" not in message
    assert f"the data folder {tmp_path} is not writable ({os.strerror(code)})" in message
    assert "fix its permissions" in message and "--set data.dir=" in message


def test_full_disk_is_told_to_make_room(mnist_server, synthetic_mnist, tmp_path, monkeypatch):
    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(attempts, "open", full, raising=False)
    with pytest.raises(DataError, match=f"make room in {tmp_path} or choose another folder"):
        fetch(tmp_path, [mnist_server.mirror("a")], synthetic_mnist)


@contextlib.contextmanager
def really_read_only(folder):
    """`folder` made read-only for this process: a read-only tmpfs mounted on it when we are
    root (root ignores permission bits), else mode 0555."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "none", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"root cannot mount a read-only tmpfs here: {mounted.stderr.strip()} "
                    "(test_unwritable_data_folder_is_not_told_to_make_room injects the error)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_real_read_only_data_folder_gets_a_one_line_error(mnist_server, synthetic_mnist,
                                                            tmp_path, monkeypatch):
    from tests.support.clitools import assert_one_line_error, invoke, use_synthetic_mnist

    with really_read_only(tmp_path / "ro") as folder:
        use_synthetic_mnist(monkeypatch, synthetic_mnist, folder)
        result = invoke("download", "-q", "--mirror", mnist_server.mirror("a"))
    assert_one_line_error(result, 1, f"the data folder {folder} is not writable",
                          "fix its permissions", "--set data.dir=")
    assert "make room" not in result.stderr


@pytest.mark.parametrize("where", ["itself", "parent"])
def test_a_file_where_the_data_folder_should_be(synthetic_mnist, tmp_path, monkeypatch, where):
    from tests.support.clitools import assert_one_line_error, invoke, use_synthetic_mnist

    blocker = tmp_path / "mnist"
    blocker.write_text("not a folder\n")
    folder = blocker if where == "itself" else blocker / "sub"
    use_synthetic_mnist(monkeypatch, synthetic_mnist, folder)
    result = invoke("download", "-q", "--mirror", dead_mirror())
    assert_one_line_error(result, 1, f"{blocker} is a file, not a folder", "--set data.dir=")
    assert "File exists" not in result.stderr and "Not a directory" not in result.stderr
    assert blocker.read_text() == "not a folder\n"


# --------------------------------------------------------------------------- silent mirrors


def test_a_mirror_that_never_answers_is_named_once_and_given_up(mnist_server, synthetic_mnist,
                                                                tmp_path, monkeypatch, capsys):
    """A mirror that accepts the connection and then says nothing: stderr names it once
    while waiting and once when giving up, the whole wait for it stays within `patience`,
    later files do not ask it again."""
    monkeypatch.setattr(patience, "_WAIT_NOTICE", 0.2)
    mnist_server.add_fault("/silent/*", "stall", seconds=30, before_headers=True)
    silent = mnist_server.mirror("silent")
    started = time.monotonic()
    fetch(tmp_path, [silent, mnist_server.mirror("b")], synthetic_mnist, timeout=(5, 10),
          retries=3, backoff=0.1, patience=1.0)
    elapsed = time.monotonic() - started
    assert_complete(tmp_path, synthetic_mnist)
    assert mnist_server.hits("/silent/*") == 1 and mnist_server.hits("/b/*") == 4
    assert elapsed < 3, f"waited {elapsed:.1f} s for a mirror with 1 s of patience"
    told = capsys.readouterr().err.strip().splitlines()
    assert len(told) == 2 and told[0].startswith(f"waiting for {silent} to send"), told
    assert "giving up on this mirror after 1 s" in told[0]
    assert told[1].startswith(f"{silent}{TRAIN_IMAGES}.gz: read timed out"), told
    assert told[1].endswith("gave up on this mirror; trying the next mirror"), told


def test_a_silent_mirror_is_reported_as_given_up(mnist_server, synthetic_mnist, tmp_path,
                                                 monkeypatch):
    monkeypatch.setattr(patience, "_WAIT_NOTICE", 0.1)
    mnist_server.add_fault("/silent/*", "stall", seconds=30)  # headers, 16 bytes, silence
    with pytest.raises(DataError) as info:
        fetch(tmp_path, [mnist_server.mirror("silent")], synthetic_mnist, timeout=(5, 10),
              retries=3, patience=0.5)
    line = next(text for text in str(info.value).splitlines() if "/silent/" in text)
    assert "timed out" in line and "gave up on this mirror" in line
    assert mnist_server.hits("/silent/*") == 1


def test_the_default_wait_for_a_silent_mirror_is_about_30_s(mnist_server, synthetic_mnist,
                                                           tmp_path, monkeypatch):
    """With every default (timeouts, retries, backoff, patience): a mirror that never answers
    costs about 30 s in all, counted on a fake clock that each timeout and pause advances."""
    now = [0.0]
    monkeypatch.setattr(patience, "_clock", lambda: now[0])
    monkeypatch.setattr(attempts, "_sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    silent = "http://silent.invalid/mnist/"
    real_get = stream.requests.Session.get
    asked = []

    def get(self, url, **kwargs):
        if not url.startswith(silent):
            return real_get(self, url, **kwargs)
        asked.append(kwargs["timeout"])
        now[0] += kwargs["timeout"][1]  # the read timeout runs out: no answer
        raise stream.requests.exceptions.ReadTimeout("Read timed out.")

    monkeypatch.setattr(stream.requests.Session, "get", get)
    ensure_mnist(tmp_path, [silent, mnist_server.mirror("b")], files=synthetic_mnist.table,
                 progress=False)
    assert_complete(tmp_path, synthetic_mnist)
    assert 25 <= now[0] <= 31, f"{now[0]} s spent on a silent mirror"
    assert len(asked) >= 1 and all(read <= 30 for _, read in asked)
    assert mnist_server.hits("/b/*") == 4
