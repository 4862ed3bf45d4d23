"""`cnntrain summarize`: one row per run folder, read from the files runs and sweeps leave.

A path is a run folder, or a sweep folder whose subfolders are run folders (as
scripts/sweep.sh and scripts/sweep_slurm.sh make them). What a row says comes from:

  summary.json          a finished run: best and final metrics, epochs, wall time
  metrics.jsonl         an unfinished run: the epochs so far
  config.ini            the number of epochs planned ([train] epochs)
  overrides.txt         the sweep's --set overrides for this run, one per line
  sweep-status.json     the sweep's record of the last attempt: exit code, error line, the
                        times Slurm requeued the task, a note (e.g. its requeues used up)
  train.log             the last line, when a failed attempt left no error line

A file that is there but cannot be read or makes no sense (a malformed metrics line, a
hand-edited summary.json) makes its run "unreadable", with the reason under the table; the
other runs are listed as usual. Only the last line of metrics.jsonl may be cut short (a crash
while it was written): it is skipped.

Standard library only: this runs on a login node over many folders and should answer at once.
"""

import csv
import dataclasses
import difflib
import io
import json
import math
from pathlib import Path
from typing import Dict, Optional

from cnntrain.config import peek_value
from cnntrain.errors import ConfigError
from cnntrain.fileio import atomic_write_text
from cnntrain.runs.metrics import best_epoch
from cnntrain.runs.runfolder_layout import (
    CONFIG,
    EMPTY,
    LOG,
    METRICS,
    OVERRIDES,
    RUN_MARKERS,
    SUMMARY,
    SWEEP_STATUS,
    folder_state,
    is_run_folder,
)
from cnntrain.runs.runfolder_metrics import BadMetricsLine, parse_json_object, parse_metrics
from cnntrain.runs.stopsignals import STOP_SIGNALS

ACCURACY_KEYS = ("best_val_acc", "best_test_acc", "final_val_acc", "final_test_acc")
SORT_KEYS = ("run", "status", "overrides") + ACCURACY_KEYS + ("epochs", "wall_s")

DONE, INCOMPLETE, FAILED, NOT_STARTED = "done", "incomplete", "failed", "not started"
UNREADABLE = "unreadable"
# Finished runs first, then the ones that may still finish, then the ones that will not.
_STATUS_RANK = {DONE: 0, INCOMPLETE: 1, FAILED: 2, UNREADABLE: 3, NOT_STARTED: 4}
# A run stopped by a signal (Ctrl-C, or SIGTERM/SIGHUP: Slurm's time limit, scancel) kept its
# position and is resumed by the next attempt: not a failure.
_INTERRUPTED = tuple(128 + signum for signum in STOP_SIGNALS)


@dataclasses.dataclass
class RunRow:
    """What summarize knows about one run folder. Accuracies are fractions; None = unknown."""

    run: str
    path: str
    status: str
    overrides: Optional[Dict[str, str]] = None  # None: not made by a sweep
    best_val_acc: Optional[float] = None
    best_test_acc: Optional[float] = None
    final_val_acc: Optional[float] = None
    final_test_acc: Optional[float] = None
    epochs: Optional[int] = None
    planned_epochs: Optional[int] = None
    wall_s: Optional[float] = None
    exit_code: Optional[int] = None
    reason: str = ""
    requeues: int = 0  # times Slurm requeued the run's task (sweep_slurm.sh)
    note: str = ""     # the sweep's note on the last attempt, e.g. its requeues used up

    @property
    def status_text(self):
        if self.status == INCOMPLETE:
            planned = self.planned_epochs if self.planned_epochs is not None else "?"
            text = f"incomplete (epoch {self.epochs or 0}/{planned})"
        elif self.status == FAILED and self.exit_code is not None:
            text = f"failed (exit {self.exit_code})"
        else:
            text = self.status
        return f"{text}, requeued {self.requeues}" if self.requeues else text

    @property
    def overrides_text(self):
        if self.overrides is None:
            return "-"
        return " ".join(f"{key}={value}" for key, value in self.overrides.items()) or "-"


# --- reading ------------------------------------------------------------------------------


def _one_line(text):
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


class _Unreadable(Exception):
    """A run file is there but cannot be used; the message names the file and why."""


def _read_text(path):
    """The file's text, None when it does not exist; _Unreadable when it cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Unreadable(f"{path.name}: cannot read it ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"{path.name}: not UTF-8 text (byte {exc.start})") from None


def _parse_object(text, where):
    value, reason = parse_json_object(text)
    if reason is not None:
        raise _Unreadable(f"{where}: {reason}")
    return value


def _read_json(path):
    """The JSON object in `path`, None when the file does not exist."""
    text = _read_text(path)
    return None if text is None else _parse_object(text, path.name)


def _check_field(record, key, where, kind):
    """record[key] must be absent, null, or of `kind`: "fraction" (a finite number, as the
    accuracies are), "count" (a whole number >= 0), "seconds" (a finite number >= 0) or
    "text"."""
    value = record.get(key)
    if value is None:
        return
    if kind == "text":
        ok = isinstance(value, str)
    elif kind == "count":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    else:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and (kind != "seconds" or value >= 0))
    if not ok:
        expected = {"fraction": "a number", "count": "a whole number >= 0",
                    "seconds": "a number of seconds", "text": "a string"}[kind]
        raise _Unreadable(f"{where}: {key} is {json.dumps(value)}, expected {expected}")


def _check_epoch_record(record, where):
    """An epoch's metrics as summarize uses them: an object with accuracies and an epoch."""
    if not isinstance(record, dict):
        raise _Unreadable(f"{where}: a JSON {type(record).__name__}, expected an object")
    for key in ("val_acc", "test_acc"):
        _check_field(record, key, where, "fraction")
    _check_field(record, "epoch", where, "count")
    return record


def _read_history(folder):
    """The epochs of metrics.jsonl ([] when there is none). A last line without its newline
    that does not parse was cut short by a crash and is skipped; any other bad line makes the
    run unreadable."""
    text = _read_text(folder / METRICS)
    if text is None:
        return []
    try:
        records = parse_metrics(text)
    except BadMetricsLine as exc:
        raise _Unreadable(str(exc)) from None
    history = [_check_epoch_record(record, f"{METRICS} line {number}")
               for number, record in records]
    for record in history:
        if record.get("val_acc") is not None and record.get("epoch") is None:
            raise _Unreadable(f"{METRICS}: an epoch with val_acc but no epoch number")
    return history


def _last_line(path):
    """The file's last non-blank line, "" when there is none or it cannot be read."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def _planned_epochs(folder):
    """[train] epochs of the run's resolved config.ini, None when it has none."""
    path = folder / CONFIG
    if not path.exists():
        return None
    try:
        value = peek_value(path, "train", "epochs", strict=True)
    except ConfigError as exc:
        raise _Unreadable(_one_line(str(exc)).replace(str(path), path.name, 1)) from None
    if value is None:
        return None
    if not value.strip().isdigit():
        raise _Unreadable(f"{CONFIG}: [train] epochs = {value.strip()!r} is not a whole number")
    return int(value)


def _read_overrides(folder):
    """overrides.txt as {key: value} strings, None when there is none."""
    try:
        text = (folder / OVERRIDES).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    pairs = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq:
            pairs[key.strip()] = value.strip()
    return pairs


def _fill_metrics(row, best, final):
    best, final = best or {}, final or {}
    row.best_val_acc, row.best_test_acc = best.get("val_acc"), best.get("test_acc")
    row.final_val_acc, row.final_test_acc = final.get("val_acc"), final.get("test_acc")


def read_run(folder):
    """The row of one run folder; status "unreadable", with the reason, when one of its files
    is there but cannot be used."""
    folder = Path(folder)
    row = RunRow(run=folder.name or str(folder), path=str(folder), status=NOT_STARTED,
                 overrides=_read_overrides(folder))
    try:
        _read_files(folder, row)
    except _Unreadable as exc:
        unreadable = RunRow(run=row.run, path=row.path, status=UNREADABLE,
                            overrides=row.overrides, reason=_one_line(exc))
        return unreadable
    return row


def _read_files(folder, row):
    row.planned_epochs = _planned_epochs(folder)
    record = _read_json(folder / SWEEP_STATUS)
    if record is not None:
        _check_field(record, "exit_code", SWEEP_STATUS, "count")
        _check_field(record, "error", SWEEP_STATUS, "text")
        requeues = record.get("requeues")
        row.requeues = requeues if isinstance(requeues, int) and requeues > 0 else 0
        row.note = _one_line(record.get("note") or "")
    summary = _read_json(folder / SUMMARY)
    if summary is not None:
        for key in ("best", "final"):
            if summary.get(key) is not None:
                _check_epoch_record(summary[key], f"{SUMMARY} {key}")
        _check_field(summary, "epochs", SUMMARY, "count")
        _check_field(summary, "wall_seconds", SUMMARY, "seconds")
        row.status = DONE
        _fill_metrics(row, summary.get("best"), summary.get("final"))
        row.epochs = summary.get("epochs")
        row.wall_s = summary.get("wall_seconds")
        return

    history = _read_history(folder)
    if history:
        _fill_metrics(row, best_epoch(history), history[-1])
        row.epochs = history[-1].get("epoch", len(history))
    code = record.get("exit_code") if record else None
    if isinstance(code, int) and code not in (0, *_INTERRUPTED):
        row.status, row.exit_code = FAILED, code
        row.reason = _one_line(record.get("error") or _last_line(folder / LOG)
                               or f"exit code {code}")
    elif record is not None or folder_state(folder) != EMPTY:
        row.status = INCOMPLETE


def collect_runs(paths):
    """One row per run folder among `paths`, each a run folder or a sweep folder holding run
    folders one level down; a run reached twice is listed once."""
    rows, seen = [], set()
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise ConfigError(_one_line(f"{given}: no such folder; give run folders or sweep "
                                        "folders (made by scripts/sweep.sh)"))
        if is_run_folder(path):
            folders = [path]
        else:
            folders = sorted((child for child in path.iterdir()
                              if child.is_dir() and is_run_folder(child)), key=lambda p: p.name)
            if not folders:
                raise ConfigError(_one_line(
                    f"{given}: neither a run folder (no {', '.join(RUN_MARKERS)}) nor a sweep "
                    "folder holding run folders"))
        for folder in folders:
            key = folder.resolve()
            if key not in seen:
                seen.add(key)
                rows.append(read_run(folder))
    # Sweeps name their runs alike (seed-0, seed-1, ...): when names clash, say whose they are.
    names = [row.run for row in rows]
    for row in rows:
        if names.count(row.run) > 1:
            row.run = f"{Path(row.path).parent.name}/{row.run}"
    return rows


# --- sorting ------------------------------------------------------------------------------


def _override_keys(rows):
    """The override keys of all rows, as a list in first-seen order."""
    keys = {}
    for row in rows:
        keys.update(dict.fromkeys(row.overrides or {}))
    return list(keys)


def _as_number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def sort_rows(rows, key="best_val_acc"):
    """Rows ordered by `key`: a column (accuracies from best to worst, everything else
    ascending) or an override key such as train.lr (numerically when every value is a
    number). Finished runs come first; runs without the value come last in their group."""
    rows = list(rows)
    override_keys = _override_keys(rows)
    shorts = {}
    for full in override_keys:
        shorts.setdefault(full.partition(".")[2], []).append(full)
    if key not in SORT_KEYS and key not in override_keys:
        if len(shorts.get(key, ())) == 1:
            key = shorts[key][0]
        else:
            valid = list(SORT_KEYS) + override_keys
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'? " if close else "; "
            raise ConfigError(_one_line(f"--sort {key}: unknown column{hint}valid keys: "
                                        + ", ".join(valid)))

    if key in SORT_KEYS:
        def value(row):
            if key == "status":
                return None  # the status group is the whole order
            if key == "overrides":
                return row.overrides_text if row.overrides else None
            return getattr(row, key)
        numeric = key in ACCURACY_KEYS or key in ("epochs", "wall_s")
    else:
        def value(row):
            return (row.overrides or {}).get(key)
        present = [value(row) for row in rows if value(row) is not None]
        numeric = bool(present) and all(_as_number(v) is not None for v in present)
    descending = key in ACCURACY_KEYS

    def order(row):
        v = value(row)
        if v is None:
            v_key = (1, 0)
        elif numeric:
            number = float(v) if not isinstance(v, str) else _as_number(v)
            v_key = (0, -number if descending else number)
        else:
            v_key = (0, str(v))
        return (_STATUS_RANK[row.status], v_key, row.run, row.path)

    return sorted(rows, key=order)


# --- output -------------------------------------------------------------------------------


def _percent(value):
    return "-" if value is None else f"{100 * value:.2f}%"


def _common_overrides(rows):
    """The overrides every recorded run shares (with two or more such runs): said once under
    the table instead of in every row."""
    recorded = [row.overrides for row in rows if row.overrides]
    if len(recorded) < 2:
        return {}
    common = dict(recorded[0])
    for pairs in recorded[1:]:
        common = {k: v for k, v in common.items() if pairs.get(k) == v}
    return common


def format_table(rows):
    """The rows as an aligned text table, accuracies in percent; overrides shared by every
    run and the reasons of failed runs follow the table."""
    rows = list(rows)
    if not rows:
        return "no runs"
    common = _common_overrides(rows)
    header = ("run", "status", "overrides") + ACCURACY_KEYS + ("epochs", "wall_s")
    lines = []
    for row in rows:
        if row.overrides is None:
            shown = "-"
        else:
            own = {k: v for k, v in row.overrides.items() if k not in common}
            shown = " ".join(f"{k}={v}" for k, v in (own or row.overrides).items()) or "-"
        lines.append((row.run, row.status_text, shown)
                     + tuple(_percent(getattr(row, k)) for k in ACCURACY_KEYS)
                     + ("-" if row.epochs is None else str(row.epochs),
                        "-" if row.wall_s is None else f"{row.wall_s:.1f}"))
    widths = [max(len(str(cells[i])) for cells in [header] + lines) for i in range(len(header))]
    left = 3  # run, status, overrides read left to right; numbers line up on the right

    def render(cells):
        text = "  ".join(cell.ljust(w) if i < left else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths)))
        return text.rstrip()

    out = [render(header)] + [render(cells) for cells in lines]
    if common:
        out.append("every run: " + " ".join(f"{k}={v}" for k, v in common.items()))
    for row in rows:
        if row.status == FAILED:
            out.append(f"{row.run} failed: {row.reason}")
        elif row.status == INCOMPLETE and row.note:
            out.append(f"{row.run}: {row.note}")
    for row in rows:
        if row.status == UNREADABLE:
            out.append(f"{row.run} unreadable: {row.reason}")
    return "\n".join(out)


def csv_columns(rows):
    return (["run", "path", "status", "reason", "overrides"] + list(ACCURACY_KEYS)
            + ["epochs", "planned_epochs", "wall_s"] + _override_keys(rows))


def write_csv(rows, path):
    """The rows as CSV, accuracies as fractions, one more column per override key so a
    spreadsheet can pivot on it; written by cnntrain.fileio's rule (atomically into a file,
    straight into a device, FIFO, socket or /dev/stdout)."""
    rows = list(rows)
    columns = csv_columns(rows)
    override_keys = _override_keys(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        record = {
            "run": row.run, "path": row.path, "status": row.status_text, "reason": row.reason,
            "overrides": "" if row.overrides is None else row.overrides_text,
            "epochs": row.epochs, "planned_epochs": row.planned_epochs, "wall_s": row.wall_s,
            **{k: getattr(row, k) for k in ACCURACY_KEYS},
        }
        for key in override_keys:
            record[key] = (row.overrides or {}).get(key)
        writer.writerow(["" if record.get(c) is None else record.get(c) for c in columns])
    atomic_write_text(path, buffer.getvalue())
