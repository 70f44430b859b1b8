"""Typed run configuration: dataclasses loaded from YAML presets and command-line overrides.

A config file is a YAML mapping mirroring `Config`; it may name another preset under `base:` and
override some of its fields. Overrides from the command line are `dotted.key=value` strings whose
values are parsed as YAML. Every key and value is checked against the dataclasses, and a mistake is
reported as a ConfigError naming the file, the key and what was expected.
"""

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from tfmeta.adaptation import AdaptConfig
from tfmeta.algorithms import (MAML_FAMILY, NAMES as ALGORITHMS, WITHOUT_INNER_LOOP,
                               AlgorithmConfig, finetune)
from tfmeta.distribute import STRATEGIES
from tfmeta.errors import ConfigError
from tfmeta.files import atomic_open
from tfmeta.landscape import LandscapeConfig
from tfmeta.models import NORMS, ModelConfig
from tfmeta import tasks
from tfmeta.tasks import DataConfig, omniglot_split

# The presets ship inside the package (a wheel has them); the repository's top-level configs/ is a
# link to this folder.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclasses.dataclass
class TrainConfig:
    """The outer loop.

    Attributes:
        meta_batch: tasks per meta-iteration (n).
        meta_lr: Adam learning rate (beta).
        epochs: number of epochs.
        iterations: meta-iterations per epoch (500 in the landscape paper).
        eval_tasks: meta-test tasks evaluated after each epoch (a fixed set per run).
        eval_every: evaluate every k epochs; 0 turns per-epoch evaluation off.
        eval_at_start: also evaluate, and measure the landscape when it is on, before the first
            meta-step: a history line and TensorBoard scalars for epoch 0 (iteration 0).
        eval_batch: tasks adapted per evaluation call.
        seed: seeds the initial parameters and every episode stream.
        task_strategy: how tasks of a meta-batch are mapped: "loop", "map", "vectorized", or
            "auto" (vectorized for MLPs, loop for convolutional models).
        keep_checkpoints: checkpoints kept (one per epoch); 0 keeps every epoch's.
        intra_op_threads: threads inside one op; 0 lets TensorFlow choose. The default 1 suits
            MAML's many small per-task ops: on 2 CPU cores it runs conv4 meta-steps about 15%
            faster than TensorFlow's default, by running tasks side by side instead.
        inter_op_threads: ops run side by side; 0 lets TensorFlow choose (one per core).
        jit_compile: compile the meta-step with XLA. Off by default: XLA runs convolutions about
            10x slower than graph mode on CPU.
        cosine_lr: anneal the meta learning rate from meta_lr to min_meta_lr over the epochs
            along a cosine, one value per epoch (MAML++).
        min_meta_lr: the annealed rate's floor.
        strategy: "default" (one device), "mirrored" (every local GPU, or `devices`) or
            "multi-worker" (the cluster in TF_CONFIG); see `tfmeta.distribute`.
        devices: the devices of "mirrored", e.g. ["/gpu:0", "/gpu:1"]; CPU devices beyond the
            first become logical devices. Empty: every local GPU.
    """
    meta_batch: int = 25
    meta_lr: float = 1e-3
    epochs: int = 10
    iterations: int = 500
    eval_tasks: int = 600
    eval_every: int = 1
    eval_at_start: bool = False
    eval_batch: int = 25
    seed: int = 0
    task_strategy: str = "auto"
    keep_checkpoints: int = 3
    intra_op_threads: int = 1
    inter_op_threads: int = 0
    jit_compile: bool = False
    cosine_lr: bool = False
    min_meta_lr: float = 1e-5
    strategy: str = "default"
    devices: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Config:
    """A whole run.

    Attributes:
        algorithm: the meta-learning algorithm, one of `algorithms.NAMES`: "maml", "anil",
            "meta-sgd", "maml-reg", "gradient-agreement", "wormhole", "nal" or "finetune".
        algorithms: options of the algorithms that have any.
        name: run name; the run directory defaults to runs/<name>.
        run_dir: where logs, checkpoints and the resolved config go; "" derives it from `name`.
    """
    algorithm: str = "maml"
    algorithms: AlgorithmConfig = dataclasses.field(default_factory=AlgorithmConfig)
    name: str = ""
    run_dir: str = ""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    adapt: AdaptConfig = dataclasses.field(default_factory=AdaptConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    landscape: LandscapeConfig = dataclasses.field(default_factory=LandscapeConfig)


def preset_names() -> list:
    """Names of the presets in configs/."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_path(name_or_path: str) -> Path:
    """A config file path, or a preset name such as "sine" or "omniglot_5w1s-cpu"."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = CONFIG_DIR / f"{path.stem if path.suffix == '.yaml' else name_or_path}.yaml"
    if preset.is_file() and path.parent in (Path("."), Path("configs")):
        return preset
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a preset; presets: "
                      f"{', '.join(preset_names())}")


def load_yaml(path: Path, seen: tuple = ()) -> dict:
    """Reads a config file, merging it over the preset named by its `base:` key."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' presets form a cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    parent = path.parent / f"{base}.yaml" if not str(base).endswith(".yaml") else Path(base)
    if not parent.is_file():
        parent = resolve_path(str(base))
    return merge(load_yaml(parent, seen + (path.resolve(),)), data)


def merge(base: dict, override: dict) -> dict:
    """Recursively merges `override` into a copy of `base`."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """"a.b.c=value" -> {"a": {"b": {"c": value}}}, the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key.path=value, e.g. train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse the value: {e}") from None
    out: Any = value
    for part in reversed(key.strip().split(".")):
        out = {part: out}
    return out


# Keys that earlier versions wrote into runs' config.yaml and that no longer mean anything, with
# why: read and ignored, so that those runs still open (evaluate, export, resume, analyze).
RETIRED = {
    "landscape.representation_inputs": "representation coherence is now taken over each "
                                       "coherence task's query embeddings",
}


def from_dict(cls, data: dict, where: str, prefix: str = ""):
    """Builds dataclass `cls` from a mapping, checking every key and value type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'config'}' must be a mapping, "
                          f"got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if f"{prefix}{key}" in RETIRED:
            continue
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown config key '{prefix}{key}'{hint}; keys here: "
                              f"{', '.join(prefix + f for f in fields)}")
        kwargs[key] = _coerce(hints[key], value, where, prefix + key)
    return cls(**kwargs)


def _coerce(kind, value, where: str, key: str):
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, where, key + ".")
    if kind is float and isinstance(value, str):
        # YAML 1.1 reads exponents without a dot ("1e-3") as strings.
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str),
          list: isinstance(value, list)}.get(kind, True)
    if not ok:
        raise ConfigError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def load(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Config:
    """The config of a preset or file (or the defaults), with overrides applied and checked."""
    data, where = {}, "defaults"
    if path:
        file = resolve_path(path)
        data, where = load_yaml(file), str(file)
    overrides = list(overrides)
    for text in overrides:
        data = merge(data, parse_override(text))
    if overrides:
        where = f"{where} with overrides"
    return validate(from_dict(Config, data, where), where)


def data_dir_key(dataset: str) -> str:
    """The config key of `dataset`'s data folder (what `--data-dir` sets)."""
    if dataset not in ("omniglot", "miniimagenet"):
        raise ConfigError(f"--data-dir: the {dataset} dataset reads no files; it is for "
                          "omniglot and miniimagenet")
    return f"data.{dataset}.data_dir"


def validate(config: Config, where: str) -> Config:
    """Checks values that types alone cannot; returns the config."""
    def need(condition: bool, key: str, expected: str, value):
        if not condition:
            raise ConfigError(f"{where}: '{key}' must be {expected}, got {value!r}")

    need(config.algorithm in ALGORITHMS, "algorithm", f"one of: {', '.join(ALGORITHMS)}",
         config.algorithm)
    need(config.algorithms.finetune.batch_size >= 1, "algorithms.finetune.batch_size",
         "a positive integer", config.algorithms.finetune.batch_size)
    need(config.algorithms.finetune.head in finetune.HEADS, "algorithms.finetune.head",
         " or ".join(finetune.HEADS), config.algorithms.finetune.head)
    need(config.algorithms.maml_reg.gamma >= 0, "algorithms.maml_reg.gamma", "non-negative",
         config.algorithms.maml_reg.gamma)
    need(config.model.arch in ("auto", "conv4", "mlp"), "model.arch", "auto, conv4 or mlp",
         config.model.arch)
    need(config.model.pool in ("max", "stride"), "model.pool", "max or stride", config.model.pool)
    need(config.model.dtype in ("float32", "float64"), "model.dtype", "float32 or float64",
         config.model.dtype)
    need(config.model.norm in NORMS, "model.norm", " or ".join(NORMS), config.model.norm)
    need(config.data.dataset in tasks.DATASETS, "data.dataset", " or ".join(tasks.DATASETS),
         config.data.dataset)
    for key in ("data.ways", "data.shots", "data.queries", "train.meta_batch", "train.epochs",
                "train.iterations", "train.eval_tasks", "train.eval_batch"):
        section, field = key.split(".")
        value = getattr(getattr(config, section), field)
        need(value >= 1, key, "a positive integer", value)
    for key in ("adapt.steps", "adapt.test_steps", "train.eval_every", "train.keep_checkpoints",
                "train.intra_op_threads", "train.inter_op_threads"):
        section, field = key.split(".")
        value = getattr(getattr(config, section), field)
        need(value >= 0, key, "a non-negative integer", value)
    test_ways = config.data.test_ways
    if config.data.dataset == "sine":
        need(test_ways == 0, "data.test_ways", "0 for sine, whose tasks have no classes",
             test_ways)
    need(test_ways == 0 or 2 <= test_ways <= config.data.ways, "data.test_ways",
         f"0 (as data.ways) or between 2 and data.ways ({config.data.ways})", test_ways)
    need(config.adapt.lr > 0, "adapt.lr", "positive", config.adapt.lr)
    need(config.adapt.gain_lr_scale >= 0, "adapt.gain_lr_scale", "non-negative",
         config.adapt.gain_lr_scale)
    need(config.train.meta_lr > 0, "train.meta_lr", "positive", config.train.meta_lr)
    need(0 <= config.train.min_meta_lr <= config.train.meta_lr, "train.min_meta_lr",
         "between 0 and train.meta_lr", config.train.min_meta_lr)
    _check_inner_loop_options(config, need)
    if config.data.dataset == "omniglot":
        _check_omniglot(config, need, where)
    land = config.landscape
    for key in ("every", "flatness_tasks", "coherence_tasks", "trace_probes", "top_k",
                "density_probes"):
        need(getattr(land, key) >= 0, f"landscape.{key}", "a non-negative integer",
             getattr(land, key))
    for key in ("max_iters", "density_iters", "batch"):
        need(getattr(land, key) >= 1, f"landscape.{key}", "a positive integer", getattr(land, key))
    need(land.method in ("lanczos", "power"), "landscape.method", "lanczos or power", land.method)
    need(land.hvp in ("forward", "reverse"), "landscape.hvp", "forward or reverse", land.hvp)
    need(land.tol >= 0, "landscape.tol", "non-negative", land.tol)
    need(config.train.strategy in STRATEGIES, "train.strategy", ", ".join(STRATEGIES),
         config.train.strategy)
    need(all(isinstance(d, str) for d in config.train.devices), "train.devices",
         "a list of device names such as \"/gpu:0\"", config.train.devices)
    need(config.train.task_strategy in ("auto", "loop", "map", "vectorized"),
         "train.task_strategy", "auto, loop, map or vectorized", config.train.task_strategy)
    for key in ("amplitude", "phase", "test_amplitude", "test_phase", "x_range"):
        value = getattr(config.data.sine, key)
        need(len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
             and value[0] <= value[1], f"data.sine.{key}", "[low, high] with low <= high", value)
    return config


def _check_omniglot(config: Config, need, where: str) -> None:
    """data.omniglot against itself, and a run with no meta-test split against evaluation."""
    omniglot = config.data.omniglot
    try:
        omniglot_split.check(omniglot)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    if omniglot.holdout == 0 and not omniglot.test_alphabets:
        for key, value in (("train.eval_every", config.train.eval_every),
                           ("train.eval_at_start", config.train.eval_at_start),
                           ("landscape.every", config.landscape.every)):
            need(not value, key, "0 (or false) when data.omniglot.holdout is 0, which leaves no "
                 "meta-test split to evaluate on", value)


def _check_inner_loop_options(config: Config, need) -> None:
    """The inner-loop and MAML++ options against the algorithm and the run's length."""
    adapt, maml, algorithm = config.adapt, config.algorithms.maml, config.algorithm
    for key in ("per_step_lr", "per_step_norm"):
        need(not getattr(adapt, key) or algorithm not in WITHOUT_INNER_LOOP, f"adapt.{key}",
             f"false for {algorithm}, which has no inner loop to learn it for", True)
    need(not adapt.per_step_lr or algorithm != "meta-sgd", "adapt.per_step_lr",
         "false for meta-sgd, which learns a rate per parameter element already", True)
    need(not adapt.per_step_lr or algorithm != "wormhole", "adapt.per_step_lr",
         "false for wormhole, whose gains have their own rate", True)
    for key in ("multi_step_epochs", "first_order_epochs"):
        value = getattr(maml, key)
        need(value >= 0, f"algorithms.maml.{key}", "a non-negative integer", value)
        need(not value or algorithm in MAML_FAMILY, f"algorithms.maml.{key}",
             f"0 for {algorithm}; it applies to {', '.join(MAML_FAMILY)}", value)
        need(value <= config.train.epochs, f"algorithms.maml.{key}",
             f"at most train.epochs ({config.train.epochs}), the run's length", value)
    need(not maml.first_order_epochs or not adapt.first_order, "algorithms.maml.first_order_epochs",
         "0 when adapt.first_order is true (the whole run is first order)",
         maml.first_order_epochs)
    need(not maml.multi_step_epochs or adapt.steps >= 1, "algorithms.maml.multi_step_epochs",
         "0 when adapt.steps is 0", maml.multi_step_epochs)


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def flat_dict(config: Config) -> dict:
    """{"dotted.key": value} for every field of the config, as overrides name them."""
    def flatten(tree: dict, prefix: str) -> dict:
        flat = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat
    return flatten(to_dict(config), "")


def save(config: Config, path: Path) -> None:
    """Writes the resolved config as YAML, atomically (a killed run never leaves half a file)."""
    with atomic_open(path) as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
