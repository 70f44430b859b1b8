"""The run directory: every file a run leaves there, named in this module only.

    RUN/config.yaml            the resolved config (`read_config`, `write_config`)
    RUN/history.jsonl          one line of metrics per epoch (`append_history`, `read_history`)
    RUN/landscape.csv          `tfmeta analyze`'s row per checkpoint (`write_landscape`,
                               `read_landscape`)
    RUN/density.jsonl          eigenvalue densities, when measured (density-analyze.jsonl:
                               `tfmeta analyze`'s)
    RUN/checkpoints/           TensorFlow checkpoints, one per epoch
    RUN/logs/                  TensorBoard event files (logs/analyze: `tfmeta analyze`'s)
    RUN/evaluation-SPLIT.json  `tfmeta evaluate`'s result (evaluation-SPLIT-PROTOCOL.json for a
                               protocol other than "any")
    RUN/report/                `tfmeta report`'s default output for one run

It imports no TensorFlow: the command line reads configs and records without starting it.
"""

import csv
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from tfmeta import config as config_lib
from tfmeta.config import Config
from tfmeta.errors import ConfigError, TfmetaError
from tfmeta.files import atomic_open

CONFIG = "config.yaml"
HISTORY = "history.jsonl"
LANDSCAPE = "landscape.csv"
CHECKPOINTS = "checkpoints"
LOGS = "logs"


def config_path(run_dir: Path) -> Path:
    return Path(run_dir) / CONFIG


def is_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run (its config)."""
    return config_path(run_dir).is_file()


def read_config(run_dir: Path, overrides: Iterable[str] = (),
                values: Optional[Mapping[str, Any]] = None) -> Config:
    """The run's saved config, with "key=value" `overrides` and {"key": value} `values` applied
    (`config.load`). Raises ConfigError when `run_dir` is not a run."""
    path = config_path(run_dir)
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: {path} is missing")
    return config_lib.load(str(path), overrides, values)


def write_config(run_dir: Path, config: Config) -> None:
    """Saves the resolved config, atomically."""
    config_lib.save(config, config_path(run_dir))


def checkpoints(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def has_checkpoint(run_dir: Path) -> bool:
    """Whether training has saved a checkpoint in `run_dir` (TensorFlow's index file exists)."""
    return (checkpoints(run_dir) / "checkpoint").exists()


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


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def append_history(run_dir: Path, record: dict) -> None:
    """Appends one epoch's line; a resumed epoch appends again (readers keep the last)."""
    append_jsonl(Path(run_dir) / HISTORY, record)


def has_history(run_dir: Path) -> bool:
    return (Path(run_dir) / HISTORY).is_file()


def read_history(run_dir: Path) -> list:
    """The history's lines as dicts ([] without a history). A last line cut short by a kill
    mid-write is skipped; any other bad line raises TfmetaError naming the file and line."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                continue
            raise TfmetaError(f"{path}:{number}: not a JSON line ({e.msg})") from None
        if not isinstance(row, dict):
            raise TfmetaError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


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

    - `resume_dir`: continue that run from its saved config; `overrides`, `values` and
      `data_dir` apply on top (a resume may, say, add epochs).
    - `auto_resume`: continue values["run_dir"] when it holds a run, else start it: the one
      command for a job that a cluster restarts.
    - Otherwise start from `preset` (a preset name or a file), else from the preset of
      values["data.dataset"] (`config.DATASET_PRESETS`), else from the defaults.
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
        return config_lib.load(str(config_path(resume_dir)), overrides, values, data_dir), True
    preset = preset or config_lib.dataset_preset(values.get("data.dataset"))
    return config_lib.load(preset, overrides, values, data_dir), False
