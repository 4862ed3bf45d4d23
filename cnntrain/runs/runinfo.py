"""`cnntrain runinfo RUN_DIR FIELD...`: what a script may ask about a run folder, so that it
keeps no copy of the folder's layout or rules (scripts/sweep_lib.sh asks it). The answers come
from cnntrain.runs.runfolder_layout, which owns both.

Fields, one value a line in the order asked:
  state          empty | leftovers | resumable | finished | foreign
                 (cnntrain.runs.runfolder_layout.folder_state; foreign: files cnntrain did not
                 write and no marker, a folder `fit` refuses)
  exit_code      the last sweep attempt's exit code from sweep-status.json; an empty line when
                 there is none (no attempt recorded, or a record that does not say)
  config, metrics, log, summary, last, best, overrides, sweep_status, sweep_output
                 the path of that file in RUN_DIR (whether or not it exists yet)

Standard library only: a sweep calls it once per run and it must answer at once.
"""

import json
import os
from pathlib import Path

from cnntrain.errors import ConfigError
from cnntrain.runs import runfolder_layout as layout

PATHS = {
    "config": layout.CONFIG,
    "metrics": layout.METRICS,
    "log": layout.LOG,
    "summary": layout.SUMMARY,
    "last": layout.LAST,
    "best": layout.BEST,
    "overrides": layout.OVERRIDES,
    "sweep_status": layout.SWEEP_STATUS,
    "sweep_output": layout.SWEEP_OUTPUT,
}
FIELDS = ("state", "exit_code") + tuple(PATHS)


def last_exit_code(run_dir):
    """The exit_code of RUN_DIR/sweep-status.json, None without a usable one."""
    try:
        record = json.loads((Path(run_dir) / layout.SWEEP_STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    code = record.get("exit_code") if isinstance(record, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def field_value(run_dir, field):
    """One field's answer as text (see the module docstring)."""
    if field == "state":
        return layout.folder_state(run_dir)
    if field == "exit_code":
        code = last_exit_code(run_dir)
        return "" if code is None else str(code)
    if field in PATHS:
        return os.path.join(run_dir, PATHS[field])
    raise ConfigError(f"runinfo: unknown field {field!r}; valid fields: {', '.join(FIELDS)}")


def run_info(run_dir, fields):
    """The answers to `fields` about `run_dir`, one line each."""
    run_dir = str(run_dir)
    if "\n" in run_dir or "\r" in run_dir:
        raise ConfigError(f"runinfo: {run_dir!r}: a folder name with a line break cannot be "
                          "answered one value a line; rename the folder")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"runinfo: {run_dir} is a file, not a run folder; give the folder "
                          "that holds config.ini, checkpoints/ and the logs")
    return [field_value(run_dir, field) for field in fields]
