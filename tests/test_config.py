"""Config presets, overrides, validation and saving."""

import dataclasses
import math
import os
import stat
from pathlib import Path

import pytest
import yaml

from tfmeta import config
from tfmeta.config import Config
from tfmeta.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
CPU_PRESETS = [name for name in PRESETS if name.endswith("-cpu")]
# What a -cpu preset may change relative to its base: the outer-loop budget, the time spent
# measuring during training (how often, on how many tasks) and the class split. MAML++'s annealing
# spans are counted in epochs, so they shrink with the run.
CPU_CHANGES = {"train.meta_batch", "train.epochs", "train.iterations", "train.eval_tasks",
               "train.eval_every", "landscape.every",
               "data.omniglot.split", "data.omniglot.holdout", "data.omniglot.test_alphabets",
               "algorithms.maml.multi_step_epochs", "algorithms.maml.first_order_epochs"}
# A ResNet-12 meta-step at full width is a GPU's work (1.1 TFLOP at 32 x 32, meta-batch 4, T = 1):
# its -cpu preset also narrows the network and shortens the inner loop, and its comment says so.
CPU_EXTRA_CHANGES = {"miniimagenet_5w1s_resnet12-cpu": {"model.widths", "adapt.steps",
                                                        "adapt.test_steps"}}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_presets_are_listed():
    assert PRESETS, f"no presets in {CONFIGS}"
    assert config.preset_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads(name):
    loaded = config.load(name)
    assert isinstance(loaded, Config)
    assert config.validate(loaded, name) is loaded
    assert config.load(f"{name}.yaml") == loaded
    assert config.load(str(CONFIGS / f"{name}.yaml")) == loaded


@pytest.mark.parametrize("name", CPU_PRESETS)
def test_cpu_preset_changes_only_the_budget_and_split(name):
    base = config.flat_dict(config.load(name.removesuffix("-cpu")))
    cpu = config.flat_dict(config.load(name))
    changed = {key for key in base if base[key] != cpu[key]}
    assert changed <= CPU_CHANGES | CPU_EXTRA_CHANGES.get(name, set())
    budget = lambda c: c["train.epochs"] * c["train.iterations"]  # noqa: E731
    assert budget(cpu) < budget(base)


def test_omniglot_5w1s_cpu_inherits_from_its_base():
    c = config.load("omniglot_5w1s-cpu")
    assert (c.data.dataset, c.data.ways, c.data.shots, c.data.queries) == ("omniglot", 5, 1, 15)
    assert (c.adapt.lr, c.adapt.steps, c.adapt.test_steps) == (0.4, 1, 3)
    assert (c.model.arch, c.model.pool, c.model.filters) == ("conv4", "stride", 64)
    assert c.train.meta_batch == 8
    assert c.train.meta_lr == 1e-3
    assert (c.data.omniglot.split, c.data.omniglot.holdout) == ("alphabet", 2)
    assert c.data.omniglot.rotations is True


def test_20_way_cpu_presets_inherit_through_two_bases():
    one, five = config.load("omniglot_20w1s-cpu"), config.load("omniglot_20w5s-cpu")
    for c in (one, five):
        assert (c.data.ways, c.data.queries, c.adapt.lr, c.adapt.steps) == (20, 5, 0.1, 5)
        assert (c.model.pool, c.train.meta_batch, c.data.omniglot.holdout) == ("stride", 4, 2)
    assert (one.data.shots, five.data.shots) == (1, 5)
    assert config.load("omniglot_5w5s-cpu").data.shots == 5


def test_sine_presets():
    sine = config.load("sine")
    assert (sine.data.dataset, sine.data.shots, sine.model.arch) == ("sine", 10, "mlp")
    assert (sine.adapt.lr, sine.adapt.steps) == (0.01, 1)
    assert (sine.train.meta_batch, sine.train.meta_lr) == (25, 1e-3)
    assert sine.data.sine.amplitude == [0.1, 5.0]
    assert sine.data.sine.phase == pytest.approx([0.0, math.pi])
    assert sine.data.sine.x_range == [-5.0, 5.0]
    disjoint = config.load("sine_disjoint-cpu")
    # Meta-tests with the training step: 10 steps diverge on the sharper out-of-range tasks.
    assert disjoint.adapt == dataclasses.replace(sine.adapt, test_steps=1)
    assert disjoint.data.sine.amplitude[1] <= disjoint.data.sine.test_amplitude[0]
    assert disjoint.data.sine.phase[1] <= disjoint.data.sine.test_phase[0]


def test_paper_values():
    five = config.load("omniglot_5w1s")
    assert (five.adapt.lr, five.adapt.steps, five.adapt.test_steps) == (0.4, 1, 3)
    assert (five.train.meta_batch, five.train.meta_lr) == (32, 1e-3)
    twenty = config.load("omniglot_20w1s")
    assert (twenty.adapt.lr, twenty.adapt.steps, twenty.train.meta_batch) == (0.1, 5, 16)
    assert twenty.data.ways == 20


def test_overrides_are_yaml_typed():
    c = config.load("sine", ["train.epochs=3", "adapt.first_order=true", "model.hidden=[8, 4]",
                             "train.meta_lr=0.5", "adapt.lr=1", "name=run one",
                             "data.sine.amplitude=[1, 2]"])
    assert c.train.epochs == 3 and type(c.train.epochs) is int
    assert c.adapt.first_order is True
    assert c.model.hidden == [8, 4]
    assert c.train.meta_lr == 0.5
    assert c.adapt.lr == 1.0 and type(c.adapt.lr) is float
    assert c.name == "run one"
    assert c.data.sine.amplitude == [1, 2]
    assert c.train.iterations == 500  # untouched preset value


def test_later_override_wins_and_preset_values_survive():
    c = config.load("omniglot_5w1s-cpu", ["data.ways=10", "data.ways=20"])
    assert c.data.ways == 20
    assert (c.adapt.lr, c.train.meta_batch, c.data.omniglot.holdout) == (0.4, 8, 2)


def test_defaults_without_a_file():
    assert config.load() == Config()
    assert config.load(None, ["train.seed=7"]).train.seed == 7


@pytest.mark.parametrize("text, value", [("1e-5", 1e-5), ("1e30", 1e30), ("1.0e30", 1e30),
                                         ("2E-3", 2e-3), ("1.0e+30", 1e30)])
def test_float_override_in_exponent_notation(text, value):
    """PyYAML (YAML 1.1) reads 1e-5 as a string; a float field must still take it."""
    assert config.load(None, [f"adapt.lr={text}"]).adapt.lr == value


def test_float_in_exponent_notation_in_a_file(tmp_path):
    path = write(tmp_path / "mine.yaml", "base: sine\ntrain:\n  meta_lr: 1e-4\n")
    assert config.load(str(path)).train.meta_lr == 1e-4


@pytest.mark.parametrize("override", ["train.epochs=1e3", "name=1e3"])
def test_exponent_strings_stay_strings_outside_float_fields(override):
    """Only float fields coerce; an int field rejects '1e3', and a str field keeps it verbatim."""
    if override.startswith("name"):
        assert config.load(None, [override]).name == "1e3"
    else:
        with pytest.raises(ConfigError, match="'train.epochs' must be int"):
            config.load(None, [override])


@pytest.mark.parametrize("override, named, suggested", [
    ("train.epoch=3", "train.epoch", "train.epochs"),
    ("data.omniglot.holdot=3", "data.omniglot.holdot", "data.omniglot.holdout"),
    ("adpat.lr=0.1", "adpat", "adapt"),
])
def test_unknown_key_is_named_with_a_suggestion(override, named, suggested):
    with pytest.raises(ConfigError) as error:
        config.load("sine", [override])
    message = str(error.value)
    assert f"'{named}'" in message
    assert f"did you mean '{suggested}'" in message


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path / "mine.yaml", "base: sine\ntrain:\n  itrations: 5\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml.*'train\.itrations'.*train\.iterations"):
        config.load(str(path))


def test_a_run_saved_by_an_earlier_version_opens_without_its_retired_keys(tmp_path):
    """config.yaml of a run made before representation coherence changed (issue 22) holds
    landscape.representation_inputs: it is read and ignored, every other key kept."""
    old = config.load("sine")
    text = yaml.safe_dump({**dataclasses.asdict(old), "landscape": {
        **dataclasses.asdict(old.landscape), "representation_inputs": 5120}})
    loaded = config.load(str(write(tmp_path / "config.yaml", text)))
    assert loaded == old
    assert set(config.RETIRED) == {"landscape.representation_inputs"}


@pytest.mark.parametrize("override, key, kind", [
    ("train.epochs=abc", "train.epochs", "int"),
    ("train.epochs=2.5", "train.epochs", "int"),
    ("train.epochs=true", "train.epochs", "int"),
    ("adapt.lr=fast", "adapt.lr", "float"),
    ("adapt.first_order=1", "adapt.first_order", "bool"),
    ("adapt.recompute=maybe", "adapt.recompute", "bool"),
    ("data.dataset=3", "data.dataset", "str"),
    ("model.hidden=40", "model.hidden", "list"),
])
def test_wrong_type_names_key_and_expected_type(override, key, kind):
    with pytest.raises(ConfigError) as error:
        config.load("sine", [override])
    assert f"'{key}' must be {kind}" in str(error.value)


@pytest.mark.parametrize("override, key", [
    ("data.ways=0", "data.ways"),
    ("data.shots=-1", "data.shots"),
    ("data.dataset=foo", "data.dataset"),
    ("train.task_mapping=parallel", "train.task_mapping"),
    ("adapt.lr=0", "adapt.lr"),
    ("train.meta_lr=-0.001", "train.meta_lr"),
    ("adapt.steps=-1", "adapt.steps"),
    ("model.pool=avg", "model.pool"),
    ("model.arch=resnet", "model.arch"),
    ("algorithm=reptile", "algorithm"),
    ("data.sine.amplitude=[5.0, 1.0]", "data.sine.amplitude"),
    ("data.sine.phase=[0.0]", "data.sine.phase"),
])
def test_invalid_values_are_rejected(override, key):
    with pytest.raises(ConfigError, match=f"'{key}' must be"):
        config.load("sine", [override])


def test_zero_steps_and_zero_eval_every_are_allowed():
    c = config.load("sine", ["adapt.steps=0", "train.eval_every=0", "train.keep_checkpoints=0"])
    assert (c.adapt.steps, c.train.eval_every, c.train.keep_checkpoints) == (0, 0, 0)


@pytest.mark.parametrize("override", ["train.epochs", "=5", "train=5"])
def test_malformed_overrides(override):
    with pytest.raises(ConfigError):
        config.load("sine", [override])


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="omniglot_5w1s-cpu") as error:
        config.load("sine_typo")
    assert "sine_typo" in str(error.value)


def test_file_based_on_a_preset(tmp_path):
    path = write(tmp_path / "mine.yaml", "base: omniglot_5w1s-cpu\ndata:\n  shots: 5\n")
    c = config.load(str(path))
    assert (c.data.shots, c.data.ways, c.train.meta_batch) == (5, 5, 8)


def test_base_cycle_is_detected(tmp_path):
    write(tmp_path / "a.yaml", "base: b\ntrain:\n  epochs: 1\n")
    write(tmp_path / "b.yaml", "base: a\ntrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="cycle"):
        config.load(str(tmp_path / "a.yaml"))


def test_self_base_is_a_cycle(tmp_path):
    path = write(tmp_path / "self.yaml", "base: self\n")
    with pytest.raises(ConfigError, match="cycle"):
        config.load(str(path))


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just words\n", "str"),
                                        ("42\n", "int")])
def test_config_file_must_be_a_mapping(tmp_path, text, kind):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=f"bad.yaml.*mapping.*{kind}"):
        config.load(str(path))


def test_unparseable_yaml_file(tmp_path):
    path = write(tmp_path / "broken.yaml", "train: {epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        config.load(str(path))


def test_empty_file_is_the_defaults(tmp_path):
    assert config.load(str(write(tmp_path / "empty.yaml", ""))) == Config()


@pytest.mark.parametrize("name, overrides", [
    ("sine_disjoint", ["name=x", "train.seed=3", "adapt.first_order=true"]),
    ("omniglot_20w5s-cpu", ["data.omniglot.test_alphabets=[Greek, Latin]",
                            "data.omniglot.data_dir=/some/where", "model.dtype=float64"]),
])
def test_save_then_load_round_trips(tmp_path, name, overrides):
    original = config.load(name, overrides)
    path = tmp_path / "run" / "config.yaml"
    config.save(original, path)
    assert config.load(str(path)) == original
    assert yaml.safe_load(path.read_text()) == dataclasses.asdict(original)


def test_save_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "config.yaml"
    config.save(config.load("sine"), path)
    config.save(config.load("omniglot_5w1s"), path)
    assert os.listdir(tmp_path) == ["config.yaml"]
    assert config.load(str(path)) == config.load("omniglot_5w1s")


def failing_dump(data, stream, **kwargs):
    stream.write("algorithm: maml\nmodel:\n")
    raise OSError("disk full")


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    config.save(config.load("sine"), path)
    before = path.read_text()
    monkeypatch.setattr(config.yaml, "safe_dump", failing_dump)
    with pytest.raises(OSError):
        config.save(config.load("omniglot_5w1s"), path)
    assert path.read_text() == before


def test_failed_save_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    config.save(config.load("sine"), path)
    monkeypatch.setattr(config.yaml, "safe_dump", failing_dump)
    with pytest.raises(OSError):
        config.save(config.load("omniglot_5w1s"), path)
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_saved_config_is_readable_like_other_run_files(tmp_path):
    old = os.umask(0o022)
    try:
        config.save(config.load("sine"), tmp_path / "config.yaml")
        (tmp_path / "other").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "config.yaml").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "other").stat().st_mode) == 0o644


def test_a_renamed_key_opens_in_saved_files_and_is_named_in_overrides(tmp_path):
    """`train.task_strategy`, the earlier name of `train.task_mapping`: a saved run's config
    that holds it loads (strictly, as `rundir.read_config` does); an override says its name."""
    saved = config.to_dict(config.load("sine", ["train.task_mapping=map"]))
    saved["train"]["task_strategy"] = saved["train"].pop("task_mapping")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved))
    assert config.load(str(path), strict=True).train.task_mapping == "map"
    with pytest.raises(ConfigError, match="'train.task_strategy' is now 'train.task_mapping'"):
        config.load("sine", ["train.task_strategy=map"])
