"""Where MNIST's files live and where they come from: the data folder and the mirrors, each
resolved from the flags, the environment and the config, in that order, and the public
mirrors that always follow the user's own. Nothing here touches the network or the disk.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

#: Public mirrors, always tried after the user's own (yann.lecun.com no longer serves the files).
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

ENV_DATA_DIR = "CNNTRAIN_DATA_DIR"
ENV_MIRRORS = "CNNTRAIN_MNIST_MIRRORS"

#: How every message that blames the data folder says to choose another.
ELSEWHERE = f"--data-dir DIR, --set data.dir=DIR or {ENV_DATA_DIR}"


def _env(name):
    value = os.environ.get(name, "").strip()
    return value or None


def resolve_data_dir(cli_dir=None, config_dir=None):
    """The MNIST folder; the first of these that is set wins.

    `cli_dir` (`--data-dir`), env `CNNTRAIN_DATA_DIR`, `config_dir` (the config's `[data] dir`),
    `$XDG_CACHE_HOME/cnntrain/mnist`, `~/.cache/cnntrain/mnist`. Empty strings count as unset;
    `~` is expanded. A relative XDG_CACHE_HOME is ignored, as the XDG spec asks.
    """
    for candidate in (cli_dir, _env(ENV_DATA_DIR), config_dir):
        if candidate is not None and str(candidate).strip():
            return Path(os.path.abspath(os.path.expanduser(str(candidate).strip())))
    xdg = _env("XDG_CACHE_HOME")
    cache = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return cache / "cnntrain" / "mnist"


def split_mirrors(value):
    if value is None:
        return []
    if isinstance(value, str):
        value = re.split(r"[,\n]", value)
    return [str(m).strip() for m in value if m is not None and str(m).strip()]


def normalise_mirror(mirror):
    # A base URL without its trailing slash would lose its last segment when joined.
    scheme = urllib.parse.urlsplit(mirror).scheme.lower()
    if scheme in ("http", "https"):
        return mirror if mirror.endswith("/") else mirror + "/"
    if scheme == "file" or len(scheme) > 1:
        return mirror
    return os.path.expanduser(mirror)


def resolve_mirrors(cli_mirrors=(), config_mirrors=()):
    """The mirrors to try, in order, duplicates removed.

    The user's own come from `cli_mirrors` (`--mirror`) if any, else env `CNNTRAIN_MNIST_MIRRORS`
    (comma-separated), else `config_mirrors` (a sequence, or a comma/newline separated string);
    `DEFAULT_MIRRORS` always follow. A mirror is an http(s) base URL, a file:// URL or a folder
    that holds the files (as .gz or decompressed).
    """
    own = split_mirrors(cli_mirrors)
    if not own:
        own = split_mirrors(_env(ENV_MIRRORS))
    if not own:
        own = split_mirrors(config_mirrors)
    result = []
    for mirror in [*own, *DEFAULT_MIRRORS]:
        mirror = normalise_mirror(mirror)
        if mirror not in result:
            result.append(mirror)
    return result


def is_http(source):
    """True for an http(s) mirror; False for a folder, a file:// URL or a local Path."""
    return isinstance(source, str) and urllib.parse.urlsplit(source).scheme.lower() in (
        "http", "https")
