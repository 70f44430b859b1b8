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
from typing import Any, Iterable, Mapping, Optional

import yaml

from tfmeta.config.adapt import AdaptConfig
from tfmeta.config.algorithms import AlgorithmConfig
from tfmeta.config.data import DataConfig, data_dir_key, find
from tfmeta.config.landscape import LandscapeConfig
from tfmeta.config.model import ModelConfig
from tfmeta.config.train import TrainConfig
from tfmeta.errors import ConfigError, expect
from tfmeta.files import atomic_open

# The presets ship inside the package (a wheel has them); the repository's top-level configs/ is a
# link to this folder.
CONFIG_DIR = Path(__file__).resolve().parent / "presets"
def dataset_preset(dataset: Optional[str]) -> Optional[str]:
    """The preset a bare `--dataset NAME` starts from (`Dataset.preset`), so that each dataset
    gets its paper settings; a TFDS dataset ("tfds:NAME") starts from `folder`'s."""
    record = find(dataset) if dataset else None
    return record.preset if record else None


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

    def check(self) -> None:
        """Each section's own checks, then those across sections; raises ConfigError naming the
        first key out of range."""
        self.model.check()
        self.adapt.check()
        self.data.check()
        self.train.check()
        self.landscape.check()
        self.algorithms.check(self.algorithm, self.adapt, self.train.epochs)
        if self.data.dataset == "omniglot" and not self.data.omniglot.has_test_split:
            for key, value in (("train.eval_every", self.train.eval_every),
                               ("train.eval_at_start", self.train.eval_at_start),
                               ("landscape.every", self.landscape.every)):
                expect(not value, key, "0 (or false) when data.omniglot.holdout is 0, which "
                       "leaves no meta-test split to evaluate on", value)


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
    return nest(key.strip(), value)


def nest(key: str, value: Any) -> dict:
    """"a.b.c", value -> {"a": {"b": {"c": value}}}."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


# Keys that earlier versions wrote into runs' config.yaml and that no longer mean anything, with
# why: read and ignored, so that those runs still open (evaluate, export, resume, analyze).
RETIRED = {
    "landscape.representation_inputs": "representation coherence is now taken over each "
                                       "coherence task's query embeddings",
}
# Keys added after runs were first saved, with why their defaults are what those runs did: a saved
# config may lack these and still be read strictly.
ADDED = {
    "model.widths": "ResNet-12's widths; runs before it were conv4, MLP or custom",
    "model.weights": "no pretrained weights, as every earlier run",
    "model.adapt_layers": "all: the inner loop adapted every parameter (ANIL's head by algorithm)",
    "model.frozen_layers": "none: every parameter meta-trained",
}


def from_dict(cls, data: dict, where: str, prefix: str = "", strict: bool = False):
    """Builds dataclass `cls` from a mapping, checking every key and value type; `strict`: every
    field must be present (a saved run's config, written fully resolved), but for `ADDED`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'config'}' must be a mapping, "
                          f"got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    if strict:
        missing = [name for name in fields if name not in data and f"{prefix}{name}" not in ADDED]
        if missing:
            raise ConfigError(f"{where}: missing '{prefix}{missing[0]}'" + (
                f" and {len(missing) - 1} more keys" if len(missing) > 1 else "")
                + "; a saved run's config holds every key (was it cut short, or edited?)")
    kwargs = {}
    for key, value in data.items():
        if f"{prefix}{key}" in RETIRED:
            continue
        if key not in fields:
            if f"{prefix}{key}" in RENAMED:
                raise ConfigError(f"{where}: '{prefix}{key}' is now '{RENAMED[prefix + key]}'")
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown config key '{prefix}{key}'{hint}; keys here: "
                              f"{', '.join(prefix + f for f in fields)}")
        kwargs[key] = _coerce(hints[key], value, where, prefix + key, strict)
    return cls(**kwargs)


def _coerce(kind, value, where: str, key: str, strict: bool = False):
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, where, key + ".", strict)
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


# Keys renamed since runs were first saved: a saved config with the old name opens as before.
RENAMED = {"train.task_strategy": "train.task_mapping"}


def _renamed(data: dict) -> dict:
    """`data` with the old names of RENAMED under their new ones."""
    for old, new in RENAMED.items():
        *path, leaf = old.split(".")
        section = data
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict) and leaf in section:
            section[new.split(".")[-1]] = section.pop(leaf)
    return data


def load(path: Optional[str] = None, overrides: Iterable[str] = (),
         values: Optional[Mapping[str, Any]] = None, data_dir: str = "",
         strict: bool = False) -> Config:
    """The config of a preset or file (or the defaults), checked, with in this order: `values`
    ({"dotted.key": value}, typed values such as a command line's flags), `overrides`
    ("dotted.key=value" strings, the value YAML: `--set`) and `data_dir`, the data folder of the
    config's dataset (`data.<dataset>.data_dir`). `strict`: the file must hold every key (a
    saved run's config), before anything is applied."""
    data, where = {}, "defaults"
    if path:
        file = resolve_path(path)
        data, where = _renamed(load_yaml(file)), str(file)
        if strict:
            from_dict(Config, data, where, strict=True)
    overrides, values = list(overrides), dict(values or {})
    for key, value in values.items():
        data = merge(data, nest(key, value))
    for text in overrides:
        data = merge(data, parse_override(text))
    if data_dir:
        dataset = data.get("data", {}).get("dataset", DataConfig.dataset)
        data = merge(data, nest(data_dir_key(dataset), data_dir))
    if overrides or values or data_dir:
        where = f"{where} with overrides"
    return validate(from_dict(Config, data, where), where)


def validate(config: Config, where: str) -> Config:
    """`config.check()`, its error prefixed with `where` (the file); returns the config."""
    try:
        config.check()
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return config


# What a resume may change: how long the run goes on, how and how often it is measured, where its
# data live, and how it runs. Any other key makes it another run.
RESUMABLE = ("run_dir", "name", "train.epochs", "train.eval_tasks", "train.eval_every",
             "train.eval_at_start", "train.eval_batch", "train.keep_checkpoints",
             "train.intra_op_threads", "train.inter_op_threads", "train.steps_per_execution",
             "train.jit_compile", "train.task_mapping", "train.strategy", "train.devices",
             "landscape.")


def identity_changes(saved: Config, resumed: Config) -> list:
    """[(key, saved value, resumed value)] of the keys that differ and that a resume may not
    change (`RESUMABLE`, and data folders, whose content `rundir.check_data` compares)."""
    before, after = flat_dict(saved), flat_dict(resumed)
    changed = [(key, before[key], after[key]) for key in before if before[key] != after[key]]

    def resumable(key: str) -> bool:
        if key == "train.epochs" and saved.train.cosine_lr:
            return False   # the cosine schedule is spread over the epochs
        return (key.startswith("data.") and key.endswith(("data_dir", "cache_dir"))
                or any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE))
    return [change for change in changed if not resumable(change[0])]


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
