"""scripts/sweep_slurm.sh and the one-run `sbatch --wrap` recipe on a real Slurm cluster, through
the real sbatch, squeue, scontrol and scancel: what a stand-in sbatch cannot show (the #SBATCH
lines, the spool copy of the script, the environment reaching the tasks, the signals Slurm
sends at a time limit, on scancel or a requeue, and who receives them), and tasks that requeue
themselves (scontrol requeue) until their run is done.

They run whenever a Slurm controller answers (`scripts/slurm_local.sh up` starts a one-node
cluster on this machine; CI does that) and skip otherwise, unless CNNTRAIN_REQUIRE_SLURM=1,
which turns a missing cluster into a failure. The jobs run the same Python and cnntrain as
these tests and read the real MNIST from the loopback mirror's copy.

Slurm looks at time limits and --signal times every 30 s, and sends a --signal up to 30 s
*before* the asked lead time: with a one-minute limit and --signal=B:INT@25 the signal comes
5 to 35 s after the task starts, and the limit itself 60 to 90 s after.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.scripts.test_sweep import FIXED, GRID, GRID_NAMES, QUICK, SLURM, sweep_env
from tests.support.optional import unavailable

# One task's worth of memory, below any laptop's: sweep_slurm.sh asks for 4G by default.
MEMORY = "500M"
# The time-limit run: 6000 images an epoch, as many epochs as this machine trains in about
# 45 s (measured first), so that the early signal always finds it mid-run, whatever the speed.
TIMED_FIXED = ["--set", "data.train_size=6000", "--set", "data.val_size=500",
               "--set", "data.test_size=500"]
TIMED_SECONDS = 45
# The scancel run: a few seconds, cancelled once its first epoch is logged.
CANCELLED = ["train.lr=0.05", "--set", "data.train_size=10000", "--set", "train.epochs=3",
             "--set", "data.val_size=500", "--set", "data.test_size=500"]


def slurm_missing():
    """Why no cluster can be used here, or None when a controller answers."""
    for command in ("sbatch", "squeue", "scancel", "scontrol"):
        if shutil.which(command) is None:
            return f"{command} is not on PATH (no Slurm client installed)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "scontrol ping did not answer within 30 s"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return f"no Slurm controller answers (scontrol ping: {(ping.stdout + ping.stderr).strip()})"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = slurm_missing()
    if reason:
        hint = "; start one with scripts/slurm_local.sh up and export the SLURM_CONF it prints"
        unavailable("SLURM", reason + hint)


def job_env(data_dir, **extra):
    """The sweep's environment for submitting: this Python's own cnntrain (CNNTRAIN) on the
    real MNIST folder, and no mirror, so a task that did not get this environment could not
    run at all. The time-limit runs need the real data's size to be paced (TIMED_SECONDS)."""
    env = sweep_env(data_dir, SBATCH_MEM_PER_NODE=MEMORY, OPENBLAS_NUM_THREADS="1",
                    OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    env["CNNTRAIN"] = f"{sys.executable} -m cnntrain"
    env.pop("CNNTRAIN_TEST_MNIST_TABLE")
    return env


def run(script, *args, env, cwd):
    return subprocess.run([str(script), *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def submitted(result):
    """The job id sbatch printed; the submission must have succeeded."""
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"^Submitted batch job (\d+)$", result.stdout, re.M)
    assert found, result.stdout + result.stderr
    return found.group(1)


def job_records(job_id):
    """{array task id or job id: its `scontrol show job` fields} of a job that Slurm still
    remembers (finished jobs are kept for MinJobAge, 300 s by default)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                           text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    records = {}
    for line in shown.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        records[fields.get("ArrayTaskId", fields["JobId"])] = fields
    return records


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def wait_for(job_id, timeout):
    """Wait until every task of the job has ended, clean-up included (a job is COMPLETING
    while processes of it remain); its records then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = job_records(job_id)
        if all(fields["JobState"] in ENDED for fields in records.values()):
            return records
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], timeout=30)
    pytest.fail(f"job {job_id} did not end within {timeout} s: {job_records(job_id)}")


def states(records):
    return {task: (fields["JobState"], fields["ExitCode"]) for task, fields in records.items()}


def summarize(path):
    return subprocess.run([sys.executable, "-m", "cnntrain", "summarize", str(path)],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def reference_run():
    """start(args, out, env): an uninterrupted `cnntrain fit` of the same combination on this
    machine, started now so that it trains while the Slurm job runs; wait() on the process it
    returns. One still running when the test ends (it failed) is stopped."""
    started = []

    def start(args, out, env):
        command = [sys.executable, "-m", "cnntrain", "fit", "--config", str(QUICK),
                   "--out", str(out), "--quiet"]
        for override in [args[0]] + args[2::2]:
            command += ["--set", override]
        started.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()


def weights(checkpoint):
    """Every parameter and optimizer array of a checkpoint."""
    with np.load(checkpoint, allow_pickle=False) as data:
        return {key: data[key] for key in data.files if key.startswith(("param/", "optim/"))}


def meta(checkpoint):
    with np.load(checkpoint, allow_pickle=False) as data:
        return json.loads(bytes(data["meta.json"]).decode())


def assert_bit_identical(mine, reference):
    ours, theirs = weights(mine), weights(reference)
    assert sorted(ours) == sorted(theirs) and ours
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and np.array_equal(ours[key], theirs[key]), key


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"waited {timeout} s for {what}")


def cnntrain_on_path(bin_dir):
    """A PATH whose `cnntrain` is this Python's: the installed command beside sys.executable
    (a virtual environment's bin), else a two-line shim in bin_dir."""
    here = Path(sys.executable).parent
    if (here / "cnntrain").is_file():
        first = here
    else:
        bin_dir.mkdir(parents=True, exist_ok=True)
        shim = bin_dir / "cnntrain"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cnntrain "$@"\n')
        shim.chmod(0o755)
        first = bin_dir
    return f"{first}{os.pathsep}{os.environ.get('PATH', '')}"


# --- the one-run recipe, submitted first: its time limit takes 60 to 90 s to strike --------


@pytest.fixture(scope="module", autouse=True)
def wrapped_run(cluster, real_mnist_dir, tmp_path_factory):
    """`sbatch --time=1 --wrap "exec cnntrain fit ..."` of a run far longer than a minute, submitted
    before the other tests so that its time limit runs out while they run."""
    tmp = tmp_path_factory.mktemp("wrap")
    env = job_env(real_mnist_dir, PATH=cnntrain_on_path(tmp / "bin"))
    env.pop("CNNTRAIN")
    # `exec`, as the README says: the job's shell would die at the first SIGTERM, and the run
    # would save outside the job, if at all, depending on how the cluster tracks processes.
    wrap = (f"exec cnntrain fit --config {QUICK} --set data.train_size=2000 "
            f"--set train.epochs=1000 --set data.val_size=500 --set data.test_size=500 "
            f"--out {tmp / 'run'} --quiet")
    result = subprocess.run(["sbatch", "--time=1", f"--output={tmp}/slurm-%j.out", "--wrap", wrap],
                            env=env, cwd=tmp, capture_output=True, text=True, timeout=60)
    job = submitted(result)
    yield {"job": job, "dir": tmp}
    subprocess.run(["scancel", job], timeout=30)  # when its test did not run or failed


# --- the tests --------------------------------------------------------------------------------


def test_a_2x2_grid_completes_on_the_cluster_with_every_run_done(cluster, real_mnist_dir,
                                                                 tmp_path):
    env = job_env(real_mnist_dir)
    sweep_dir = tmp_path / "s"
    job = submitted(run(SLURM, *GRID, "-o", sweep_dir, env=env, cwd=tmp_path))
    records = wait_for(job, 240)
    assert states(records) == {str(i): ("COMPLETED", "0:0") for i in range(4)}
    assert records["0"]["ArrayTaskThrottle"] == "2"  # -j 2

    for i, name in enumerate(GRID_NAMES):
        run_dir = sweep_dir / name
        assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 1
        assert json.loads((run_dir / "sweep-status.json").read_text())["exit_code"] == 0
        output = (sweep_dir / f"slurm-{job}_{i}.out").read_text()
        assert re.search(rf"^start +#{i} {name}$", output, re.M), output
        assert re.search(rf"^done +#{i} {name} ", output, re.M), output
        # The task ran this Python's cnntrain, given through the submitter's environment.
        first = (run_dir / "sweep-output.log").read_text().splitlines()[0]
        assert f": {sys.executable} -m cnntrain fit --config {QUICK}" in first

    rows = [line.split() for line in summarize(sweep_dir).splitlines()[1:5]]
    assert sorted(row[0] for row in rows) == GRID_NAMES
    assert all(row[1] == "done" for row in rows)

    again = run(SLURM, *GRID, "-o", sweep_dir, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"all 4 runs in {sweep_dir} are done; nothing to submit" in again.stdout
    assert "Submitted" not in again.stdout


def test_a_bad_value_fails_its_task_with_the_reason_while_the_other_finishes(
        cluster, real_mnist_dir, tmp_path):
    env = job_env(real_mnist_dir)
    sweep_dir = tmp_path / "s"
    job = submitted(run(SLURM, QUICK, "train.lr=oops,0.05", *FIXED, "-o", sweep_dir, env=env,
                        cwd=tmp_path))
    records = wait_for(job, 180)
    assert states(records) == {"0": ("FAILED", "2:0"), "1": ("COMPLETED", "0:0")}

    output = (sweep_dir / f"slurm-{job}_0.out").read_text()
    assert re.search(r"^FAILED +#0 lr-oops \(exit 2\): error: --set train\.lr=oops: expected a "
                     r"number", output, re.M), output
    status = json.loads((sweep_dir / "lr-oops" / "sweep-status.json").read_text())
    assert status["exit_code"] == 2 and "train.lr=oops" in status["error"]
    assert (sweep_dir / "lr-0.05" / "summary.json").is_file()

    lines = summarize(sweep_dir).splitlines()
    assert lines[1].split()[:2] == ["lr-0.05", "done"]
    assert lines[2].split()[:3] == ["lr-oops", "failed", "(exit"]
    assert any(line.startswith("lr-oops failed: error: --set train.lr=oops") for line in lines)


def stopped_position(run_dir, signal_name):
    """(epoch, step) of the stop that train.log reports, checked against last.npz."""
    log = (run_dir / "train.log").read_text()
    word = "interrupted" if signal_name == "SIGINT" else f"stopped by {signal_name}"
    found = re.search(rf"^{word} at epoch (\d+), step (\d+); saved (\S+); continue with: ", log,
                      re.M)
    assert found, log[-2000:]
    epoch, step = int(found.group(1)), int(found.group(2))
    assert found.group(3) == str(run_dir / "checkpoints" / "last.npz")
    saved = meta(run_dir / "checkpoints" / "last.npz")
    # The exact position: the step at which it stopped, not the last epoch's end.
    assert (saved["epoch"] + 1, saved["step"]) == (epoch, step)
    return epoch, step


def epochs_lasting(seconds, env, tmp_path):
    """How many epochs of TIMED_FIXED this machine trains in `seconds` or longer: from the
    training time of one epoch (evaluation and start-up come on top, which only adds)."""
    out = tmp_path / "calibration"
    subprocess.run([sys.executable, "-m", "cnntrain", "fit", "--config", str(QUICK), *TIMED_FIXED,
                    "--set", "train.epochs=1", "--out", str(out), "--quiet"], env=env,
                   check=True, capture_output=True, timeout=120)
    epoch = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return max(10, math.ceil(seconds / epoch["seconds"]))


@pytest.fixture(scope="module")
def timed(cluster, real_mnist_dir, tmp_path_factory):
    """The combination the time-limit tests cut (about TIMED_SECONDS of training) and its
    uninterrupted reference run, trained on this machine from the first test that needs it
    on; reference() waits for it and returns its last checkpoint."""
    tmp = tmp_path_factory.mktemp("timed")
    env = job_env(real_mnist_dir)
    epochs = epochs_lasting(TIMED_SECONDS, env, tmp)
    args = ["train.lr=0.05", "--set", f"train.epochs={epochs}", *TIMED_FIXED]
    command = [sys.executable, "-m", "cnntrain", "fit", "--config", str(QUICK),
               "--out", str(tmp / "reference"), "--quiet"]
    for override in [args[0]] + args[2::2]:
        command += ["--set", override]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)

    def reference():
        assert process.wait(timeout=300) == 0, process.stderr.read()
        return tmp / "reference" / "checkpoints" / "last.npz"

    yield {"args": args, "epochs": epochs, "env": env, "reference": reference}
    if process.poll() is None:
        process.kill()
    process.wait()
    process.stderr.close()


def test_a_task_cut_by_its_time_limit_saves_its_position_and_a_resubmission_finishes_it(
        timed, tmp_path):
    env, epochs = timed["env"], timed["epochs"]
    sweep_dir, run_dir = tmp_path / "s", tmp_path / "s" / "lr-0.05"
    # Without requeues, as a sweep stopped by its time limit waits for its user.
    args = [QUICK, *timed["args"], "-o", sweep_dir, "--max-requeues", "0"]
    # sbatch's input variables override the script's #SBATCH lines, as a user would.
    limited = dict(env, SBATCH_TIMELIMIT="1", SBATCH_SIGNAL="B:INT@25")
    job = submitted(run(SLURM, *args, env=limited, cwd=tmp_path))
    records = wait_for(job, 150)
    assert records["0"]["TimeLimit"] == "00:01:00" and records["0"]["Restarts"] == "0"
    assert states(records) == {"0": ("FAILED", "130:0")}, "the run ended before the signal came"
    epoch, step = stopped_position(run_dir, "SIGINT")
    output = (sweep_dir / f"slurm-{job}_0.out").read_text()
    assert "stopped #0 lr-0.05 by SIGINT; run the sweep again to resume it" in output
    assert "requeue" not in output
    assert json.loads((run_dir / "sweep-status.json").read_text())["exit_code"] == 130
    assert not (run_dir / "summary.json").exists()
    row = summarize(sweep_dir).splitlines()[1]
    assert f"incomplete (epoch {epoch - 1}/{epochs})" in row and "requeued" not in row, row

    job = submitted(run(SLURM, *args, env=env, cwd=tmp_path))
    assert states(wait_for(job, 180)) == {"0": ("COMPLETED", "0:0")}
    assert f"resumed at epoch {epoch}, step {step}" in (run_dir / "train.log").read_text()
    assert summarize(sweep_dir).splitlines()[1].split()[:2] == ["lr-0.05", "done"]
    assert_bit_identical(run_dir / "checkpoints" / "last.npz", timed["reference"]())


def test_scancel_of_a_running_task_saves_its_position_and_a_resubmission_finishes_it(
        cluster, real_mnist_dir, reference_run, tmp_path):
    env = job_env(real_mnist_dir)
    reference = reference_run(CANCELLED, tmp_path / "reference", env)
    sweep_dir, run_dir = tmp_path / "s", tmp_path / "s" / "lr-0.05"
    args = [QUICK, *CANCELLED, "-o", sweep_dir]
    job = submitted(run(SLURM, *args, env=env, cwd=tmp_path))
    log = run_dir / "train.log"
    wait_until(lambda: log.exists() and "epoch 1/3" in log.read_text(), 120,
               "the task's first epoch")
    subprocess.run(["scancel", job], check=True, timeout=30)
    records = wait_for(job, 120)
    assert records["0"]["JobState"] == "CANCELLED", records
    epoch, step = stopped_position(run_dir, "SIGTERM")
    assert epoch == 2
    output = (sweep_dir / f"slurm-{job}_0.out").read_text()
    assert "stopped #0 lr-0.05 by SIGTERM; run the sweep again to resume it" in output
    assert json.loads((run_dir / "sweep-status.json").read_text())["exit_code"] == 143
    row = summarize(sweep_dir).splitlines()[1]
    assert "incomplete (epoch 1/3)" in row, row

    job = submitted(run(SLURM, *args, env=env, cwd=tmp_path))
    assert states(wait_for(job, 120)) == {"0": ("COMPLETED", "0:0")}
    assert f"resumed at epoch {epoch}, step {step}" in log.read_text()
    assert reference.wait(timeout=120) == 0, reference.stderr.read()
    assert_bit_identical(run_dir / "checkpoints" / "last.npz",
                         tmp_path / "reference" / "checkpoints" / "last.npz")


def wait_releasing(job_id, timeout, also=None):
    """wait_for, starting each requeued task of the job (and of job `also`) at once instead of
    after the 120 s Slurm holds it: 2 s after it is seen held, since slurmd refuses to launch
    a job within the second it killed it (its credential is revoked to the second)."""
    deadline = time.monotonic() + timeout
    held_since = {}
    while time.monotonic() < deadline:
        records = job_records(job_id)
        if all(fields["JobState"] in ENDED for fields in records.values()):
            return records
        watched = list(records.values()) + (list(job_records(also).values()) if also else [])
        for fields in watched:
            if fields["JobState"] == "PENDING" and fields.get("Reason") == "BeginTime":
                task = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
                seen = held_since.setdefault((task, fields["Restarts"]), time.monotonic())
                if time.monotonic() - seen >= 2:
                    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"],
                                   capture_output=True, timeout=30)
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], timeout=30)
    pytest.fail(f"job {job_id} did not end within {timeout} s: {job_records(job_id)}")


def test_tasks_requeue_themselves_at_the_early_signal_until_done_or_out_of_requeues(
        timed, tmp_path):
    env = dict(timed["env"], SBATCH_TIMELIMIT="1", SBATCH_SIGNAL="B:INT@25")
    # At the same time, a run far longer than two attempts with one requeue: the second early
    # signal finds it with none left.
    bounded_dir = tmp_path / "bounded"
    bounded = submitted(run(SLURM, QUICK, "train.lr=0.05", "--set", "train.epochs=1000",
                            *TIMED_FIXED, "-o", bounded_dir, "--max-requeues", "1", env=env,
                            cwd=tmp_path))
    # About 45 s of training and at most 35 s of it per attempt: two attempts or more, with a
    # bound the test cannot exhaust, however early the signals come.
    sweep_dir, run_dir = tmp_path / "s", tmp_path / "s" / "lr-0.05"
    job = submitted(run(SLURM, QUICK, *timed["args"], "-o", sweep_dir, "--max-requeues", "10",
                        env=env, cwd=tmp_path))

    records = wait_releasing(job, 400, also=bounded)
    assert states(records) == {"0": ("COMPLETED", "0:0")}
    requeues = int(records["0"]["Restarts"])
    assert 1 <= requeues <= 10
    said = (sweep_dir / "sweep.log").read_text()  # every attempt's lines, timestamped
    assert len(re.findall(r" requeue #0 lr-0\.05 \(\d+ of 10\): the requeued task goes on from "
                          r"checkpoints/last\.npz$", said, re.M)) == requeues, said
    assert len(re.findall(r" resume  #0 lr-0\.05 from ", said, re.M)) == requeues, said
    assert re.search(r" done +#0 lr-0\.05 ", said, re.M), said
    log = (run_dir / "train.log").read_text()
    assert len(re.findall(r"^interrupted at epoch \d+, step \d+; saved ", log, re.M)) == requeues
    assert len(re.findall(r"^resumed at epoch \d+, step \d+ ", log, re.M)) == requeues
    assert json.loads((run_dir / "sweep-status.json").read_text())["requeues"] == requeues
    row = summarize(sweep_dir).splitlines()[1]
    assert f" done, requeued {requeues} " in row, row
    assert_bit_identical(run_dir / "checkpoints" / "last.npz", timed["reference"]())

    records = wait_releasing(bounded, 200)
    said = (bounded_dir / "sweep.log").read_text()
    assert states(records) == {"0": ("FAILED", "130:0")} and records["0"]["Restarts"] == "1", \
        (records, said)
    note = "used its 1 of 1 requeues (--max-requeues); submit the sweep again to resume it"
    assert re.search(r" stopped #0 lr-0\.05 after 1 requeues \(--max-requeues 1\); submit the "
                     r"sweep again to resume it$", said, re.M), said
    status = json.loads((bounded_dir / "lr-0.05" / "sweep-status.json").read_text())
    assert (status["exit_code"], status["requeues"], status["note"]) == (130, 1, note)
    lines = summarize(bounded_dir).splitlines()
    assert re.search(r"incomplete \(epoch \d+/1000\), requeued 1", lines[1]), lines
    assert f"lr-0.05: {note}" in lines


def test_a_task_requeued_by_slurm_itself_goes_on_from_its_checkpoint(
        cluster, real_mnist_dir, reference_run, tmp_path):
    # What preemption with PreemptMode=REQUEUE or an admin does: no early signal, SIGTERM.
    env = job_env(real_mnist_dir)
    reference = reference_run(CANCELLED, tmp_path / "reference", env)
    sweep_dir, run_dir = tmp_path / "s", tmp_path / "s" / "lr-0.05"
    job = submitted(run(SLURM, QUICK, *CANCELLED, "-o", sweep_dir, env=env, cwd=tmp_path))
    log = run_dir / "train.log"
    wait_until(lambda: log.exists() and "epoch 1/3" in log.read_text(), 120,
               "the task's first epoch")
    subprocess.run(["scontrol", "requeue", f"{job}_0"], check=True, timeout=30)
    records = wait_releasing(job, 180)
    assert states(records) == {"0": ("COMPLETED", "0:0")} and records["0"]["Restarts"] == "1"
    text = log.read_text()
    stopped = re.search(r"^stopped by SIGTERM at epoch 2, step (\d+); saved ", text, re.M)
    assert stopped, text
    assert f"resumed at epoch 2, step {stopped.group(1)} " in text
    said = (sweep_dir / "sweep.log").read_text()
    assert re.search(r" stopped #0 lr-0\.05 by SIGTERM; ", said) and " requeue #0" not in said
    assert summarize(sweep_dir).splitlines()[1].split()[:4] == ["lr-0.05", "done,", "requeued",
                                                                "1"]
    assert reference.wait(timeout=120) == 0, reference.stderr.read()
    assert_bit_identical(run_dir / "checkpoints" / "last.npz",
                         tmp_path / "reference" / "checkpoints" / "last.npz")


def test_a_plain_sbatch_wrap_run_cut_by_its_time_limit_saves_its_position(wrapped_run):
    job, tmp = wrapped_run["job"], wrapped_run["dir"]
    records = wait_for(job, 200)
    # cnntrain's own exit code after saving: 128 + SIGTERM.
    assert states(records) == {job: ("TIMEOUT", "143:0")}, records
    output = (tmp / f"slurm-{job}.out").read_text()
    assert "CANCELLED AT" in output and "DUE TO TIME LIMIT" in output
    run_dir = tmp / "run"
    # Saved before the job ended: the run was the job's own process to the last.
    epoch, step = stopped_position(run_dir, "SIGTERM")
    # cnntrain itself saved and said so, before Slurm's SIGKILL.
    assert re.search(rf"^stopped by SIGTERM at epoch {epoch}, step {step}; ", output, re.M)
    row = summarize(run_dir).splitlines()[1]
    assert f"incomplete (epoch {epoch - 1}/1000)" in row, row
