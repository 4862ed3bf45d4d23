"""cnntrain.apps.summarize and `cnntrain summarize` on run folders written by hand, one per state a
run or a sweep can leave behind."""

import csv
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cnntrain.apps import summarize
from cnntrain.cli import cli
from cnntrain.errors import ConfigError


def _metrics(epoch, val_acc, test_acc):
    return {"epoch": epoch, "step": 10 * epoch, "lr": 0.05, "train_loss": 0.5, "train_acc": 0.9,
            "val_loss": 0.4, "val_acc": val_acc, "test_loss": 0.4, "test_acc": test_acc,
            "seconds": 1.0, "images_per_s": 1000.0}


def _write_common(folder, history, planned, overrides):
    folder.mkdir(parents=True)
    (folder / "config.ini").write_text(
        f"# cnntrain config\n\n[model]\nlayers =\n    conv 6 5\n    epochs = 99\n\n"
        f"[train]\nbatch_size = 64\nepochs = {planned}\n\n[run]\ndir = x\n")
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    (folder / "train.log").write_text("fit quick.ini\n")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.npz").write_bytes(b"")
    if overrides is not None:
        (folder / "overrides.txt").write_text("".join(f"{o}\n" for o in overrides))


def make_done(folder, val_accs, test_accs, overrides=None, wall=12.5):
    history = [_metrics(i + 1, v, t) for i, (v, t) in enumerate(zip(val_accs, test_accs))]
    _write_common(folder, history, len(history), overrides)
    best = max(history, key=lambda m: (m["val_acc"], -m["epoch"]))
    (folder / "summary.json").write_text(json.dumps({
        "config": "quick.ini", "run_dir": str(folder), "epochs": len(history),
        "final": history[-1], "best": best, "wall_seconds": wall,
        "checkpoints": {"last": "l", "best": "b"}}))
    return folder


def make_incomplete(folder, val_accs, planned, overrides=None, status=None):
    history = [_metrics(i + 1, v, v) for i, v in enumerate(val_accs)]
    _write_common(folder, history, planned, overrides)
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 9, "val_')  # a line cut short by a crash
    if status is not None:
        (folder / "sweep-status.json").write_text(json.dumps(status))
    return folder


def make_failed(folder, overrides, error="error: --set train.lr=oops: expected a number > 0"):
    folder.mkdir(parents=True)
    (folder / "overrides.txt").write_text("".join(f"{o}\n" for o in overrides))
    (folder / "sweep-status.json").write_text(json.dumps(
        {"exit_code": 2, "error": error, "action": "fresh", "seconds": 0}))
    (folder / "sweep-output.log").write_text(error + "\n")
    return folder


def make_not_started(folder, overrides):
    folder.mkdir(parents=True)
    (folder / "overrides.txt").write_text("".join(f"{o}\n" for o in overrides))
    return folder


FIXED = ["data.train_size=2000", "train.epochs=2"]


@pytest.fixture
def sweep(tmp_path):
    """A sweep folder with a run in every state, plus things that are not runs."""
    root = tmp_path / "sweep"
    make_done(root / "lr-0.05", [0.90, 0.95], [0.91, 0.96], ["train.lr=0.05"] + FIXED, wall=20)
    make_done(root / "lr-0.1", [0.97, 0.96], [0.97, 0.955], ["train.lr=0.1"] + FIXED, wall=10)
    make_done(root / "lr-0.001", [0.50, 0.60], [0.52, 0.61], ["train.lr=0.001"] + FIXED, wall=30)
    make_incomplete(root / "lr-0.02", [0.80], 2, ["train.lr=0.02"] + FIXED,
                    status={"exit_code": 130, "error": "error: interrupted at epoch 2"})
    make_failed(root / "lr-oops", ["train.lr=oops"] + FIXED)
    make_not_started(root / "lr-0.5", ["train.lr=0.5"] + FIXED)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a run")
    (root / "sweep.log").write_text("2026-01-01 start\n")
    return root


def by_run(rows):
    return {row.run: row for row in rows}


def test_collect_reads_every_state_of_a_sweep(sweep):
    rows = by_run(summarize.collect_runs([sweep]))
    assert set(rows) == {"lr-0.05", "lr-0.1", "lr-0.001", "lr-0.02", "lr-oops", "lr-0.5"}

    done = rows["lr-0.1"]
    assert (done.status, done.status_text) == ("done", "done")
    assert (done.best_val_acc, done.best_test_acc) == (0.97, 0.97)
    assert (done.final_val_acc, done.final_test_acc) == (0.96, 0.955)
    assert (done.epochs, done.wall_s) == (2, 10)
    assert done.overrides == {"train.lr": "0.1", "data.train_size": "2000", "train.epochs": "2"}

    incomplete = rows["lr-0.02"]  # interrupted: resumable, so not a failure
    assert incomplete.status_text == "incomplete (epoch 1/2)"
    assert incomplete.best_val_acc == 0.80 and incomplete.wall_s is None

    failed = rows["lr-oops"]
    assert failed.status_text == "failed (exit 2)"
    assert failed.reason == "error: --set train.lr=oops: expected a number > 0"
    assert failed.best_val_acc is None and failed.epochs is None

    assert rows["lr-0.5"].status_text == "not started"


def test_a_failed_attempt_without_an_error_line_takes_train_logs_last_line(tmp_path):
    run = make_incomplete(tmp_path / "diverged", [0.3], 5, ["train.lr=9"],
                          status={"exit_code": 1, "error": ""})
    (run / "train.log").write_text("fit x\ntraining diverged at epoch 2: the loss is nan\n\n")
    row = summarize.collect_runs([run])[0]
    assert row.status_text == "failed (exit 1)"
    assert row.reason == "training diverged at epoch 2: the loss is nan"


def test_a_plain_run_folder_has_no_overrides_and_a_path_given_twice_is_listed_once(sweep, tmp_path):
    plain = make_done(tmp_path / "runs" / "lenet5", [0.98], [0.985])
    rows = summarize.collect_runs([plain, sweep, sweep / "lr-0.1", plain])
    assert [r.run for r in rows].count("lr-0.1") == 1 and len(rows) == 7
    assert rows[0].run == "lenet5" and rows[0].overrides is None
    assert rows[0].overrides_text == "-"


@pytest.mark.parametrize("make", ["missing", "empty", "file", "only_non_runs"])
def test_a_path_that_is_no_run_nor_sweep_is_a_one_line_config_error(tmp_path, make):
    path = tmp_path / "target"
    if make == "empty":
        path.mkdir()
    elif make == "file":
        path.write_text("x")
    elif make == "only_non_runs":
        (path / "sub").mkdir(parents=True)
    with pytest.raises(ConfigError) as err:
        summarize.collect_runs([path])
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert err.value.exit_code == 2


def test_default_sort_is_best_validation_first_with_unfinished_runs_last(sweep):
    rows = summarize.sort_rows(summarize.collect_runs([sweep]), "best_val_acc")
    assert [r.run for r in rows] == ["lr-0.1", "lr-0.05", "lr-0.001", "lr-0.02", "lr-oops",
                                     "lr-0.5"]


def test_sort_by_other_columns_and_by_an_override(sweep):
    rows = summarize.collect_runs([sweep])
    order = lambda key: [r.run for r in summarize.sort_rows(rows, key)]  # noqa: E731
    assert order("wall_s")[:3] == ["lr-0.1", "lr-0.05", "lr-0.001"]  # ascending
    assert order("final_test_acc")[:3] == ["lr-0.05", "lr-0.1", "lr-0.001"]  # descending
    # Numerically, not as text ("0.001" < "0.05" < "0.1" either way; "0.5" would not be last).
    assert order("train.lr")[:3] == ["lr-0.001", "lr-0.05", "lr-0.1"]
    assert order("lr") == order("train.lr")  # the short name, as in the folder names
    assert order("run")[:3] == ["lr-0.001", "lr-0.05", "lr-0.1"]


def test_an_unknown_sort_key_suggests_the_closest_and_lists_the_valid_ones(sweep):
    rows = summarize.collect_runs([sweep])
    with pytest.raises(ConfigError) as err:
        summarize.sort_rows(rows, "best_val")
    message = str(err.value)
    assert "did you mean 'best_val_acc'?" in message
    assert "valid keys: run, status, overrides, best_val_acc" in message and "train.lr" in message
    with pytest.raises(ConfigError, match="unknown column; valid keys"):
        summarize.sort_rows(rows, "zzz")


def test_format_table_shows_percentages_states_shared_overrides_and_reasons(sweep, tmp_path):
    plain = make_done(tmp_path / "plain", [0.5], [0.5])
    rows = summarize.sort_rows(summarize.collect_runs([sweep]), "best_val_acc")
    text = summarize.format_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["run", "status", "overrides", "best_val_acc", "best_test_acc",
                                "final_val_acc", "final_test_acc", "epochs", "wall_s"]
    first = lines[1].split()
    assert first == ["lr-0.1", "done", "train.lr=0.1", "97.00%", "97.00%", "96.00%", "95.50%",
                     "2", "10.0"]
    assert "incomplete (epoch 1/2)" in text and "failed (exit 2)" in text
    assert "not started" in text
    assert "every run: data.train_size=2000 train.epochs=2" in lines
    assert "lr-oops failed: error: --set train.lr=oops: expected a number > 0" in lines
    # Columns line up: every row's best_val_acc ends where its header does.
    end = lines[0].index("best_val_acc") + len("best_val_acc")
    assert all(line[end - 1] in "%-" for line in lines[1:7])

    alone = summarize.format_table(summarize.collect_runs([plain]))
    assert alone.splitlines()[1].split()[:3] == ["plain", "done", "-"]
    assert summarize.format_table([]) == "no runs"


def test_csv_has_fractions_and_a_column_per_override(sweep, tmp_path):
    rows = summarize.sort_rows(summarize.collect_runs([sweep]), "best_val_acc")
    out = tmp_path / "out" / "results.csv"
    summarize.write_csv(rows, out)
    with open(out, newline="") as f:
        records = list(csv.DictReader(f))
    assert [r["run"] for r in records] == [r.run for r in rows]
    best = records[0]
    assert float(best["best_val_acc"]) == 0.97 and best["status"] == "done"
    assert best["train.lr"] == "0.1" and best["train.epochs"] == "2"
    assert best["overrides"] == "train.lr=0.1 data.train_size=2000 train.epochs=2"
    failed = next(r for r in records if r["run"] == "lr-oops")
    assert failed["best_val_acc"] == "" and failed["reason"].startswith("error: --set")
    assert [p.name for p in out.parent.iterdir()] == ["results.csv"]  # no temporary left


def test_the_summarize_command(sweep, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["summarize", str(sweep), "--sort", "wall_s",
                                 "--csv", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].startswith("lr-0.1 ")
    assert result.stdout.rstrip().endswith(f"wrote {tmp_path / 'r.csv'}")

    result = runner.invoke(cli, ["summarize", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(cli, ["summarize", str(sweep), "--sort", "best_tst_acc"])
    assert result.exit_code == 2 and "did you mean 'best_test_acc'?" in result.stderr


def test_summarize_imports_no_numpy():
    out = subprocess.run([sys.executable, "-X", "importtime", "-c",
                          "import cnntrain.apps.summarize"],
                         capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "cnntrain.apps.summarize" in imported and "numpy" not in imported


def test_runs_of_several_sweeps_with_the_same_names_say_whose_they_are(tmp_path):
    for sweep in ("plain", "augmented"):
        make_done(tmp_path / sweep / "seed-0", [0.9], [0.9], overrides=["train.seed=0"])
    make_done(tmp_path / "plain" / "seed-1", [0.8], [0.8], overrides=["train.seed=1"])
    names = sorted(row.run for row in summarize.collect_runs([tmp_path / "plain",
                                                              tmp_path / "augmented"]))
    assert names == ["augmented/seed-0", "plain/seed-0", "seed-1"]


# --- one broken run never breaks the summary of the others -------------------------------

_GOOD = json.dumps(_metrics(1, 0.9, 0.9))


def _break_metrics(folder, text):
    (folder / "summary.json").unlink()
    (folder / "metrics.jsonl").write_text(text)


# Each: how a run's files are damaged, and what the reason under the table must say.
DAMAGE = {
    "metrics line not JSON": (
        lambda f: _break_metrics(f, _GOOD + "\n{'epoch': 2}\n"),
        "metrics.jsonl line 2: not valid JSON"),
    "metrics line a list": (
        lambda f: _break_metrics(f, "[1, 2]\n" + _GOOD + "\n"),
        "metrics.jsonl line 1: a JSON list, expected an object"),
    "metrics accuracy a string": (
        lambda f: _break_metrics(f, json.dumps({**_metrics(1, 0.9, 0.9),
                                                "val_acc": "high"}) + "\n"),
        'metrics.jsonl line 1: val_acc is "high", expected a number'),
    "metrics epoch a string": (
        lambda f: _break_metrics(f, json.dumps({**_metrics(1, 0.9, 0.9), "epoch": "one"}) + "\n"),
        'metrics.jsonl line 1: epoch is "one", expected a whole number >= 0'),
    "metrics not UTF-8": (
        lambda f: _break_metrics(f, "") or (f / "metrics.jsonl").write_bytes(b"\xff\xfe{}\n"),
        "metrics.jsonl: not UTF-8 text"),
    "summary not JSON": (
        lambda f: (f / "summary.json").write_text('{"best": '),
        "summary.json: not valid JSON"),
    "summary best a list": (
        lambda f: (f / "summary.json").write_text('{"best": [0.9], "final": null}'),
        "summary.json best: a JSON list, expected an object"),
    "summary wall time a string": (
        lambda f: (f / "summary.json").write_text('{"best": null, "wall_seconds": "long"}'),
        'summary.json: wall_seconds is "long", expected a number of seconds'),
    "summary a directory": (
        lambda f: (f / "summary.json").unlink() or (f / "summary.json").mkdir(),
        "summary.json: cannot read it (Is a directory)"),
    "config not INI": (
        lambda f: (f / "config.ini").write_text("epochs = 3\n"),
        "config.ini: line 1: 'epochs = 3' comes before any [section] header"),
    "config epochs not a number": (
        lambda f: (f / "config.ini").write_text("[train]\nepochs = many\n"),
        "config.ini: [train] epochs = 'many' is not a whole number"),
    "sweep status exit code a string": (
        lambda f: (f / "sweep-status.json").write_text('{"exit_code": "2"}'),
        'sweep-status.json: exit_code is "2", expected a whole number >= 0'),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_an_unreadable_run_is_reported_and_the_others_are_listed(sweep, tmp_path, damage):
    spoil, reason = DAMAGE[damage]
    victim = sweep / "lr-0.1"
    if damage.startswith("sweep status"):
        (victim / "summary.json").unlink()
    spoil(victim)
    result = CliRunner().invoke(cli, ["summarize", str(sweep), "--csv", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # the others are all there, the best of them first
    assert lines[1].split()[:2] == ["lr-0.05", "done"]
    for run in ("lr-0.001", "lr-0.02", "lr-oops", "lr-0.5"):
        assert any(line.startswith(run + " ") for line in lines[1:7]), run
    row = next(line for line in lines[1:7] if line.startswith("lr-0.1 "))
    assert row.split()[1] == "unreadable" and "%" not in row
    under = [line for line in lines if line.startswith("lr-0.1 unreadable: ")]
    assert len(under) == 1 and reason in under[0], (under, reason)
    with open(tmp_path / "r.csv", newline="") as f:
        record = next(r for r in csv.DictReader(f) if r["run"] == "lr-0.1")
    assert record["status"] == "unreadable" and reason in record["reason"]


def test_a_torn_last_metrics_line_is_still_just_skipped(tmp_path):
    run = make_incomplete(tmp_path / "crashed", [0.8, 0.85], 5)  # ends in '{"epoch": 9, "val_'
    row = summarize.read_run(run)
    assert row.status_text == "incomplete (epoch 2/5)" and row.best_val_acc == 0.85


def test_requeues_a_slurm_task_used_show_in_the_status_and_a_used_up_bound_is_explained(tmp_path):
    root = tmp_path / "sweep"
    done = make_done(root / "lr-0.05", [0.9, 0.95], [0.9, 0.95], ["train.lr=0.05"])
    (done / "sweep-status.json").write_text(json.dumps(
        {"exit_code": 0, "error": "", "action": "resume", "seconds": 3, "requeues": 2}))
    note = "used its 3 of 3 requeues (--max-requeues); submit the sweep again to resume it"
    make_incomplete(root / "lr-0.1", [0.9], 4, ["train.lr=0.1"], status={
        "exit_code": 130, "error": "interrupted at epoch 2, step 15; saved ...",
        "action": "resume", "seconds": 3, "requeues": 3, "note": note})
    make_incomplete(root / "lr-0.2", [0.9], 4, ["train.lr=0.2"], status={
        "exit_code": 143, "error": "stopped by SIGTERM at epoch 2, step 12; saved ...",
        "action": "fresh", "seconds": 3, "requeues": 0})

    rows = by_run(summarize.collect_runs([root]))
    assert (rows["lr-0.05"].status_text, rows["lr-0.05"].requeues) == ("done, requeued 2", 2)
    assert rows["lr-0.1"].status_text == "incomplete (epoch 1/4), requeued 3"
    # A run stopped by SIGTERM (Slurm's time limit, scancel) kept its position: not failed.
    assert rows["lr-0.2"].status_text == "incomplete (epoch 1/4)"
    table = summarize.format_table(summarize.sort_rows(rows.values(), "run"))
    assert f"lr-0.1: {note}" in table.splitlines()
    assert not any(line.startswith(("lr-0.05:", "lr-0.2:")) for line in table.splitlines())


def test_plots_and_summaries_read_metrics_with_one_parser_under_two_policies(tmp_path):
    """runfolder_metrics.parse_metrics is the one reader of metrics.jsonl: a plot (read_metrics)
    draws every good epoch around damaged lines, a summary names the first damaged line; both
    drop a torn last line (here one that even parses, as a number)."""
    from cnntrain.runs.runfolder_metrics import BadMetricsLine, parse_metrics, read_metrics

    good = [json.dumps(_metrics(epoch, 0.9, 0.9)) for epoch in (1, 2, 3)]
    text = "\n".join([good[0], "{'epoch': 2}", "[1, 2]", good[1], "\ufffd", '{"epoch": "x"}',
                      good[2], "12"])
    (tmp_path / "metrics.jsonl").write_bytes(text.replace("\ufffd", "\udcff").encode(
        "utf-8", "surrogateescape"))  # line 5: a byte that is not UTF-8
    assert [row["epoch"] for row in read_metrics(tmp_path)] == [1, 2, 3]
    assert [n for n, _ in parse_metrics(text, skip_bad=True)] == [1, 4, 6, 7]
    with pytest.raises(BadMetricsLine, match=r"^metrics.jsonl line 2: not valid JSON") as info:
        parse_metrics(text)
    assert info.value.number == 2
    with pytest.raises(BadMetricsLine, match=r"line 3: a JSON list, expected an object"):
        parse_metrics("\n".join([good[0], good[1], "[1, 2]", good[2]]))
    assert [n for n, _ in parse_metrics("\n".join(good + ['{"epoch": 4, "val_']))] == [1, 2, 3]
    assert parse_metrics("\n".join(good) + "\n\n") == parse_metrics("\n".join(good))
