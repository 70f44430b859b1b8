"""Run directories that no second process, lost file, changed flag or full disk can silently
corrupt: each case done for real (two processes, a deleted state file, a truncated config, a
resume with a forbidden flag, a tmpfs filled to its last bytes) and its one-line answer checked."""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import copy_run

from tfmeta import config as config_lib, rundir
from tfmeta.errors import ConfigError
from tfmeta_cli.main import cli

pytestmark = pytest.mark.trains

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
TINY = ["--iterations", "20", "--set", "train.eval_tasks=10", "--landscape-every", "0",
        "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result) -> str:
    """The one `error:` line of a handled failure (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def command(*args) -> list:
    return [sys.executable, "-m", "tfmeta_cli.main", *map(str, args)]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory) -> Path:
    """A sine run of two tiny epochs with every checkpoint kept, for tests that copy it."""
    run = tmp_path_factory.mktemp("two") / "run"
    result = invoke("train", "--config", "sine", "--run-dir", run, "--epochs", 2,
                    "--keep-checkpoints", 0, *TINY)
    assert result.exit_code == 0, result.output
    return run


def epochs_in(run: Path) -> list:
    return [json.loads(line)["epoch"] for line in (run / "history.jsonl").read_text().splitlines()]


# --- one writer at a time ---------------------------------------------------------------------

def test_a_second_writer_is_refused_while_the_first_trains(tmp_path):
    """A second `train`, a `--resume`, an `evaluate` and an `analyze` of a run that is training
    are each refused with who holds it; once it is stopped, they work. Before the lock, both
    trainings ran and every epoch appeared twice in the history."""
    run = tmp_path / "run"
    first = subprocess.Popen(command("train", "--config", "sine", "--run-dir", run, "--epochs", 100,
                                     "--iterations", 300, "--set", "train.steps_per_execution=1",
                                     "--set", "train.eval_tasks=10", "--landscape-every", 0,
                                     "--no-progress"),
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not rundir.complete_checkpoints(run):
            assert time.time() < deadline and first.poll() is None, first.communicate()[0]
            time.sleep(0.1)
        held = re.escape(f"{run} is being trained by process {first.pid} (host ")
        for args in (["train", "--config", "sine", "--run-dir", run, "--seed", 4, *TINY],
                     ["train", "--resume", run, *TINY[-1:]],
                     ["evaluate", run, "--tasks", 5],
                     ["analyze", run, "--no-progress"]):
            line = error_line(invoke(*args))
            assert re.match(r"error: " + held + r".*\); wait for it to end, or use another run "
                            "directory$", line), line
        assert first.poll() is None   # still training: every refusal met the live lock
    finally:
        first.send_signal(signal.SIGTERM)
        output = first.communicate(timeout=120)[0]
    epochs = epochs_in(run)
    assert epochs == sorted(set(epochs)), output   # each epoch once
    assert invoke("evaluate", run, "--tasks", 5).exit_code == 0


def test_two_trainings_started_at_once_leave_one_run(tmp_path):
    """Started together with different seeds: one trains, the other is refused before it writes
    anything, so the run's config and checkpoints are all one run's."""
    run = tmp_path / "run"
    processes = [subprocess.Popen(command("train", "--config", "sine", "--run-dir", run,
                                          "--epochs", 2, "--seed", seed, *TINY),
                                  env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for seed in (1, 2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    codes = sorted(p.returncode for p in processes)
    assert codes == [0, 2], outputs
    refused = outputs[[p.returncode for p in processes].index(2)]
    # Refused by the lock, or, if the first had finished before the second looked, by its run.
    assert ("is being trained by process" in refused or "already holds a run" in refused), refused
    assert "Traceback" not in refused
    winner = (1, 2)[[p.returncode for p in processes].index(0)]
    assert config_lib.load(str(run / "config.yaml")).train.seed == winner
    assert epochs_in(run) == [1, 2]


# --- the checkpoint state -------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["deleted", "garbled"])
def test_a_lost_state_file_restores_the_newest_complete_checkpoint(two_epochs, tmp_path, damage):
    """Without TensorFlow's `checkpoint` file the run used to count as "no run": a resume
    started over and overwrote ckpt-1 and ckpt-2, and evaluate refused."""
    run = copy_run(two_epochs, tmp_path)
    state = run / "checkpoints" / "checkpoint"
    state.unlink() if damage == "deleted" else state.write_bytes(b"\xff\x00 not a state")
    result = invoke("evaluate", run, "--tasks", 5)
    assert result.exit_code == 0, result.output
    assert re.search(r"warning: .*checkpoint \(TensorFlow's list of checkpoints\) is missing or "
                     r"unreadable; restoring the newest complete checkpoint, .*ckpt-2$",
                     result.output, re.M), result.output
    result = invoke("train", "--resume", run, "--epochs", 3, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output and "at iteration 40" in result.output
    assert epochs_in(run) == [1, 2, 3]


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(two_epochs, tmp_path):
    run = copy_run(two_epochs, tmp_path)
    data = next((run / "checkpoints").glob("ckpt-2.data-*"))
    data.write_bytes(data.read_bytes()[:20])   # cut short: the index no longer matches it
    result = invoke("evaluate", run, "--tasks", 5)
    assert result.exit_code == 0, result.output
    assert re.search(r"warning: .*ckpt-2 is damaged \(.*\); falling back to .*ckpt-1$",
                     result.output, re.M), result.output
    assert json.loads((run / "evaluation-test.json").read_text())["checkpoint"].endswith("ckpt-1")
    # An index that is gone makes ckpt-2 incomplete: ckpt-1 is the newest, and the state file's
    # "ckpt-2" is said to be wrong.
    (run / "checkpoints" / "ckpt-2.index").unlink()
    result = invoke("evaluate", run, "--tasks", 5)
    assert result.exit_code == 0 and "names" in result.output and "not complete" in result.output
    # With every checkpoint unusable, one line; a resume never starts over.
    (run / "checkpoints" / "ckpt-1.index").unlink()
    assert "no checkpoint to restore" in error_line(invoke("evaluate", run, "--tasks", 5))
    line = error_line(invoke("train", "--resume", run, "--epochs", 3, "--no-progress"))
    assert "holds ckpt-1.data-00000-of-00001, ckpt-2.data-00000-of-00001" in line
    assert "no complete checkpoint" in line and epochs_in(run) == [1, 2]


# --- the saved config -------------------------------------------------------------------------

@pytest.mark.parametrize("cut, missing", [
    (lambda text: "", "'algorithm' and 8 more keys"),
    (lambda text: text[:text.index("\ntrain:")], "'train' and 1 more keys"),
    (lambda text: re.sub(r"\n  iterations: \d+", "", text), "'train.iterations'"),
])
def test_an_incomplete_saved_config_is_refused(two_epochs, tmp_path, cut, missing):
    """An empty or cut config used to load with the defaults: export then served 1 adaptation
    step instead of the run's."""
    run = copy_run(two_epochs, tmp_path)
    path = run / "config.yaml"
    path.write_text(cut(path.read_text()))
    for args in (["evaluate", run, "--tasks", 5], ["export", run, "--out", tmp_path / "m"],
                 ["train", "--resume", run, "--epochs", 3, "--no-progress"]):
        line = error_line(invoke(*args))
        assert line.startswith(f"error: {path}: missing {missing}"), line
        assert "a saved run's config holds every key" in line


# --- a resume keeps the run's identity ------------------------------------------------------------

@pytest.mark.parametrize("flags, key", [
    (["--algorithm", "anil"], "algorithm"),
    (["--algorithm", "meta-sgd"], "algorithm"),
    (["--seed", "3"], "train.seed"),
    (["--iterations", "1000"], "train.iterations"),
    (["--iterations", "1000", "--epochs", "8"], "train.iterations"),
    (["--meta-lr", "0.01"], "train.meta_lr"),
    (["--set", "model.hidden=[20,20]"], "model.hidden"),
    (["--shots", "5"], "data.shots"),
    (["--inner-lr", "0.1"], "adapt.lr"),
])
def test_a_resume_may_not_change_what_makes_the_run(two_epochs, tmp_path, flags, key):
    run = copy_run(two_epochs, tmp_path)
    before = (run / "config.yaml").read_text()
    line = error_line(invoke("train", "--resume", run, *flags, "--no-progress"))
    assert re.match(rf"error: --resume {re.escape(str(run))}: '{re.escape(key)}' is .* in this "
                    "run and cannot change to .*: that would be another run under this run's "
                    "name", line), line
    assert (run / "config.yaml").read_text() == before and epochs_in(run) == [1, 2]


def test_a_resume_may_add_epochs_and_change_how_it_is_measured_and_run(two_epochs, tmp_path):
    run = copy_run(two_epochs, tmp_path)
    result = invoke("train", "--resume", run, "--epochs", 3, "--landscape-every", 0,
                    "--set", "train.eval_tasks=7", "--set", "train.steps_per_execution=5",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    saved = config_lib.load(str(run / "config.yaml"))
    assert (saved.train.epochs, saved.train.eval_tasks) == (3, 7)
    # A finished run says so, and trains nothing.
    result = invoke("train", "--resume", run, "--no-progress")
    assert result.exit_code == 0 and "has trained its 3 epochs" in result.output
    assert epochs_in(run) == [1, 2, 3]


def test_with_a_cosine_schedule_the_epochs_are_part_of_the_run(tmp_path):
    run = tmp_path / "run"
    assert invoke("train", "--config", "sine", "--run-dir", run, "--epochs", 1,
                  "--set", "train.cosine_lr=true", *TINY).exit_code == 0
    line = error_line(invoke("train", "--resume", run, "--epochs", 2, "--no-progress"))
    assert "'train.epochs' is 1" in line and "cosine_lr the schedule is spread" in line


def test_a_checkpoint_without_the_runs_variables_is_refused(two_epochs, tmp_path):
    """A Meta-SGD run's learned rates are not in a MAML checkpoint: restoring one used to start
    them fresh, hidden by `expect_partial()`."""
    from tfmeta.run import Run
    run = copy_run(two_epochs, tmp_path)
    config = config_lib.load(str(run / "config.yaml"), ["algorithm=meta-sgd"])
    with pytest.raises(ConfigError, match=r"ckpt-2 lacks variables that this run's meta-sgd .* "
                                          r"model has .*another algorithm or model\?"):
        Run(config, run).restore(log=lambda _: None)


# --- the history ------------------------------------------------------------------------------

def test_a_half_written_history_line_is_mended_before_the_next(two_epochs, tmp_path):
    """A line cut by a full disk used to get the next epoch glued onto it, and `report` then
    failed on it."""
    run = copy_run(two_epochs, tmp_path)
    history = run / "history.jsonl"
    history.write_bytes(history.read_bytes() + b'{"epoch": 3, "itera')
    warned = []
    assert [r["epoch"] for r in rundir.read_history(run, warned.append)] == [1, 2]
    assert len(warned) == 1 and warned[0].startswith(f"{history}:3: skipped a damaged last line")
    result = invoke("train", "--resume", run, "--epochs", 3, "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"{history}: dropped an incomplete last line (19 bytes) before appending" in (
        result.output)
    assert epochs_in(run) == [1, 2, 3]
    # Bytes that are not UTF-8: the last line is skipped and said; any other is refused.
    history.write_bytes(history.read_bytes() + b"\xff\xfe\n")
    warned.clear()
    assert len(rundir.read_history(run, warned.append)) == 3 and "not UTF-8" in warned[0]
    history.write_bytes(history.read_bytes() + b'{"epoch": 4}\n')
    with pytest.raises(Exception, match=r"history.jsonl:4: not a JSON line \(not UTF-8\)"):
        rundir.read_history(run)


# --- the data ---------------------------------------------------------------------------------

def test_the_run_records_its_data_and_refuses_other_data(omniglot_dir, tmp_path):
    """With one of the two Omniglot zips gone, evaluate used to score on the rest (0.411
    against 0.477) and overwrite the run's evaluation; --resume trained on it."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("images_background_small1.zip", "images_background_small2.zip"):
        shutil.copy(omniglot_dir / name, data / name)
    run = tmp_path / "run"
    result = invoke("train", "--config", "omniglot_5w1s-cpu", "--data-dir", data, "--run-dir", run,
                    "--epochs", 1, "--iterations", 2, "--set", "train.eval_tasks=4",
                    "--landscape-every", 0, "--no-progress")
    assert result.exit_code == 0, result.output
    saw = json.loads((run / rundir.DATA).read_text())
    assert saw["dataset"] == "omniglot" and len(saw["examples"]) == 64
    # How episodes are drawn at evaluation is not the data.
    assert invoke("evaluate", run, "--tasks", 4, "--episodes", "within_alphabet").exit_code == 0
    assert invoke("evaluate", run, "--tasks", 4).exit_code == 0
    (data / "images_background_small2.zip").unlink()
    for args in (["evaluate", run, "--tasks", 4], ["analyze", run, "--no-progress"],
                 ["train", "--resume", run, "--epochs", 2, "--no-progress"]):
        line = error_line(invoke(*args))
        assert re.match(rf"error: {re.escape(str(run))} was trained on other data: it saw "
                        r"omniglot: \d+ test / \d+ train classes, examples [0-9a-f]{8}, and the "
                        r"data now is omniglot: \d+ test / \d+ train classes, examples "
                        r"[0-9a-f]{8}\. .* pass --other-data", line), line
    result = invoke("evaluate", run, "--tasks", 4, "--other-data")
    assert result.exit_code == 0 and "going on (--other-data)" in result.output


# --- disk faults ------------------------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MB tmpfs mounted for the test (the tests run as root; where mounting is not allowed,
    the test is skipped with the reason)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(mount: Path, leave: int) -> Path:
    """Fills `mount` but for `leave` bytes; returns the filler file."""
    filler = mount / "filler"
    free = shutil.disk_usage(mount).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_is_one_line_and_the_resume_after_it_continues(tmpfs):
    """Training into a tmpfs filled to its last bytes: the save that no longer fits ends the run
    with one line naming the path and the remedy; freed, the same resume continues from the last
    good checkpoint, and nothing half-written stays."""
    run = tmpfs / "run"
    filler = fill(tmpfs, 160 << 10)
    result = invoke("train", "--config", "sine", "--run-dir", run, "--epochs", 30,
                    "--keep-checkpoints", 0, *TINY)
    line = error_line(result)
    assert re.match(rf"error: cannot write {re.escape(str(tmpfs))}/\S+: No space left on device; "
                    r"free space on that disk, then run the same command again", line), line
    filler.unlink()
    done = len(rundir.complete_checkpoints(run))
    result = invoke("train", "--resume", run, "--epochs", done + 1, "--no-progress")
    assert result.exit_code == 0, result.output
    assert not list((run / "checkpoints").glob("*_temp*"))
    # The epoch whose save failed may have its record twice (a resume repeats it).
    assert sorted(set(epochs_in(run))) == list(range(1, done + 2))


def test_a_read_only_run_is_one_line(two_epochs, tmpfs, tmp_path):
    run = tmpfs / "run"
    shutil.copytree(two_epochs, run)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    for args in (["evaluate", run, "--tasks", 5],
                 ["train", "--resume", run, "--epochs", 3, "--no-progress"]):
        line = error_line(invoke(*args))
        assert line == (f"error: cannot write {run / rundir.LOCK}: Read-only file system; the "
                        "folder is on a read-only file system: write the run or export elsewhere "
                        "(copy a read-only run to evaluate or analyze it)"), line
    # Exporting only reads the run.
    assert invoke("export", run, "--out", tmp_path / "models").exit_code == 0


# --- exports ----------------------------------------------------------------------------------

def test_exports_into_one_folder_take_turns_and_clean_up(two_epochs, tmp_path):
    """Two exports at once used to collide (ENOTEMPTY); a killed one left a hidden folder for
    good; versions were private (0700)."""
    models = tmp_path / "models"
    models.mkdir()
    (models / ".3.partial-killed").mkdir()
    processes = [subprocess.Popen(command("export", two_epochs, "--out", models), env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == ["1", "2"]
    assert not list(models.glob(".*.partial-*"))
    mask = os.umask(0)
    os.umask(mask)
    for version in ("1", "2"):
        assert stat.S_IMODE((models / version).stat().st_mode) == 0o777 & ~mask


def test_sigterm_during_training_keeps_the_lock_free_for_the_next(tmp_path):
    """The lock dies with its holder: a run killed by SIGTERM resumes at once."""
    run = tmp_path / "run"
    first = subprocess.Popen(command("train", "--config", "sine", "--run-dir", run, "--epochs", 20,
                                     *TINY), env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not rundir.complete_checkpoints(run):
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    first.wait(60)
    result = invoke("train", "--resume", run, "--no-progress")
    assert result.exit_code == 0, result.output
    assert sorted(set(epochs_in(run))) == list(range(1, 21))
