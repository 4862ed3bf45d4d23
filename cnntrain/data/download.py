"""MNIST's files made sure of: `ensure_mnist` puts each file of the table in the data folder,
verified, fetching what is missing or corrupt from the mirrors; `fetch_mnist` does so where
the user wants it. The parts it drives: cnntrain.data.mirrors (where from), cache (the
verified folder, its manifest and lock), attempts (one file: retries, the next mirror),
stream (HTTP and local copies), verifier (the bytes checked) and patience (timeouts and
the throughput floor).

Downloading (here) and reading (`load_mnist`, cnntrain.data.mnist) are separate steps:
reading never touches the network, so a training run on a machine with the files in place
is fully offline.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cnntrain.constants import (
    TEST_IMAGES_FILE,
    TEST_LABELS_FILE,
    TRAIN_IMAGES_FILE,
    TRAIN_LABELS_FILE,
)
from cnntrain.data.attempts import fetch_file
from cnntrain.data.cache import (
    NOT_DOWNLOADED,
    PART,
    DirLock,
    check_cached,
    data_folder_problem,
    manifest_entry,
    read_manifest,
    remove,
    settled_stat,
    trusted,
    write_manifest,
)
from cnntrain.data.mirrors import (
    ENV_MIRRORS,
    normalise_mirror,
    resolve_data_dir,
    resolve_mirrors,
    split_mirrors,
)
from cnntrain.data.patience import MIRROR_PATIENCE, MirrorWaits
from cnntrain.data.stream import new_session
from cnntrain.errors import DataError

__all__ = ["MNIST_FILES", "ensure_mnist", "fetch_mnist"]

#: Decompressed file name -> (size in bytes, SHA-256 of the decompressed content).
MNIST_FILES = {
    TRAIN_IMAGES_FILE: (
        47040016,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    TRAIN_LABELS_FILE: (
        60008,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    TEST_IMAGES_FILE: (
        7840016,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    TEST_LABELS_FILE: (
        10008,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}


def _normalise_timeout(timeout):
    values = timeout if isinstance(timeout, (tuple, list)) else (timeout, timeout)
    if len(values) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in values):
        raise ValueError(f"timeout must be a positive number or a (connect, read) pair, "
                         f"got {timeout!r}")
    return tuple(float(v) for v in values)


def ensure_mnist(data_dir, mirrors, *, progress=True, files=None, timeout=(10, 30),
                 retries=3, backoff=1.0, patience=MIRROR_PATIENCE,
                 verify=False):
    """Make sure every file of `files` is in `data_dir`, decompressed and verified.

    `files` maps a decompressed file name to (size, sha256), MNIST_FILES when None (looked up
    at each call, so tests can put a table of small synthetic files in its place); each is
    fetched as `<name>.gz`
    from the `mirrors` in order (http(s) base URLs, file:// URLs or folders holding the .gz or
    decompressed files; a `<name>.gz` already in `data_dir` is used first). Transient failures
    (5xx, connection errors, timeouts, truncated bodies) are retried `retries` times, waiting
    `backoff`, 2*`backoff`, 4*`backoff`... seconds; a mirror that failed one file through all
    its retries gets a single attempt at each later file. A 4xx or wrong content moves to the
    next mirror at once. Each failed attempt that the download goes on from is told on
    stderr, one line. `timeout` is (connect, read) seconds for every request; a mirror that
    keeps us waiting without data for `patience` seconds in all (attempts and pauses summed)
    is given up, and after 5 s of silence stderr says which mirror is being waited on; a
    mirror that sends less than MIN_RATE bytes a second over the last RATE_WINDOW seconds
    of a download is given up too (later files do not ask either again). A file
    lands in place only after its decompressed size and SHA-256 match; a lock file serialises
    processes sharing the folder. What was verified is recorded, so a later call costs one
    stat per file (a file changed since, even with its mtime set back, is hashed again);
    `verify=True` hashes every file regardless. A cached file found corrupt is reported on
    stderr, one line, and fetched again.

    Returns {name: path}. Raises DataError, naming every mirror and why it failed and how to
    place the files by hand, when a file cannot be obtained.
    """
    files = MNIST_FILES if files is None else files
    data_dir = Path(os.path.expanduser(str(data_dir)))
    if isinstance(mirrors, (str, os.PathLike)):
        mirrors = [mirrors]
    sources = [normalise_mirror(m) for m in split_mirrors(mirrors)]
    timeout = _normalise_timeout(timeout)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
    if not isinstance(backoff, (int, float)) or not backoff >= 0:
        raise ValueError(f"backoff must be a non-negative number, got {backoff!r}")
    if not isinstance(patience, (int, float)) or not patience > 0:
        raise ValueError(f"patience must be a positive number of seconds, got {patience!r}")
    paths = {name: data_dir / name for name in files}

    manifest = read_manifest(data_dir)
    if not verify and all(trusted(paths[n], manifest.get(n), s, h)
                          for n, (s, h) in files.items()):
        return paths

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(data_folder_problem(data_dir, e)) from e

    with DirLock(data_dir, announce=progress):
        # Re-read under the lock: another process may have finished the work meanwhile.
        manifest = read_manifest(data_dir)
        verified, todo = set(), {}
        for name, (size, sha256) in files.items():
            remove(data_dir / (name + PART))  # left by a process that died mid-download
            if not verify and trusted(paths[name], manifest.get(name), size, sha256):
                verified.add(name)
                continue
            problem, st = check_cached(paths[name], size, sha256)
            if problem is None:
                manifest[name] = manifest_entry(st, sha256)
                verified.add(name)
                continue
            todo[name] = problem
            manifest.pop(name, None)
            if problem != NOT_DOWNLOADED:
                print(f"{paths[name]}: {problem}; fetching it again", file=sys.stderr,
                      flush=True)
        if not todo:
            write_manifest(data_dir, manifest)
            return paths

        unreachable = {}
        waits = MirrorWaits(float(patience))
        with new_session() as session:
            for name, problem in todo.items():
                size, sha256 = files[name]
                local_gz = data_dir / (name + ".gz")
                here = [local_gz] if local_gz.is_file() else []
                failures = fetch_file(name, size, sha256, data_dir, here + sources, session,
                                      timeout, retries, backoff, progress, unreachable, waits)
                if failures is not None:
                    write_manifest(data_dir, manifest)  # forget what was found corrupt
                    missing = [n for n in files if n not in verified]
                    raise DataError(_failure_message(name, problem, failures, data_dir, missing))
                manifest[name] = manifest_entry(settled_stat(paths[name]), sha256)
                verified.add(name)
                write_manifest(data_dir, manifest)  # progress survives a later failure
    return paths


def fetch_mnist(data_dir=None, mirrors=(), *, config_dir=None, config_mirrors=(), progress=True,
                verify=False):
    """MNIST where the user wants it: the folder and the mirrors resolved from the flags
    (`data_dir`, `mirrors`), the environment and the config (`config_dir`, `config_mirrors`),
    then every file fetched if needed and verified (ensure_mnist). Returns (folder, paths)."""
    folder = resolve_data_dir(data_dir, config_dir)
    paths = ensure_mnist(folder, resolve_mirrors(mirrors, config_mirrors), progress=progress,
                         verify=verify)
    return folder, paths


def _failure_message(name, problem, failures, data_dir, missing):
    lines = [f"Could not get MNIST file {name} ({problem}) from any mirror:"]
    lines += [f"  {line}" for line in failures] or ["  (no mirror was given)"]
    lines.append(f"To place the files by hand, put these in {data_dir} "
                 f"(decompressed, or as .gz):")
    lines += [f"  {n}" for n in missing]
    lines.append(f"or give a reachable mirror (a URL or a folder holding them) with --mirror "
                 f"or {ENV_MIRRORS}.")
    return "\n".join(lines)
