"""Omniglot's one-shot protocol and meta-train augmentation: within-alphabet episodes, affine maps
that are deterministic and off at meta-test, and meta-training on every alphabet (holdout 0)."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfmeta import config as config_lib, evaluation, landscape, models, summaries, tasks
from tfmeta.config.adapt import AdaptConfig
from tfmeta.config.data import AffineConfig, DataConfig, OmniglotConfig
from tfmeta.config.landscape import LandscapeConfig
from tfmeta.config.model import ModelConfig
from tfmeta.errors import ConfigError, DataError
from tfmeta.tasks import augment, classification, omniglot_split, sampler
from tfmeta.tasks.omniglot import OmniglotData

SIZE = 9
# Alphabet -> characters; "Dd" is too small for 3-way episodes within it.
ALPHABETS = {"Aa": 4, "Bb": 5, "Cc": 6, "Dd": 2, "Ee": 3}


def coded_data() -> OmniglotData:
    """Characters whose every pixel holds the character's number + 1, except a 255 corner that
    shows how the image was rotated."""
    names = [a for a, n in ALPHABETS.items() for _ in range(n)]
    images = np.zeros((len(names), 20, SIZE, SIZE), np.uint8)
    images[:] = (np.arange(len(names)) + 1)[:, None, None, None]
    images[:, :, 0, 0] = 255
    characters = [f"character{i:02d}" for i in range(len(names))]
    return OmniglotData(images, tuple(names), tuple(characters))


def decode(images: np.ndarray) -> tuple:
    """(character [B], quarter turns [B]) of float images [B, S, S, 1] of `coded_data`."""
    codes = np.rint(images[..., 0] * 255).astype(int)
    character = codes[:, SIZE // 2, SIZE // 2] - 1
    corners = np.stack([codes[:, 0, 0], codes[:, -1, 0], codes[:, -1, -1], codes[:, 0, -1]], 1)
    return character, np.argmax(corners == 255, axis=1)


@pytest.fixture
def coded(monkeypatch):
    data = coded_data()
    monkeypatch.setattr(omniglot_split, "load", lambda config: data)
    return data


def source(ways=3, test_ways=0, **omniglot) -> tasks.TaskSource:
    config = DataConfig(dataset="omniglot", ways=ways, test_ways=test_ways, shots=1,
                              queries=2, omniglot=OmniglotConfig(data_dir="x", image_size=SIZE, **{
                                  "test_alphabets": ["Bb", "Cc", "Dd"], **omniglot}))
    return tasks.build(config)


def draw(task_source, split: str, count: int, start: int = 0, seed: int = 0) -> tuple:
    """(support_x, query_x) [count, ...] numpy arrays of episodes start .. start + count - 1."""
    batch = next(iter(task_source.episodes(split, seed, count, start=start, count=count)))
    return batch.support_x.numpy(), batch.query_x.numpy()


def test_within_alphabet_episodes_hold_one_alphabet_in_one_orientation(coded):
    with pytest.warns(UserWarning, match=r"Dd \(2\), Dd@90 \(2\), Dd@180 \(2\), Dd@270 \(2\)"):
        task_source = source(episodes="within_alphabet")
    support, query = draw(task_source, "test", 400)
    seen = set()
    for s, q in zip(support, query):
        character, turns = decode(np.concatenate([s, q]))
        alphabets = {coded.alphabets[c] for c in character}
        assert len(alphabets) == 1 and len(set(turns)) == 1, (alphabets, turns)
        assert len(set(character[:3])) == 3            # 3 distinct characters, one shot each
        seen.add((alphabets.pop(), int(turns[0])))
    # Every held-out alphabet with at least 3 characters, in every orientation; never Dd.
    assert seen == {(a, k) for a in ("Bb", "Cc") for k in range(4)}


def test_any_episodes_mix_alphabets(coded):
    support, _ = draw(source(), "test", 200)
    mixed = [len({coded.alphabets[c] for c in decode(s)[0]}) > 1 for s in support]
    assert np.mean(mixed) > 0.5


def test_within_group_sampling_is_uniform_over_groups():
    images = np.zeros((9, 2, 2, 2, 1), np.uint8)
    images[..., 0, 0, 0] = np.arange(9)[:, None]
    pool = classification.as_pool(images)._replace(groups=tuple("aabbbbccc"))
    fn = classification.episode_fn(pool, 2, 1, 1, within_groups=True)
    batch = next(iter(sampler.episodes(fn, sampler.episode_seed(0, 0), 3000, count=3000)))
    first = np.rint(batch.support_x.numpy()[:, 0, 0, 0, 0] * 255).astype(int)
    groups = np.array(list("aabbbbccc"))[first]
    # Group a is drawn a third of the time, whatever its share of the classes (2 of 9).
    assert abs(np.mean(groups == "a") - 1 / 3) < 0.03


def test_no_alphabet_large_enough_is_an_error_naming_each(coded):
    with pytest.raises(DataError, match=r"omniglot train split: 7-way episodes within one "
                                        r"alphabet .* every one has fewer: Aa \(4\), Ee \(3\)"):
        source(ways=7, episodes="within_alphabet", rotations=False)


def test_augmentation_is_off_at_meta_test_and_on_at_meta_train(coded):
    plain, augmented = source(), source(augment=AffineConfig(per="image"))
    for a, b in zip(draw(plain, "test", 20), draw(augmented, "test", 20)):
        np.testing.assert_array_equal(a, b)
    moved = [np.abs(a - b).max() for a, b in zip(draw(plain, "train", 20),
                                                 draw(augmented, "train", 20))]
    assert min(moved) > 0.05


@pytest.mark.parametrize("per", ["image", "class"])
def test_augmentation_is_a_function_of_seed_and_episode_index(coded, per):
    task_source = source(augment=AffineConfig(per=per))
    whole = draw(task_source, "train", 12)
    resumed = draw(task_source, "train", 4, start=8)          # a run resumed at episode 8
    for a, b in zip(whole, resumed):
        np.testing.assert_array_equal(a[8:], b)
    other = draw(task_source, "train", 12, seed=1)
    assert not np.array_equal(whole[1], other[1])


def test_per_class_maps_one_class_alike_and_per_image_each_image_apart():
    images = tf.random.stateless_uniform([3, 4, 16, 16, 1], [0, 0])
    images = tf.repeat(images[:, :1], 4, axis=1)              # a class's 4 images are one image
    seed = tf.constant([3, 4], tf.int64)
    by_class = augment.affine(AffineConfig(per="class"))(images, seed).numpy()
    by_image = augment.affine(AffineConfig(per="image"))(images, seed).numpy()
    assert np.allclose(by_class, by_class[:, :1])
    assert not np.allclose(by_image, by_image[:, :1])
    assert augment.affine(AffineConfig(per="none")) is None


def centroid(image: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(image.shape)
    return np.array([(rows * image).sum(), (cols * image).sum()]) / image.sum()


def test_affine_maps_shift_scale_and_shear_by_at_most_their_bounds():
    blob = np.zeros((1, 1, 32, 32, 1), np.float32)
    blob[..., 13:19, 13:19, :] = 1.0                          # a square about the centre
    images = tf.constant(np.repeat(blob, 64, axis=1))
    seed = tf.constant([1, 2], tf.int64)
    shifted = augment.affine(AffineConfig(per="image", shift=0.1, scale=0, shear=0))(
        images, seed).numpy()[0, ..., 0]
    moves = np.array([centroid(im) - 15.5 for im in shifted])
    assert np.abs(moves).max() <= 3.2 + 1e-3 and np.abs(moves).max() > 1.5
    np.testing.assert_allclose(shifted.sum(axis=(1, 2)), 36.0, rtol=1e-4)   # mass is kept
    scaled = augment.affine(AffineConfig(per="image", shift=0, scale=0.2, shear=0))(
        images, seed).numpy()[0, ..., 0]
    np.testing.assert_allclose([centroid(im) for im in scaled], 15.5, atol=1e-3)
    # Output pixel x reads input pixel s (x - c) + c: a map with s in [0.8, 1.2] scales the
    # square's area by 1 / (sx sy), within [1 / 1.44, 1 / 0.64].
    areas = scaled.sum(axis=(1, 2)) / 36.0
    assert areas.min() >= 1 / 1.44 - 0.02 and areas.max() <= 1 / 0.64 + 0.02
    assert areas.max() - areas.min() > 0.2


def test_rotations_turn_a_bar_about_the_centre_by_at_most_their_bound():
    bar = np.zeros((1, 1, 33, 33, 1), np.float32)
    bar[..., 15:18, 6:27, :] = 1.0                            # horizontal, about the centre
    images = tf.constant(np.repeat(bar, 64, axis=1))
    seed = tf.constant([5, 6], tf.int64)
    turned = augment.affine(AffineConfig(per="image", shift=0, scale=0, shear=0, rotation=30))(
        images, seed).numpy()[0, ..., 0]
    angles = []
    for image in turned:
        rows, cols = np.indices(image.shape)
        weights = image / image.sum()
        dy, dx = rows - (weights * rows).sum(), cols - (weights * cols).sum()
        cov = [[(weights * dx * dx).sum(), (weights * dx * dy).sum()],
               [(weights * dx * dy).sum(), (weights * dy * dy).sum()]]
        values, vectors = np.linalg.eigh(cov)
        major = vectors[:, -1] * np.sign(vectors[0, -1] or 1)
        angles.append(np.degrees(np.arctan2(major[1], major[0])))
        np.testing.assert_allclose([(weights * rows).sum(), (weights * cols).sum()], 16.0,
                                   atol=0.05)
    angles = np.abs(angles)
    assert angles.max() <= 30.5 and angles.max() > 20
    np.testing.assert_allclose(turned.sum(axis=(1, 2)), bar.sum(), rtol=0.02)


def test_holdout_0_meta_trains_on_every_alphabet_and_has_no_meta_test_split(coded):
    task_source = source(holdout=0, test_alphabets=[])
    assert set(task_source.episode_fns) == {"train"}
    assert task_source.classes["train"] == 4 * sum(ALPHABETS.values())
    with pytest.raises(ConfigError, match="no 'test' split here"):
        task_source.episodes("test", 0, 1)


@pytest.mark.parametrize("override, message", [
    ("data.omniglot.episodes=alphabet", "'data.omniglot.episodes' must be one of any, "
                                        "within_alphabet, got 'alphabet'"),
    ("data.omniglot.augment.per=pixel", "'data.omniglot.augment.per' must be one of none, "
                                        "image, class, got 'pixel'"),
    ("data.omniglot.augment.shift=0.7", "'data.omniglot.augment.shift' must be between 0 and 0.5"),
    ("data.omniglot.augment.shear=-1", "'data.omniglot.augment.shear' must be between 0 and 1.0"),
    ("data.omniglot.augment.rotation=90",
     "'data.omniglot.augment.rotation' must be between 0 and 45.0"),
    ("data.omniglot.holdout=0", "'train.eval_every' must be 0 .* when data.omniglot.holdout is 0"),
    ("data.omniglot.holdout=-2", "'data.omniglot.holdout' must be a non-negative integer"),
])
def test_bad_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.load("omniglot_20w1s-cpu", [override])


def test_tensorboard_hparams_name_the_protocol():
    values = summaries.hparams_of(config_lib.load("omniglot_20w1s_alphabets-cpu"))
    assert (values["omniglot.episodes"], values["omniglot.augment"]) == ("within_alphabet", "image")
    assert "omniglot.episodes" not in summaries.hparams_of(config_lib.load("sine"))


def wide_and_narrow(dtype: str = "float64"):
    """A 4-way conv4 and the same network with its head cut to the first 3 rows."""
    config = ModelConfig(arch="conv4", filters=4, pool="stride", dtype=dtype)
    wide = models.build(config, (SIZE, SIZE, 1), 4)
    narrow = models.build(config, (SIZE, SIZE, 1), 3)
    weights = wide.get_weights()
    narrow.set_weights(weights[:-2] + [weights[-2][:, :3], weights[-1][:3]])
    return wide, narrow


def test_fewer_ways_at_meta_test_score_as_a_head_cut_to_them(coded):
    """Independent truth: the head cut to its first M = 3 rows, adapted at alpha M / N."""
    wide, narrow = wide_and_narrow()
    adapt_config = AdaptConfig(steps=2, lr=0.5)
    scaled = dataclasses.replace(adapt_config, lr=0.5 * 3 / 4)
    fewer = source(ways=4, test_ways=3)
    assert (fewer.outputs, fewer.classes_in("test"), fewer.classes_in("train")) == (4, 3, None)
    same = source(ways=3)                                      # the same 3-way meta-test tasks
    for a, b in zip(draw(fewer, "test", 6), draw(same, "test", 6)):
        np.testing.assert_array_equal(a, b)
    assert draw(fewer, "train", 1)[0].shape[1] == 4            # meta-training stays 4-way
    got = evaluation.make_evaluator(wide, fewer, adapt_config, 2, 6, 0, 6)()
    truth = evaluation.make_evaluator(narrow, same, scaled, 2, 6, 0, 6)()
    np.testing.assert_allclose(got["accuracy"], truth["accuracy"])
    np.testing.assert_allclose(got["loss"], truth["loss"], rtol=1e-9)
    assert not np.allclose(got["loss"][:, 2], got["loss"][:, 0])


def test_fewer_ways_at_meta_test_measure_the_landscape_of_the_cut_head(coded):
    """The wide model's task loss is M / N times the cut head's, so its flatness is M / N times
    the cut head's, its gradient coherence (M / N)^2 times, and the trajectories point the same
    way (the masked rows do not move)."""
    wide, narrow = wide_and_narrow()
    config = LandscapeConfig(flatness_tasks=2, coherence_tasks=6, batch=6, tol=1e-9,
                             max_iters=60)
    adapt_config = AdaptConfig(steps=2, lr=0.5)
    scaled = dataclasses.replace(adapt_config, lr=0.5 * 3 / 4)
    got = landscape.Landscape(wide, source(ways=4, test_ways=3), adapt_config, config).measure(
        progress=False)
    truth = landscape.Landscape(narrow, source(ways=3), scaled, config).measure(progress=False)
    assert got["flatness"] == pytest.approx(truth["flatness"] * 3 / 4, rel=1e-6)
    assert got["gradient_coherence"] == pytest.approx(truth["gradient_coherence"] * 9 / 16,
                                                      rel=1e-9)
    assert got["trajectory_coherence"] == pytest.approx(truth["trajectory_coherence"], rel=1e-9)
    assert got["support_loss"] == pytest.approx(truth["support_loss"] * 3 / 4, rel=1e-9)


def test_test_ways_out_of_range_names_the_key():
    with pytest.raises(ConfigError, match=r"'data.test_ways' must be .* between 2 and data.ways "
                                          r"\(20\), got 25"):
        config_lib.load("omniglot_20w1s-cpu", ["data.test_ways=25"])
    with pytest.raises(ConfigError, match="'data.test_ways' must be 0 for sine"):
        config_lib.load("sine", ["data.test_ways=3"])


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfmeta_cli.main", *args], capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def test_bad_settings_exit_2_with_the_key(tmp_path):
    done = cli("train", "--config", "omniglot_20w1s-cpu", "--data-dir", str(tmp_path),
               "--set", "data.omniglot.episodes=within-alphabet")
    assert done.returncode == 2, done.stderr
    assert "'data.omniglot.episodes' must be one of any, within_alphabet" in done.stderr
    done = cli("evaluate", str(tmp_path), "--episodes", "alphabet")
    assert done.returncode == 2 and "'alphabet' is not one of 'any', 'within_alphabet'" in (
        done.stderr)


@pytest.mark.slow
def test_a_run_scored_under_both_protocols_and_a_run_on_every_alphabet(omniglot_dir, tmp_path):
    run = tmp_path / "run"
    tiny = ["--set", "model.filters=8", "--epochs", "1", "--iterations", "3",
            "--set", "train.eval_tasks=10", "--landscape-every", "0", "--no-progress",
            "--set", "algorithms.maml.multi_step_epochs=1",
            "--set", "algorithms.maml.first_order_epochs=1"]
    done = cli("train", "--config", "omniglot_20w1s_alphabets-cpu", "--data-dir",
               str(omniglot_dir), "--run-dir", str(run), *tiny)
    assert done.returncode == 0, done.stderr
    # Tagalog has 17 characters: too few for 20-way tasks within it, and said so in one line.
    assert "warning: omniglot train split: 4 of 24 alphabets have fewer than 20" in done.stderr
    assert json.loads((run / "history.jsonl").read_text().splitlines()[-1])["meta_test/accuracy"]
    results = {}
    for protocol in ("within_alphabet", "any"):
        done = cli("evaluate", str(run), "--tasks", "10", "--steps", "1", "--episodes", protocol)
        assert done.returncode == 0, done.stderr
        assert f"test split, {protocol} episodes, 10 tasks" in done.stdout
        name = "evaluation-test.json" if protocol == "any" else f"evaluation-test-{protocol}.json"
        results[protocol] = json.loads((run / name).read_text())
        assert results[protocol]["episodes"] == protocol
    assert results["any"]["steps"] != results["within_alphabet"]["steps"]

    everything = tmp_path / "all"
    done = cli("train", "--config", "omniglot_20w1s_alphabets_all-cpu", "--data-dir",
               str(omniglot_dir), "--run-dir", str(everything), *tiny)
    assert done.returncode == 0, done.stderr
    assert (everything / "checkpoints" / "checkpoint").is_file()
    done = cli("evaluate", str(everything), "--tasks", "10")
    assert done.returncode == 2 and "has no meta-test split" in done.stderr, done.stderr
    done = cli("evaluate", str(everything), "--tasks", "10", "--split", "train")
    assert done.returncode == 0 and "train split, within_alphabet episodes" in done.stdout
