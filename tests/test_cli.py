"""The `tfmeta` command line: user errors exit 2 with a message, and a tiny train/evaluate run."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from helpers import copy_run

from tfmeta_cli.main import cli

TINY = ["--epochs", "1", "--iterations", "20", "--set", "train.eval_tasks=10", "--no-progress"]
SMALL1 = "images_background_small1.zip"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_user_error(result, *needles):
    """Exit status 2 from a handled error (no traceback), with a message naming the problem."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for needle in needles:
        assert re.search(needle, result.output), (needle, result.output)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Runs every command from tmp_path, so a default runs/ directory would land there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A sine run of one tiny epoch, shared by the tests that only read it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    result = invoke("train", "--config", "sine", "--run-dir", run, *TINY)
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.trains
def test_train_writes_a_run(trained):
    assert yaml.safe_load((trained / "config.yaml").read_text())["run_dir"] == str(trained)
    checkpoints = trained / "checkpoints"
    assert (checkpoints / "checkpoint").is_file()
    assert (checkpoints / "ckpt-1.index").is_file()
    assert list((trained / "logs").glob("events.out.tfevents.*"))
    lines = (trained / "history.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert (record["epoch"], record["iteration"]) == (1, 20)
    assert record["meta_train/loss"] > 0 and record["meta_test/mse"] > 0


@pytest.mark.trains
def test_evaluate_prints_a_table(trained):
    result = invoke("evaluate", trained, "--tasks", 20, "--steps", 3)
    assert result.exit_code == 0, result.output
    rows = [line.split()[0] for line in result.output.splitlines()
            if re.match(r"\s*\d+\s+\S+ ± ", line)]
    assert rows == ["0", "1", "3"]
    assert "20 tasks" in result.output
    saved = json.loads((trained / "evaluation-test.json").read_text())
    assert saved["tasks"] == 20 and saved["split"] == "test"
    assert sorted(saved["steps"], key=int) == ["0", "1", "3"]
    assert saved["checkpoint"].endswith("ckpt-1")


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    result = invoke("train", "--config", "omniglot_5w1s-cpu", "--data-dir", missing, *TINY)
    assert_user_error(result, re.escape(str(missing)), "does not exist")


def test_data_dir_not_set():
    result = invoke("train", "--config", "omniglot_5w1s-cpu", *TINY)
    assert_user_error(result, "data_dir is not set", "--data-dir")


def test_data_dir_without_the_zips(tmp_path):
    (tmp_path / "notes.txt").write_text("no zips here")
    result = invoke("train", "--config", "omniglot_5w1s-cpu", "--data-dir", tmp_path, *TINY)
    assert_user_error(result, "holds none of", SMALL1, "notes.txt")


def test_corrupt_zip(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / SMALL1).write_bytes(os.urandom(4096))
    result = invoke("train", "--config", "omniglot_5w1s-cpu", "--data-dir", data, *TINY)
    assert_user_error(result, re.escape(str(data / SMALL1)), "not a readable zip")


def test_unknown_dataset():
    assert_user_error(invoke("train", "--set", "data.dataset=foo", *TINY),
                      "'data.dataset'", "foo")


def test_unknown_dataset_flag_is_a_usage_error():
    result = invoke("train", "--dataset", "foo")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "foo" in result.output


def test_unknown_config_key():
    assert_user_error(invoke("train", "--set", "train.epoch=1", *TINY),
                      "'train.epoch'", "did you mean 'train.epochs'")


def test_wrong_value_type():
    assert_user_error(invoke("train", "--set", "train.iterations=many"),
                      "'train.iterations' must be int", "many")


def test_episodes_larger_than_a_class(omniglot_copy):
    result = invoke("train", "--config", "omniglot_5w1s-cpu", "--data-dir", omniglot_copy,
                    "--shots", 10, "--queries", 15, *TINY)
    assert_user_error(result, r"fewer examples than shots \+ queries = 10 \+ 15 = 25", r"\(20\)")


def test_resume_of_a_non_run(tmp_path):
    assert_user_error(invoke("train", "--resume", tmp_path, *TINY),
                      re.escape(str(tmp_path)), "not a run directory")


def test_evaluate_a_non_run(tmp_path):
    assert_user_error(invoke("evaluate", tmp_path, "--tasks", 5),
                      re.escape(str(tmp_path)), "not a run directory")


@pytest.mark.trains
def test_train_into_an_existing_run(trained):
    before = (trained / "checkpoints" / "checkpoint").read_text()
    result = invoke("train", "--config", "sine", "--run-dir", trained, *TINY)
    assert_user_error(result, "already holds a run", "--resume")
    assert (trained / "checkpoints" / "checkpoint").read_text() == before


@pytest.mark.trains
def test_resume_continues_the_run(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    result = invoke("train", "--resume", run, "--epochs", 2, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output and "iteration 20" in result.output
    assert (run / "checkpoints" / "ckpt-2.index").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    records = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["iteration"]) for r in records] == [(1, 20), (2, 40)]
    # Weights, Adam state and the episode stream all resume: epoch 2 matches an unbroken run.
    whole = tmp_path / "whole"
    result = invoke("train", "--config", "sine", "--run-dir", whole, *TINY, "--epochs", 2)
    assert result.exit_code == 0, result.output
    unbroken = json.loads((whole / "history.jsonl").read_text().splitlines()[1])
    for key in ("meta_train/loss", "meta_test/mse"):
        assert records[1][key] == pytest.approx(unbroken[key], rel=1e-5)


def diverging(run: Path) -> Path:
    """`run` with an inner learning rate that makes its next epoch diverge, as if it had been
    trained so (a resume may not change adapt.lr)."""
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["adapt"]["lr"] = 1e30
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return run


@pytest.mark.trains
def test_divergence_keeps_the_last_good_checkpoint(trained, tmp_path):
    run = diverging(copy_run(trained, tmp_path))
    before = sorted(os.listdir(run / "checkpoints"))
    result = invoke("train", "--resume", run, "--epochs", 2, "--no-progress")
    assert_user_error(result, r"meta-loss became (nan|inf|-inf)", "ckpt-1")
    assert sorted(os.listdir(run / "checkpoints")) == before
    index = (run / "checkpoints" / "checkpoint").read_text()
    assert re.search(r'^model_checkpoint_path: "ckpt-1"$', index, re.M)
    assert len((run / "history.jsonl").read_text().splitlines()) == 1


@pytest.mark.trains
def test_divergence_keeps_the_run_config(trained, tmp_path):
    run = diverging(copy_run(trained, tmp_path))
    before = yaml.safe_load((run / "config.yaml").read_text())
    result = invoke("train", "--resume", run, "--epochs", 2, "--set", "train.eval_tasks=11",
                    "--no-progress")
    assert result.exit_code == 2
    assert yaml.safe_load((run / "config.yaml").read_text()) == before


@pytest.mark.trains
def test_divergence_in_the_first_epoch(tmp_path):
    run = tmp_path / "run"
    result = invoke("train", "--run-dir", run, "--set", "adapt.lr=1e30", *TINY)
    assert_user_error(result, r"meta-loss became (nan|inf|-inf)", "none")
    assert not list(run.glob("checkpoints/ckpt-*"))


@pytest.mark.trains
def test_inner_lr_flag_in_exponent_notation(tmp_path):
    """--inner-lr 1e-5 reaches the config as 'adapt.lr=1e-05', which YAML 1.1 reads as a string."""
    run = tmp_path / "run"
    result = invoke("train", "--run-dir", run, "--inner-lr", "1e-5", "--meta-lr", "0.00001",
                    "--epochs", 1, "--iterations", 2, "--set", "train.eval_every=0",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["adapt"]["lr"] == 1e-5 and saved["train"]["meta_lr"] == 1e-5


def console_script() -> Path:
    script = Path(sys.executable).with_name("tfmeta")
    if not script.is_file():
        pytest.skip(f"console script {script} not installed")
    return script


@pytest.mark.trains
def test_console_script_reports_a_user_error(tmp_path):
    missing = tmp_path / "nowhere"
    done = subprocess.run(
        [console_script(), "train", "--config", "omniglot_5w1s-cpu", "--data-dir", missing],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    assert re.search(r"^error: .*" + re.escape(str(missing)), done.stderr, re.M)


@pytest.mark.trains
def test_a_healthy_command_starts_quietly_and_verbose_restores_the_logging(tmp_path):
    noise = re.compile(r"cuInit|absl::InitializeLog|cudart_stub|oneDNN")
    train = [console_script(), "train", "--config", "sine-cpu", "--epochs", "1", "--iterations",
             "2", "--set", "train.eval_tasks=5", "--landscape-every", "0", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k not in ("TFMETA_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    # Every command that starts TensorFlow starts it quietly: train, then evaluate on its run.
    evaluate = [console_script(), "evaluate", "quiet", "--tasks", "5", "--steps", "1"]
    for args in (train[:2] + ["--help"], train + ["--run-dir", "quiet"], evaluate):
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                              env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert not noise.search(done.stdout + done.stderr), done.stderr
    loud = subprocess.run(train + ["--run-dir", "loud"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**env, "TFMETA_VERBOSE": "1"})
    assert loud.returncode == 0
    assert noise.search(loud.stderr)     # this machine's TensorFlow does print them
    # Other warnings and errors are replayed: only the known start-up lines are dropped.
    from tfmeta import quiet
    assert not quiet.BENIGN.match("W0000 00:00:1.5    12 foo.cc:3] a real warning")
    assert not quiet.BENIGN.match("E0000 00:00:1.5    12 cuda_platform.cc:52] failed call to "
                                  "cuInit: CUDA_ERROR_OUT_OF_MEMORY (2)")


def test_collective_abort_lines_are_held_and_dropped_for_a_lost_worker(capfd, monkeypatch):
    """What a surviving worker's C++ collectives log when a peer dies (fd 2) is dropped when the
    error becomes one LostWorkerError line, and replayed for any other error; other native lines
    and Python's own stderr pass at once."""
    from tfmeta import quiet
    from tfmeta.errors import LostWorkerError
    monkeypatch.delenv(quiet.VERBOSE, raising=False)
    abort = (b"E0000 00:00:1796185158.612626    2286 ring_alg.cc:291] Aborting RingReduce with "
             b"UNAVAILABLE: recvmsg:Connection reset by peer\n"
             b"Additional GRPC error information from remote target /job:worker/replica:0/task:1 "
             b"while calling /tensorflow.WorkerService/RecvBuf:\n"
             b"The error could be from a previous operation. Restart your program to reset. "
             b"[type.googleapis.com/tensorflow.DerivedStatus='']\n")
    with pytest.raises(LostWorkerError):
        with quiet.held(quiet.COLLECTIVE_ABORT, LostWorkerError):
            os.write(2, abort)
            os.write(2, b"W0000 00:00:1.5    12 foo.cc:3] a real warning\n")
            print("from python", file=sys.stderr)
            raise LostWorkerError("lost")
    err = capfd.readouterr().err
    assert "a real warning" in err and "from python" in err and "Aborting" not in err
    assert "GRPC" not in err and "previous operation" not in err
    with pytest.raises(ValueError):
        with quiet.held(quiet.COLLECTIVE_ABORT, LostWorkerError):
            os.write(2, abort)
            raise ValueError("something else")
    assert "Aborting RingReduce" in capfd.readouterr().err
    os.write(2, b"fd 2 is the terminal again\n")
    assert "fd 2 is the terminal again" in capfd.readouterr().err


@pytest.mark.trains
def test_a_user_error_has_its_traceback_only_with_verbose(tmp_path):
    for flags, traceback in (([], False), (["--verbose"], True)):
        done = subprocess.run([console_script(), *flags, "train", "--config", "no-such-preset"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 2
        assert ("Traceback" in done.stderr) == traceback, done.stderr
        assert done.stderr.splitlines()[-1].startswith("error: "), done.stderr


@pytest.mark.trains
def test_console_script_version():
    done = subprocess.run([console_script(), "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and re.search(r"\d+\.\d+", done.stdout)


@pytest.mark.trains
def test_norm_flag_trains_evaluates_and_exports(omniglot_dir, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", "--config", "omniglot_5w1s-cpu", "--data-dir", omniglot_dir,
                    "--norm", "support", "--run-dir", run, "--set", "model.filters=8",
                    "--meta-batch", 2, "--landscape-every", 0, *TINY)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["norm"] == "support"
    result = invoke("evaluate", run, "--tasks", 10, "--steps", 1, "--norm", "transductive")
    assert result.exit_code == 0, result.output
    assert "transductive norm" in result.output
    assert json.loads((run / "evaluation-test.json").read_text())["norm"] == "transductive"
    result = invoke("export", run, "--out", tmp_path / "models" / "o")
    assert result.exit_code == 0, result.output
    assert "norm support" in result.output and "depends only on the support set" in result.output
    result = invoke("export", run, "--out", tmp_path / "models" / "o", "--norm", "transductive")
    assert "depends on the other queries" in result.output
    assert_user_error(invoke("export", run, "--out", tmp_path / "m", "--norm", "batch"),
                      "Invalid value for '--norm'")


@pytest.mark.trains
def test_auto_resume_starts_a_run_then_continues_it(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--config", "sine", "--run-dir", run, "--auto-resume", "--iterations", 10,
            "--set", "train.eval_tasks=10", "--no-progress"]
    result = invoke(*args, "--epochs", 1)
    assert result.exit_code == 0 and "resumed" not in result.output, result.output
    result = invoke(*args, "--epochs", 2)
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output and "epoch 2 (it 20/20)" in result.output
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    result = invoke("train", "--config", "sine", "--auto-resume")
    assert result.exit_code == 2 and "--auto-resume needs --run-dir" in result.output


@pytest.mark.trains
def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    from tfmeta import config as config_lib
    run = tmp_path / "run"
    run.mkdir()
    config_lib.save(config_lib.load("sine-cpu", [f"run_dir={run}"]), run / "config.yaml")
    result = invoke("train", "--resume", run, "--epochs", 1, "--iterations", 5,
                    "--set", "train.eval_tasks=10", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "no checkpoint yet" in result.output and (run / "checkpoints" / "ckpt-1.index").exists()


@pytest.mark.parametrize("args", [
    ["--help"], ["train", "--help"], ["evaluate", "--help"],
    ["train", "--config", "sine-cpu", "--set", "train.epochs=-1"],
    ["train", "--dataset", "omniglot", "--set", "data.omniglot.augment.per=x"],
    ["train", "--config", "no-such-preset"],
    ["train", "--auto-resume"],
    ["train", "--dataset", "linear", "--set", "data.linear.hard_fraction=2"],
])
@pytest.mark.trains
def test_help_and_config_errors_start_no_tensorflow(args):
    # In a fresh interpreter: this test process has TensorFlow already.
    code = ("import sys\nfrom click.testing import CliRunner\nfrom tfmeta_cli.main import cli\n"
            f"result = CliRunner().invoke(cli, {args!r})\n"
            "print(result.exit_code, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [("0" if "--help" in args else "2"), "False"]
