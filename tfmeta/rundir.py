"""The run directory: every file a run leaves there, named in this module only.

    RUN/.lock                  held by the one process that writes the run (`lock`)
    RUN/config.yaml            the resolved config (`read_config`, `write_config`), read strictly
    RUN/data.json              what data the run saw (`write_data`, `check_data`)
    RUN/history.jsonl          one line of metrics per epoch (`append_history`, `read_history`)
    RUN/landscape.csv          `tfmeta analyze`'s row per checkpoint (`write_landscape`,
                               `read_landscape`)
    RUN/density.jsonl          eigenvalue densities, when measured (density-analyze.jsonl:
                               `tfmeta analyze`'s)
    RUN/checkpoints/           TensorFlow checkpoints, one per epoch (`complete_checkpoints`)
    RUN/logs/                  TensorBoard event files (logs/analyze: `tfmeta analyze`'s)
    RUN/evaluation-SPLIT.json  `tfmeta evaluate`'s result (evaluation-SPLIT-PROTOCOL.json for a
                               protocol other than "any")
    RUN/report/                `tfmeta report`'s default output for one run

It imports no TensorFlow: the command line reads configs and records without starting it.
"""

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from tfmeta import config as config_lib
from tfmeta.config import Config
from tfmeta.errors import ConfigError, TfmetaError
from tfmeta.files import atomic_open, exclusive

CONFIG = "config.yaml"
DATA = "data.json"
LOCK = ".lock"
HISTORY = "history.jsonl"
PER_TASK = "per_task.jsonl"   # each evaluation's per-task values: paired across epochs
LANDSCAPE = "landscape.csv"
CHECKPOINTS = "checkpoints"
LOGS = "logs"


def config_path(run_dir: Path) -> Path:
    return Path(run_dir) / CONFIG


def is_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run: its config, or a complete checkpoint."""
    return config_path(run_dir).is_file() or bool(complete_checkpoints(run_dir))


def lock(run_dir: Path, doing: str):
    """A context that holds `run_dir`'s lock while the block writes to it (`doing`: "trained",
    "evaluated", "analyzed"); a second writer is refused with who holds it. Readers take none:
    every file is replaced whole, and the history only grows by whole lines."""
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir} is not a run directory: it does not exist")

    def refuse(holder: dict) -> str:
        who = (f"process {holder['pid']} (host {holder.get('host', '?')}, since "
               f"{holder.get('since', '?')})") if "pid" in holder else "another process"
        return (f"{run_dir} is being {holder.get('doing', 'written')} by {who}; wait for it to "
                "end, or use another run directory")
    return exclusive(Path(run_dir) / LOCK, refuse=refuse, about={"doing": doing})


def read_config(run_dir: Path, overrides: Iterable[str] = (),
                values: Optional[Mapping[str, Any]] = None) -> Config:
    """The run's saved config, with "key=value" `overrides` and {"key": value} `values` applied
    (`config.load`). It was written fully resolved, so it is read strictly: a missing section or
    field is refused, never taken from the defaults. Raises ConfigError when `run_dir` is not a
    run or its config is incomplete."""
    path = config_path(run_dir)
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: {path} is missing")
    return config_lib.load(str(path), overrides, values, strict=True)


def write_config(run_dir: Path, config: Config) -> None:
    """Saves the resolved config, atomically."""
    config_lib.save(config, config_path(run_dir))


def checkpoints(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


_CHECKPOINT = re.compile(r"ckpt-(\d+)\.index")
_SHARDS = re.compile(r"\.data-\d+-of-(\d+)$")


def complete_checkpoints(run_dir: Path) -> list:
    """The checkpoint prefixes ("RUN/checkpoints/ckpt-N") whose index and every data shard are
    on disk, oldest first: read from the files themselves, not from TensorFlow's `checkpoint`
    state file, which a lost or garbled copy would empty."""
    folder = checkpoints(run_dir)
    found = []
    for index in folder.glob("ckpt-*.index") if folder.is_dir() else ():
        match = _CHECKPOINT.fullmatch(index.name)
        if not match:
            continue
        prefix = folder / f"ckpt-{match.group(1)}"
        shards = [_SHARDS.search(p.name) for p in folder.glob(f"{prefix.name}.data-*")]
        counts = {int(m.group(1)) for m in shards if m}
        if len(counts) == 1 and len(shards) == counts.pop():
            found.append((int(match.group(1)), str(prefix)))
    return [prefix for _, prefix in sorted(found)]


def has_checkpoint(run_dir: Path) -> bool:
    """Whether training has saved a complete checkpoint in `run_dir`."""
    return bool(complete_checkpoints(run_dir))


def remove_partial_checkpoints(run_dir: Path) -> list:
    """Removes what an interrupted save left (TensorFlow writes "ckpt-N_temp/" and renames it);
    returns the paths removed."""
    folder = checkpoints(run_dir)
    stray = [p for p in folder.glob("*_temp*")] if folder.is_dir() else []
    for path in stray:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    return [str(p) for p in stray]


def logs(run_dir: Path, analyze: bool = False) -> Path:
    """TensorBoard's folder: training's, or `tfmeta analyze`'s."""
    return Path(run_dir) / LOGS / ("analyze" if analyze else "")


def density_path(run_dir: Path, analyze: bool = False) -> Path:
    return Path(run_dir) / ("density-analyze.jsonl" if analyze else "density.jsonl")


def evaluation_path(run_dir: Path, split: str, episodes: Optional[str]) -> Path:
    """Where `tfmeta evaluate` writes: one file per split and protocol, so scoring a run both
    ways keeps both."""
    protocol = "" if episodes in (None, "any") else f"-{episodes}"
    return Path(run_dir) / f"evaluation-{split}{protocol}.json"


def write_evaluation(run_dir: Path, result: dict) -> Path:
    """Writes `run.evaluate_run`'s result as JSON; returns the path."""
    path = evaluation_path(run_dir, result["split"], result["episodes"])
    with atomic_open(path) as f:
        json.dump(result, f, indent=2)
    return path


def report_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "report"


def append_jsonl(path: Path, record: dict, log: Callable[[str], None] = print) -> None:
    """Appends one whole line. A file that does not end with a newline (a write cut short by a
    kill or a full disk) is first cut back to its last complete line, said in one line to `log`,
    so that the record is never glued onto half of another."""
    path = Path(path)
    line = (json.dumps(record) + "\n").encode()
    with open(path, "ab+") as f:
        size = f.seek(0, 2)
        if size:
            f.seek(max(0, size - 1))
            if f.read(1) != b"\n":
                f.seek(0)
                data = f.read()
                keep = data.rfind(b"\n") + 1
                f.truncate(keep)
                log(f"{path}: dropped an incomplete last line ({size - keep} bytes) before "
                    "appending")
        f.write(line)
        f.flush()


def append_history(run_dir: Path, record: dict, log: Callable[[str], None] = print) -> None:
    """Appends one epoch's line; a resumed epoch appends again (readers keep the last)."""
    append_jsonl(Path(run_dir) / HISTORY, record, log)


def has_history(run_dir: Path) -> bool:
    return (Path(run_dir) / HISTORY).is_file()


def read_history(run_dir: Path, log: Optional[Callable[[str], None]] = None) -> list:
    """The history's lines as dicts ([] without a history); see `read_jsonl`."""
    return read_jsonl(Path(run_dir) / HISTORY, log)


def append_per_task(run_dir: Path, record: dict, log: Callable[[str], None] = print) -> None:
    """Appends one evaluation's per-task values ({"epoch", "iteration", metric: [tasks]}); the
    tasks are the same at every epoch, so that values pair across epochs."""
    append_jsonl(Path(run_dir) / PER_TASK, record, log)


def read_per_task(run_dir: Path, log: Optional[Callable[[str], None]] = None) -> list:
    """The per-task lines as dicts, the last for each epoch (a resumed epoch appends again)."""
    by_epoch = {row["epoch"]: row for row in read_jsonl(Path(run_dir) / PER_TASK, log)}
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_jsonl(path: Path, log: Optional[Callable[[str], None]] = None) -> list:
    """A JSON-lines file's lines as dicts ([] without the file). A damaged last line (cut short
    by a kill mid-write, or bytes that are not UTF-8) is skipped and reported to `log`; any other
    bad line raises TfmetaError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_bytes().split(b"\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            reason = "not UTF-8" if isinstance(e, UnicodeDecodeError) else e.msg
            if number == len(lines):
                if log:
                    log(f"{path}:{number}: skipped a damaged last line ({reason})")
                continue
            raise TfmetaError(f"{path}:{number}: not a JSON line ({reason})") from None
        if not isinstance(row, dict):
            raise TfmetaError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def write_data(run_dir: Path, fingerprint: dict) -> None:
    """Records what data the run saw (`tasks.fingerprint`), atomically."""
    with atomic_open(Path(run_dir) / DATA) as f:
        json.dump(fingerprint, f, indent=2)


def check_data(run_dir: Path, fingerprint: dict, other_data: bool = False,
               log: Callable[[str], None] = print) -> None:
    """Refuses data other than the run's (`write_data`): a ConfigError that names both, unless
    `other_data`, which says so in one line instead. A run without the record (saved by an
    earlier tfmeta) passes."""
    path = Path(run_dir) / DATA
    if not path.is_file():
        return
    try:
        saw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: unreadable ({error}); pass --other-data to go on without "
                          "comparing the data") from None
    if saw == fingerprint:
        return
    message = (f"{run_dir} was trained on other data: it saw {describe_data(saw)}, and the data "
               f"now is {describe_data(fingerprint)}")
    if other_data:
        log(f"warning: {message}; going on (--other-data)")
        return
    raise ConfigError(f"{message}. Point the run at its own data (--data-dir), or pass "
                      "--other-data to use this data knowingly")


def describe_data(fingerprint: dict) -> str:
    """'omniglot: 659 test / 964 train classes, examples 3f2a9c1e'."""
    classes = " / ".join(f"{n} {split}" for split, n in fingerprint.get("classes", {}).items())
    return (f"{fingerprint.get('dataset', '?')}: {classes} classes, examples "
            f"{fingerprint.get('examples', '?')[:8]}")


def write_landscape(run_dir: Path, rows: list) -> Path:
    """Writes `tfmeta analyze`'s dict rows as landscape.csv (columns: the union of keys,
    first-seen order), atomically; returns the path."""
    path = Path(run_dir) / LANDSCAPE
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_open(path, "w") as f:
        table = csv.DictWriter(f, columns)
        table.writeheader()
        table.writerows(rows)
    return path


def read_landscape(run_dir: Path) -> list:
    """landscape.csv's rows as dicts of strings ([] without the file)."""
    path = Path(run_dir) / LANDSCAPE
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k.strip(): v for k, v in row.items() if k is not None}
                for row in csv.DictReader(f)]


def training_config(preset: Optional[str] = None, overrides: Iterable[str] = (),
                    values: Optional[Mapping[str, Any]] = None, data_dir: str = "",
                    resume_dir: Optional[str] = None, auto_resume: bool = False) -> tuple:
    """The config to meta-train with, and whether it continues a run: (Config, resume).

    - `resume_dir`: continue that run from its saved config, read strictly; `overrides`,
      `values` and `data_dir` apply on top, but once it has a checkpoint they may not change
      what makes it this run (`config.identity_changes`): a resume may, say, add epochs.
    - `auto_resume`: continue values["run_dir"] when it holds a run, else start it: the one
      command for a job that a cluster restarts.
    - Otherwise start from `preset` (a preset name or a file), else from the preset of
      values["data.dataset"] (`config.dataset_preset`), else from the defaults.
    """
    values = dict(values or {})
    if auto_resume:
        if resume_dir:
            raise ConfigError("--auto-resume continues --run-dir; drop --resume")
        if not values.get("run_dir"):
            raise ConfigError("--auto-resume needs --run-dir: the directory to continue")
        if is_run(values["run_dir"]):
            resume_dir, preset = values["run_dir"], None
    if resume_dir:
        if preset:
            raise ConfigError("--resume uses the run's own config; drop --config")
        if not is_run(resume_dir):
            raise ConfigError(f"--resume {resume_dir}: {config_path(resume_dir)} is missing; not "
                              "a run directory")
        values["run_dir"] = str(resume_dir)
        saved = read_config(resume_dir)
        resumed = config_lib.load(str(config_path(resume_dir)), overrides, values, data_dir,
                                  strict=True)
        # Before its first checkpoint a run has trained nothing under its config: it may change.
        refused = config_lib.identity_changes(saved, resumed) if has_checkpoint(resume_dir) else []
        if refused:
            key, before, after = refused[0]
            why = (" (with train.cosine_lr the schedule is spread over the epochs)"
                   if key == "train.epochs" else "")
            raise ConfigError(
                f"--resume {resume_dir}: '{key}' is {before!r} in this run and cannot change to "
                f"{after!r}{why}: that would be another run under this run's name" + (
                    f" ({len(refused) - 1} more keys differ)" if len(refused) > 1 else "")
                + ". A resume may change train.epochs, the evaluation and landscape settings, "
                "data folders and how it runs; train another --run-dir for the rest")
        return resumed, True
    preset = preset or config_lib.dataset_preset(values.get("data.dataset"))
    return config_lib.load(preset, overrides, values, data_dir), False
