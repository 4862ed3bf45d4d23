"""Reading a run folder's metrics.jsonl back: one strict-JSON object per completed epoch,
whose last line a crash may have cut short. The one reader of that file, for a fit's folder
checks, a plot and a summary alike (cnntrain.runs.metrics writes its lines). Standard library
only.
"""

import json
from pathlib import Path

from cnntrain.runs.runfolder_layout import METRICS


class BadMetricsLine(ValueError):
    """A line of metrics.jsonl that is not a JSON object (and not a torn last line)."""

    def __init__(self, number, reason):
        super().__init__(f"{METRICS} line {number}: {reason}")
        self.number, self.reason = number, reason


def parse_json_object(text):
    """(value, None) when `text` is one JSON object, else (None, why not) in a few words."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, expected an object"
    return value, None


def parse_metrics(text, skip_bad=False):
    """[(line number, record)] of a metrics.jsonl text, one JSON object per line, blank lines
    ignored. A last line without its newline that is not an object was cut short by a crash
    and is always dropped; any other line that is not raises BadMetricsLine, or is dropped
    with skip_bad=True (a plot draws what it can; a summary reports the damage)."""
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        value, reason = parse_json_object(line)
        if reason is None:
            records.append((number, value))
        elif not (skip_bad or number == len(lines)):
            raise BadMetricsLine(number, reason)
    return records


def read_metrics(run_dir):
    """The epochs recorded in RUN_DIR/metrics.jsonl ([] when there is none), skipping any
    line that is not a JSON object (see parse_metrics) or has no whole epoch number."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    return [record for _, record in parse_metrics(text, skip_bad=True)
            if isinstance(record.get("epoch"), int) and not isinstance(record["epoch"], bool)]
