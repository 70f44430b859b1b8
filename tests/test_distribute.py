"""Distributed training against one process: MirroredStrategy on logical CPU devices, real
multi-worker `tfmeta train` processes on 127.0.0.1, a worker killed mid-run, TF_CONFIG errors, and
workers preparing the same data cache at once."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tfmeta import config as config_lib, distribute
from tfmeta.errors import ConfigError
from tfmeta.run import Run
from tfmeta.tasks import sampler

TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
SINE = ["--config", "sine", "--meta-batch", "4", "--set", "train.eval_tasks=10",
        "--landscape-every", "0", "--no-progress"]


def start_workers(args: list, logs: Path, workers: int = 2, tmp: Path = None) -> list:
    """`tfmeta train --strategy multi-worker ARGS` once per worker of a fresh local cluster; each
    process's `tf_config` is its TF_CONFIG."""
    logs.mkdir(parents=True, exist_ok=True)
    extra = {"TMPDIR": str(tmp)} if tmp else {}
    processes = []
    for i, tf_config in enumerate(distribute.local_cluster(workers)):
        process = subprocess.Popen(
            [sys.executable, "-m", "tfmeta_cli.main", "train", "--strategy", "multi-worker",
             *args], stdout=(logs / f"worker{i}.log").open("w"), stderr=subprocess.STDOUT,
            env={**ENV, "TF_CONFIG": tf_config, **extra})
        process.tf_config = json.loads(tf_config)
        processes.append(process)
    return processes


def wait_all(processes: list, logs: Path, timeout: float = 300) -> None:
    for i, process in enumerate(processes):
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise AssertionError(f"worker {i} timed out:\n{(logs / f'worker{i}.log').read_text()}")
        assert code == 0, (logs / f"worker{i}.log").read_text()


def train_one_process(args: list, run_dir: Path) -> None:
    subprocess.run([sys.executable, "-m", "tfmeta_cli.main", "train", *args, "--run-dir",
                    str(run_dir)], check=True, env=ENV, capture_output=True)


def weights(run_dir: Path) -> np.ndarray:
    run = Run(config_lib.load(str(run_dir / "config.yaml")), run_dir)
    run.restore()
    return np.concatenate([v.numpy().ravel() for v in run.model.trainable_variables])


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


# --- MirroredStrategy ----------------------------------------------------------------------------

@pytest.mark.slow
def test_mirrored_on_two_devices_equals_one_device_for_every_algorithm(tmp_path, omniglot_dir):
    """3 meta-steps of each algorithm under MirroredStrategy over 2 logical CPU devices against
    the default strategy; and a run resumed on 2 replicas after an epoch on one."""
    result = subprocess.run([sys.executable, str(TESTS / "mirrored_equivalence.py"), str(tmp_path),
                             str(omniglot_dir)], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    cases = {line["case"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert {"maml", "maml first-order", "maml-reg", "maml-reg differentiated mean",
            "gradient-agreement", "wormhole", "nal", "finetune", "omniglot conv4",
            "maml float64", "maml-reg float64", "gradient-agreement float64",
            "resumed on 2 replicas", "anil", "meta-sgd", "maml++ options",
            "omniglot conv4 anil per-step norms", "maml 2 steps per execution",
            "gradient-agreement 2 steps per execution"} <= set(cases)
    for name, case in cases.items():
        tolerance = 1e-10 if case["dtype"] == "float64" else 1e-5
        assert case["relative_difference"] < tolerance, (name, case)


# --- multi-worker ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_worker_processes_train_as_one_process(tmp_path):
    """gradient-agreement, whose task weights need the whole meta-batch, on 2 real workers, 3
    meta-steps per compiled call."""
    args = SINE + ["--algorithm", "gradient-agreement", "--epochs", "2", "--iterations", "10",
                   "--set", "train.steps_per_execution=3"]
    run_dir, scratch = tmp_path / "cluster", tmp_path / "scratch"
    scratch.mkdir()
    workers = start_workers(args + ["--run-dir", str(run_dir)], tmp_path / "logs", tmp=scratch)
    wait_all(workers, tmp_path / "logs")
    train_one_process(args, tmp_path / "one")
    assert relative_difference(weights(tmp_path / "one"), weights(run_dir)) < 1e-5
    # The chief's per-epoch evaluation gives the one process's numbers.
    history = [[json.loads(line) for line in (d / "history.jsonl").read_text().splitlines()]
               for d in (tmp_path / "one", run_dir)]
    np.testing.assert_allclose([r["meta_test/mse"] for r in history[1]],
                               [r["meta_test/mse"] for r in history[0]], rtol=1e-5)
    # The chief wrote the run; the other worker wrote nothing that stays.
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoints", "config.yaml",
                                                          "data.json", "history.jsonl", "logs",
                                                          "per_task.jsonl"]
    assert len((run_dir / "history.jsonl").read_text().splitlines()) == 2
    assert not list(scratch.iterdir())
    log = (tmp_path / "logs" / "worker1.log").read_text()
    assert "epoch 2 (it 20/20)" in log and "meta_test" not in log


@pytest.mark.slow
def test_a_killed_worker_then_a_restarted_job_ends_as_an_uninterrupted_run(tmp_path):
    """The chief is killed in the second epoch: the surviving worker exits by itself with one
    `error:` line that names the lost task and the remedy, and status 138; the same command run
    again continues from the checkpoint and ends with a one-process run's weights."""
    args = SINE + ["--epochs", "3", "--iterations", "150", "--set", "train.keep_checkpoints=0"]
    run_dir, logs = tmp_path / "cluster", tmp_path / "logs"
    # The same command starts the job and, after a failure, continues it.
    command = args + ["--run-dir", str(run_dir), "--auto-resume"]
    workers = start_workers(command, logs)
    deadline = time.time() + 240
    while not (run_dir / "checkpoints" / "ckpt-1.index").exists():
        assert time.time() < deadline and all(w.poll() is None for w in workers), \
            (logs / "worker0.log").read_text()
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    workers[0].send_signal(signal.SIGKILL)  # the chief, which writes the checkpoints
    assert workers[1].wait(60) == 138, (logs / "worker1.log").read_text()
    survivor = (logs / "worker1.log").read_text().splitlines()
    address = workers[1].tf_config["cluster"]["worker"][0]
    # Which of TensorFlow's mechanisms notices first (the collective's socket or the coordination
    # service) is a race, and each words its reason its own way ("recvmsg:Connection reset by
    # peer", "Socket closed", "Failed to send RPC to coordination service", ...): what is pinned is
    # one line that names the task, its address, the remedy and the checkpoint, with a one-line
    # reason that is not a traceback or a line of TensorFlow's native log.
    lines = [line for line in survivor if not line.startswith("epoch ")]
    assert len(lines) == 1, survivor
    match = re.fullmatch(
        re.escape(f"error: lost worker 0 ({address}) of the multi-worker job (") + r"(?P<reason>.+)"
        + re.escape("); the job cannot go on without it. Restart every worker with the same "
                    "command and --auto-resume: the job continues from its last checkpoint, "
                    f"{run_dir / 'checkpoints' / 'ckpt-1'}"), lines[0])
    assert match, lines[0]
    assert not re.search(r"Traceback|\[\[|\[Op:|^[IWEF]\d{4} |[IWEF]\d{4} [\d:.]+ +\d+ ",
                         match["reason"]), lines[0]
    assert not (run_dir / "checkpoints" / "ckpt-3.index").exists()
    restarted = start_workers(command, tmp_path / "again")
    wait_all(restarted, tmp_path / "again")
    assert "resumed" in (tmp_path / "again" / "worker0.log").read_text()
    train_one_process(args, tmp_path / "one")
    assert relative_difference(weights(tmp_path / "one"), weights(run_dir)) < 1e-5
    epochs = [json.loads(line)["epoch"] for line in
              (run_dir / "history.jsonl").read_text().splitlines()]
    assert sorted(set(epochs)) == [1, 2, 3]


# The error a surviving worker's collective raised when its peer was killed (TF 2.21, measured).
LOST = ("Graph execution error:\n\nDetected at node CollectiveReduceV2_1 defined at (most recent "
        "call last):\n  File \"<frozen runpy>\", line 198, in _run_module_as_main\n\nCollective "
        "ops is aborted by: recvmsg:Connection reset by peer\nAdditional GRPC error information "
        "from remote target /job:worker/replica:0/task:1 while calling /tensorflow.WorkerService/"
        "RecvBuf:\n:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:\"recvmsg:"
        "Connection reset by peer\"}\nThe error could be from a previous operation. Restart your "
        "program to reset.\n\t [[{{node CollectiveReduceV2_1}}]] [Op:__inference_step_1276]")


COORDINATION = ("Failed to send RPC to coordination service. Either the leader task was "
                "preempted/died/restarted unexpectedly or this task is experiencing network "
                "issues. Check earlier logs from 1) this task, 2) the leader (usually slice 0 task "
                "0), and 3) cluster scheduler to debug further.")


def test_a_lost_peer_is_named_with_its_address_and_the_remedy():
    tf_config = json.loads(distribute.local_cluster(2)[0])
    address = tf_config["cluster"]["worker"][1]
    assert distribute.lost_peer_message(LOST, tf_config, "/runs/a/checkpoints/ckpt-4") == (
        f"lost worker 1 ({address}) of the multi-worker job (recvmsg:Connection reset by peer); "
        "the job cannot go on without it. Restart every worker with the same command and "
        "--auto-resume: the job continues from its last checkpoint, /runs/a/checkpoints/ckpt-4")
    # When the coordination service notices first, its reason is cut to its first sentence.
    coordination = LOST.replace("recvmsg:Connection reset by peer\nAdditional",
                                COORDINATION + "\nAdditional")
    assert "(Failed to send RPC to coordination service); the job cannot" in (
        distribute.lost_peer_message(coordination, tf_config, None))
    # A third wording of the same race keeps the same line around its reason.
    socket_closed = LOST.replace("recvmsg:Connection reset by peer\nAdditional",
                                 "Socket closed\nAdditional")
    assert distribute.lost_peer_message(socket_closed, tf_config, "/c") == (
        distribute.lost_peer_message(LOST, tf_config, "/c").replace(
            "recvmsg:Connection reset by peer", "Socket closed"))
    # A message that names no task: the peers whose addresses refuse connections are named.
    assert distribute.lost_peer_message(
        "UNAVAILABLE: socket closed\n\t [[{{node CollectiveReduceV2_1}}]] [Op:__inference_step_9]",
        tf_config, None, probe=lambda a: a != address) == (
        f"lost worker 1 ({address}) of the multi-worker job (UNAVAILABLE: socket closed); the job "
        "cannot go on without it. Restart every worker with the same command and --auto-resume: "
        "the job continues from the beginning (no checkpoint yet)")
    # ... and when every peer still answers, no task is named.
    assert distribute.lost_peer_message("UNAVAILABLE: socket closed", tf_config, None,
                                        probe=lambda a: True).startswith(
        "lost a peer of the multi-worker job (UNAVAILABLE: socket closed); the job cannot")


def test_a_peer_that_listens_is_reachable_and_a_closed_port_is_not():
    import socket
    from tfmeta import ports
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        assert ports.accepts(address)
    assert not ports.accepts(address)
    assert not ports.accepts("not-an-address")


# --- configuration errors -------------------------------------------------------------------------

def cluster_of(**task):
    return json.dumps({"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]},
                       "task": {"type": "worker", "index": 0, **task}})


@pytest.mark.parametrize("text, message", [
    (None, "TF_CONFIG is not set"),
    ("{cluster", "TF_CONFIG is not JSON"),
    ("[]", "must be a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', "field 'cluster' must be an object"),
    ('{"cluster": {"worker": "127.0.0.1:2222"}, "task": {"type": "worker", "index": 0}}',
     "field 'cluster.worker' must be a non-empty list"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
     "field 'cluster.worker\\[0\\]' is 'localhost'; expected \"host:port\""),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     "field 'cluster.ps': ps tasks are not supported"),
    ('{"cluster": {"worker": ["a:1"]}}', "field 'task' must be an object"),
    (cluster_of(type="chief"), "field 'task.type' is 'chief', which is not a role"),
    (cluster_of(index=2), "field 'task.index' is 2, but cluster.worker has 2 address"),
    (cluster_of(index="0"), "field 'task.index' is '0'"),
])
def test_bad_tf_config_names_the_field(text, message):
    with pytest.raises(ConfigError, match=message):
        distribute.read_tf_config(text)


def test_the_chief_is_task_chief_or_worker_0():
    assert distribute.is_chief_task(distribute.read_tf_config(cluster_of()))
    assert not distribute.is_chief_task(distribute.read_tf_config(cluster_of(index=1)))
    with_chief = json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:2"]},
                             "task": {"type": "worker", "index": 0}})
    assert not distribute.is_chief_task(distribute.read_tf_config(with_chief))


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfmeta_cli.main", "train", *map(str, args)],
                          env={**ENV, **(env or {})}, capture_output=True, text=True)


def assert_user_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


@pytest.mark.trains
def test_multi_worker_without_tf_config_is_a_clear_error(tmp_path):
    env = {k: v for k, v in ENV.items() if k != "TF_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "tfmeta_cli.main", "train", *SINE,
                             "--strategy", "multi-worker", "--run-dir", str(tmp_path / "r")],
                            env=env, capture_output=True, text=True)
    assert_user_error(result, "TF_CONFIG is not set")


@pytest.mark.trains
def test_malformed_tf_config_is_a_clear_error(tmp_path):
    result = cli(*SINE, "--strategy", "multi-worker", "--run-dir", tmp_path / "r",
                 env={"TF_CONFIG": cluster_of(index=5)})
    assert_user_error(result, "field 'task.index' is 5")


@pytest.mark.trains
def test_devices_that_do_not_exist_are_refused(tmp_path):
    result = cli(*SINE, "--strategy", "mirrored", "--devices", "/gpu:0,/gpu:1", "--run-dir",
                 tmp_path / "r")
    assert_user_error(result, "train.devices: '/gpu:0' does not exist; this machine has 0 GPU")
    result = cli(*SINE, "--strategy", "mirrored", "--devices", "/tpu:0", "--run-dir",
                 tmp_path / "r")
    assert_user_error(result, "'/tpu:0' is not a device")


@pytest.mark.trains
def test_a_meta_batch_that_does_not_divide_by_the_replicas_is_refused(tmp_path):
    result = cli("--config", "sine", "--meta-batch", 5, "--strategy", "mirrored", "--devices",
                 "/cpu:0,/cpu:1", "--run-dir", tmp_path / "r", "--no-progress")
    assert_user_error(result, "train.meta_batch is 5, which does not divide by the 2 replicas")


# --- data -------------------------------------------------------------------------------------------

def test_replica_shares_make_up_the_global_meta_batches():
    """Replica r of R reads episodes i n + r n/R ... of meta-batch i: the union is the stream."""
    make = lambda seed: {"seed": seed}  # noqa: E731
    base = sampler.episode_seed(0, 0)
    whole = [next(iter(sampler.episodes(make, base, 6, start=6 * i)))["seed"].numpy()
             for i in range(5, 8)]
    shares = [list(sampler.episodes(make, base, 2, start=6 * 5 + 2 * r, stride=6).take(3))
              for r in range(3)]
    for i in range(3):
        joined = np.concatenate([shares[r][i]["seed"].numpy() for r in range(3)])
        np.testing.assert_array_equal(joined, whole[i])


LOAD_OMNIGLOT = """
import hashlib, sys
from tfmeta.tasks import omniglot
data = omniglot.load_omniglot(sys.argv[1])
print(hashlib.sha256(data.images.tobytes()).hexdigest())
"""

LOAD_MINIIMAGENET = """
import hashlib, sys
from tfmeta.tasks import miniimagenet
pools = miniimagenet.pools(miniimagenet.MiniImagenetConfig(data_dir=sys.argv[1]), progress=False,
                           log=lambda _: None)
print(hashlib.sha256(b"".join(p.images.tobytes() for p in pools.values())).hexdigest())
"""


def at_once(script: str, folder: Path, workers: int = 2) -> set:
    """Runs `script FOLDER` in `workers` processes started together; returns their outputs."""
    processes = [subprocess.Popen([sys.executable, "-c", script, str(folder)], env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(workers)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err
    return {out.strip().splitlines()[-1] for out, _ in outputs}


@pytest.mark.trains
def test_two_workers_preparing_the_same_omniglot_cache_at_once(omniglot_copy):
    for cache in (omniglot_copy / ".tfmeta-cache").glob("*"):
        cache.unlink()
    digests = at_once(LOAD_OMNIGLOT, omniglot_copy)
    assert len(digests) == 1
    caches = list((omniglot_copy / ".tfmeta-cache").iterdir())
    assert len(caches) == 1 and caches[0].suffix == ".npz"  # no temp file left behind
    assert at_once(LOAD_OMNIGLOT, omniglot_copy) == digests  # read back from the cache


@pytest.mark.trains
def test_two_workers_preparing_the_same_miniimagenet_cache_at_once(tmp_path):
    from test_miniimagenet import write_csv_layout
    folder = write_csv_layout(tmp_path / "miniimagenet")
    digests = at_once(LOAD_MINIIMAGENET, folder)
    assert len(digests) == 1
    cache = folder / ".tfmeta-cache" / "miniimagenet"
    assert sorted(p.name for p in cache.iterdir()) == ["manifest.json", "test.npy", "train.npy",
                                                       "val.npy"]
    assert at_once(LOAD_MINIIMAGENET, folder) == digests


def test_the_cluster_examples_are_well_formed():
    """The TFJob manifest and the two-machine TF_CONFIG of docs/guides/scaling.md: what a user
    copies (`test_two_worker_processes_train_as_one_process` runs two workers)."""
    import re
    import yaml
    from click.testing import CliRunner
    from tfmeta_cli.main import cli as tfmeta
    readme = (TESTS.parent / "docs" / "guides" / "scaling.md").read_text()
    manifest = yaml.safe_load(readme.split("<!-- tfjob -->")[1].split("```yaml\n")[1]
                              .split("```")[0])
    assert (manifest["apiVersion"], manifest["kind"]) == ("kubeflow.org/v1", "TFJob")
    worker = manifest["spec"]["tfReplicaSpecs"]["Worker"]
    container = worker["template"]["spec"]["containers"][0]
    assert worker["replicas"] == 2 and container["name"] == "tensorflow"
    assert worker["restartPolicy"] == "ExitCode"  # 138, a lost peer, restarts; 2 does not
    command = container["command"]
    assert command[:2] == ["tfmeta", "train"]
    assert {"--strategy", "multi-worker", "--auto-resume"} <= set(command)
    # Every flag of the command is one that `tfmeta train` takes.
    flags = {f for f in command if f.startswith("--")}
    help_text = CliRunner().invoke(tfmeta, ["train", "--help"]).output
    assert all(flag in help_text for flag in flags), flags
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert all(any(a.startswith(m) for m in mounts) for a in command if a.startswith("/"))
    examples = re.findall(r"TF_CONFIG='(\{\"cluster\".*?\})'", readme)
    assert examples
    for text in examples:
        assert len(distribute.read_tf_config(text)["cluster"]["worker"]) == 2
