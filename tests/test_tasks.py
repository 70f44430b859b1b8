"""Task sources: sine and classification episodes, seeded streams, and the Omniglot class split."""

import json
import numpy as np
import pytest
import tensorflow as tf

from tfmeta import config as config_lib, tasks
from tfmeta.config.data import DataConfig, OmniglotConfig
from tfmeta.errors import ConfigError, DataError
from tfmeta.tasks import augment, classification, sampler
from tfmeta.tasks.omniglot import load_omniglot
from tfmeta.tasks.omniglot_split import split_classes, with_rotations


def take(dataset, n: int) -> list:
    """The first n elements of a dataset of Episodes, as numpy tuples."""
    return [tuple(np.asarray(t) for t in episode) for episode in dataset.take(n)]


def assert_batches_equal(a: list, b: list):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


def fit_sine(x: np.ndarray, y: np.ndarray) -> tuple:
    """(A, phi) of y = A sin(x + phi) = A cos(phi) sin(x) + A sin(phi) cos(x), by least squares."""
    design = np.stack([np.sin(x), np.cos(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    return np.hypot(a, b), np.arctan2(b, a)


# Sine


def test_sine_shapes_and_dtype():
    source = tasks.build(DataConfig(dataset="sine", shots=7, queries=3))
    assert (source.example_shape, source.outputs, source.loss) == ((1,), 1, "mse")
    batch = next(iter(source.episodes("train", seed=0, meta_batch=4)))
    assert batch.support_x.shape == batch.support_y.shape == (4, 7, 1)
    assert batch.query_x.shape == batch.query_y.shape == (4, 3, 1)
    assert batch.support_x.dtype == tf.float32
    single = source.episode_fns["test"](tf.constant([1, 2], tf.int64))
    assert single.support_x.shape == (7, 1) and single.query_x.shape == (3, 1)


def test_sine_episodes_are_deterministic_in_the_seed():
    config = DataConfig(dataset="sine")
    first = take(tasks.build(config).episodes("train", seed=3, meta_batch=5), 3)
    again = take(tasks.build(config).episodes("train", seed=3, meta_batch=5), 3)
    assert_batches_equal(first, again)
    other = take(tasks.build(config).episodes("train", seed=4, meta_batch=5), 1)[0]
    assert not np.allclose(first[0][0], other[0])
    test_split = take(tasks.build(config).episodes("test", seed=3, meta_batch=5), 1)[0]
    assert not np.allclose(first[0][0], test_split[0])


def test_episodes_within_a_batch_differ():
    batch = take(tasks.build(DataConfig()).episodes("train", seed=0, meta_batch=8), 1)[0]
    support_y = batch[1].reshape(8, -1)
    for i in range(8):
        for j in range(i):
            assert not np.allclose(support_y[i], support_y[j])


@pytest.mark.parametrize("split", ["train", "test"])
def test_sine_tasks_follow_the_disjoint_ranges(split):
    data = config_lib.load("sine_disjoint").data
    ranges = data.sine
    x_support, y_support, x_query, y_query = take(
        tasks.build(data, dtype="float64").episodes(split, seed=1, meta_batch=200, count=200), 1)[0]
    x = np.concatenate([x_support, x_query], axis=1)[..., 0]
    y = np.concatenate([y_support, y_query], axis=1)[..., 0]
    assert x.shape == (200, 20)
    assert np.all((x >= ranges.x_range[0]) & (x <= ranges.x_range[1]))
    fits = np.array([fit_sine(xi, yi) for xi, yi in zip(x, y)])
    amplitudes, phases = fits[:, 0], fits[:, 1]
    np.testing.assert_allclose(y, amplitudes[:, None] * np.sin(x + phases[:, None]), atol=1e-8)
    expected = ((amplitudes, ranges.amplitude if split == "train" else ranges.test_amplitude),
                (phases, ranges.phase if split == "train" else ranges.test_phase))
    for values, (low, high) in expected:
        assert np.all((values >= low - 1e-6) & (values <= high + 1e-6))
        # The draws spread over the range rather than sitting at one value.
        assert values.min() < low + 0.1 * (high - low) and values.max() > high - 0.1 * (high - low)


def test_sine_x_range_is_honoured():
    config = DataConfig(dataset="sine")
    config.sine.x_range = [2.0, 3.0]
    x = take(tasks.build(config).episodes("train", seed=0, meta_batch=50, count=50), 1)[0][0]
    assert np.all((x >= 2.0) & (x <= 3.0)) and x.max() - x.min() > 0.9


@pytest.mark.parametrize("k", [1, 3])
def test_resumed_stream_continues_where_it_stopped(k):
    source = tasks.build(DataConfig(dataset="sine", shots=3, queries=2))
    meta_batch = 4
    whole = take(source.episodes("train", seed=5, meta_batch=meta_batch), k + 3)
    resumed = take(source.episodes("train", seed=5, meta_batch=meta_batch,
                                   start=k * meta_batch), 3)
    assert_batches_equal(whole[k:], resumed)


def test_counted_stream_keeps_the_partial_batch():
    source = tasks.build(DataConfig(dataset="sine"))
    batches = take(source.episodes("test", seed=0, meta_batch=4, count=10), 10)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    endless = take(source.episodes("test", seed=0, meta_batch=10), 1)[0]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), endless[0])


# Classification on a synthetic pool


def coded_pool(classes: int, per_class: int, channels: int = 0) -> np.ndarray:
    """uint8 [C, M, 3, 3(, ch)] where pixel (0, 0) holds the class and pixel (0, 1) the example."""
    pool = np.zeros((classes, per_class, 3, 3), np.uint8)
    pool[:, :, 0, 0] = np.arange(classes)[:, None]
    pool[:, :, 0, 1] = np.arange(per_class)[None, :]
    pool[:, :, 2, 2] = 255
    return np.repeat(pool[..., None], channels, axis=-1) if channels else pool


def decode(images: np.ndarray) -> tuple:
    """(class, example) codes of float images in [0, 1] from `coded_pool`."""
    codes = np.rint(images * 255).astype(int)
    return codes[:, 0, 0, 0], codes[:, 0, 1, 0]


def classification_episodes(pool, ways, shots, queries, n):
    fn = classification.episode_fn(pool, ways, shots, queries)
    return take(sampler.episodes(fn, sampler.episode_seed(0, 0), meta_batch=n, count=n), 1)[0]


def test_classification_episode_structure():
    ways, shots, queries, n = 5, 2, 3, 40
    pool = coded_pool(classes=12, per_class=8)
    support_x, support_y, query_x, query_y = classification_episodes(pool, ways, shots, queries, n)
    assert support_x.shape == (n, ways * shots, 3, 3, 1) and support_x.dtype == np.float32
    assert query_x.shape == (n, ways * queries, 3, 3, 1)
    assert support_y.dtype == np.int32
    assert support_x.min() >= 0.0 and support_x.max() == 1.0
    for i in range(n):
        np.testing.assert_array_equal(support_y[i], np.repeat(np.arange(ways), shots))
        np.testing.assert_array_equal(query_y[i], np.repeat(np.arange(ways), queries))
        s_class, s_example = decode(support_x[i])
        q_class, q_example = decode(query_x[i])
        label_class = {}
        for label, c in zip([*support_y[i], *query_y[i]], [*s_class, *q_class]):
            assert label_class.setdefault(label, c) == c, "a label mixes two classes"
        assert len(set(label_class.values())) == ways
        for c in label_class.values():
            support = set(s_example[s_class == c])
            query = set(q_example[q_class == c])
            assert len(support) == shots and len(query) == queries
            assert not support & query


def test_classification_draws_cover_the_pool():
    pool = coded_pool(classes=10, per_class=6)
    support_x, _, query_x, _ = classification_episodes(pool, 3, 1, 2, 60)
    classes, examples = decode(np.concatenate([support_x, query_x], axis=1).reshape(-1, 3, 3, 1))
    assert set(classes) == set(range(10))
    assert set(examples) == set(range(6))


def test_classification_keeps_channels_and_uses_every_example():
    pool = coded_pool(classes=5, per_class=4, channels=2)
    support_x, _, query_x, _ = classification_episodes(pool, 5, 1, 3, 4)
    assert support_x.shape == (4, 5, 3, 3, 2) and query_x.shape == (4, 15, 3, 3, 2)
    for i in range(4):
        classes, examples = decode(np.concatenate([support_x[i], query_x[i]]))
        assert sorted(zip(classes, examples)) == [(c, m) for c in range(5) for m in range(4)]


def test_check_pool_accepts_exact_fits():
    classification.check_pool(coded_pool(5, 20), ways=5, shots=5, queries=15, what="pool")


def test_check_pool_too_few_classes():
    with pytest.raises(DataError, match=r"my split.*7-way.*7 classes.*has 3") as error:
        classification.check_pool(coded_pool(3, 20), ways=7, shots=1, queries=1, what="my split")
    assert "my split" in str(error.value)


def test_check_pool_too_few_examples():
    with pytest.raises(DataError, match=r"30 of 30 classes.*10 \+ 15 = 25: 0 \(20\)"):
        classification.check_pool(coded_pool(30, 20), ways=5, shots=10, queries=15, what="pool")


def test_check_pool_names_the_small_classes():
    pool = classification.Pool(np.zeros((17, 2, 2, 1), np.uint8), np.array([5, 3, 6, 3]),
                               ["n01", "n02", "n03", "n04"])
    with pytest.raises(DataError, match=r"2 of 4 classes.*= 4: n02 \(3\), n04 \(3\)\."):
        classification.check_pool(pool, ways=2, shots=1, queries=3, what="val split")


def ragged_pool(counts) -> classification.Pool:
    """A flat pool whose pixel (0, 0) holds the class and pixel (0, 1) the example."""
    images = np.zeros((sum(counts), 3, 3, 1), np.uint8)
    images[:, 0, 0, 0] = np.repeat(np.arange(len(counts)), counts)
    images[:, 0, 1, 0] = np.concatenate([np.arange(c) for c in counts])
    return classification.Pool(images, np.asarray(counts))


def test_classes_of_different_sizes_draw_only_their_own_examples():
    counts = [4, 9, 5, 12, 6, 4]
    support_x, _, query_x, _ = classification_episodes(ragged_pool(counts), 3, 1, 3, 200)
    classes, examples = decode(np.concatenate([support_x, query_x], axis=1).reshape(-1, 3, 3, 1))
    for c, count in enumerate(counts):
        assert set(examples[classes == c]) == set(range(count))


def test_a_memory_mapped_pool_gives_the_same_episodes(tmp_path):
    pool = ragged_pool([4, 9, 5, 12, 6, 4])
    mapped = np.lib.format.open_memmap(tmp_path / "pool.npy", "w+", np.uint8, pool.images.shape)
    mapped[:] = pool.images
    mapped.flush()
    reread = np.load(tmp_path / "pool.npy", mmap_mode="r")
    assert isinstance(reread, np.memmap)
    a = classification_episodes(pool, 3, 1, 3, 20)
    b = classification_episodes(pool._replace(images=reread), 3, 1, 3, 20)
    assert_batches_equal([a], [b])
    draw = lambda p: take(sampler.episodes(classification.labelled_fn(p),  # noqa: E731
                                           sampler.episode_seed(0, 2), 16, count=16), 1)
    assert_batches_equal(draw(pool), draw(pool._replace(images=reread)))


def test_augmentation_flips_and_shifts_deterministically():
    pool = np.zeros((6, 4, 16, 16, 1), np.uint8)
    pool[..., 6:10, 2:5, 0] = 255  # a bar left of centre
    fn = classification.episode_fn(pool, 3, 1, 1, augment=augment.flip_and_shift)
    episodes = take(sampler.episodes(fn, sampler.episode_seed(0, 0), 50, count=50), 1)[0]
    again = take(sampler.episodes(fn, sampler.episode_seed(0, 0), 50, count=50), 1)[0]
    assert_batches_equal([episodes], [again])
    images = np.concatenate([episodes[0], episodes[2]], axis=1).reshape(-1, 16, 16)
    columns = [np.flatnonzero(im.max(axis=0)) for im in images]
    assert all(len(c) == 3 for c in columns)  # shifted by at most 2 pixels: the bar stays whole
    centres = np.array([c.mean() for c in columns])
    assert (centres > 8).any() and (centres < 8).any()  # some flipped, some not
    assert len(set(np.round(centres, 1))) > 4  # shifted


# Omniglot class split (synthetic alphabets)

ALPHABETS = np.repeat(["Aa", "Bb", "Cc", "Dd", "Ee", "Ff", "Gg", "Hh"], [3, 5, 2, 4, 6, 3, 2, 5])


def held_out_alphabets(test: np.ndarray) -> set:
    return set(ALPHABETS[test])


def assert_partition(train, test, total):
    assert len(set(train) & set(test)) == 0
    assert sorted([*train, *test]) == list(range(total))


def test_alphabet_split_holds_out_whole_alphabets():
    train, test = split_classes(ALPHABETS, OmniglotConfig(split="alphabet", holdout=2))
    assert_partition(train, test, len(ALPHABETS))
    held = held_out_alphabets(test)
    assert len(held) == 2
    assert not held & set(ALPHABETS[train])
    assert sorted(test) == [i for i, a in enumerate(ALPHABETS) if a in held]


def test_alphabet_split_depends_only_on_split_seed():
    draws = {seed: held_out_alphabets(split_classes(ALPHABETS, OmniglotConfig(split_seed=seed))[1])
             for seed in range(6)}
    again = held_out_alphabets(split_classes(ALPHABETS, OmniglotConfig(split_seed=3))[1])
    assert draws[3] == again
    assert len({frozenset(d) for d in draws.values()}) > 1


def test_explicit_test_alphabets():
    config = OmniglotConfig(test_alphabets=["Hh", "Cc"], holdout=5)
    train, test = split_classes(ALPHABETS, config)
    assert_partition(train, test, len(ALPHABETS))
    assert held_out_alphabets(test) == {"Hh", "Cc"} and len(test) == 7


def test_unknown_test_alphabets_are_named_with_those_present():
    config = OmniglotConfig(test_alphabets=["Cc", "Klingon", "Elvish"])
    with pytest.raises(ConfigError) as error:
        split_classes(ALPHABETS, config)
    message = str(error.value)
    assert "Klingon" in message and "Elvish" in message
    assert all(name in message for name in set(ALPHABETS))


def test_character_split():
    train, test = split_classes(ALPHABETS, OmniglotConfig(split="character", holdout=10))
    assert_partition(train, test, len(ALPHABETS))
    assert len(test) == 10
    again = split_classes(ALPHABETS, OmniglotConfig(split="character", holdout=10))[1]
    np.testing.assert_array_equal(test, again)


@pytest.mark.parametrize("split, holdout", [("alphabet", 8), ("alphabet", -1),
                                            ("character", 30)])
def test_holdout_out_of_range(split, holdout):
    with pytest.raises(ConfigError, match=f"holdout={holdout}"):
        split_classes(ALPHABETS, OmniglotConfig(split=split, holdout=holdout))


@pytest.mark.parametrize("split", ["alphabet", "character"])
def test_holdout_0_holds_out_nothing(split):
    train, test = split_classes(ALPHABETS, OmniglotConfig(split=split, holdout=0))
    assert list(train) == list(range(len(ALPHABETS))) and len(test) == 0


def test_unknown_split_kind():
    with pytest.raises(ConfigError, match="drawer"):
        split_classes(ALPHABETS, OmniglotConfig(split="drawer"))


def test_rotations_are_new_classes():
    images = np.random.default_rng(0).integers(0, 256, (3, 2, 5, 5), dtype=np.uint8)
    rotated = with_rotations(images)
    assert rotated.shape == (12, 2, 5, 5) and rotated.dtype == np.uint8
    for k in range(4):
        for c in range(3):
            for m in range(2):
                np.testing.assert_array_equal(rotated[k * 3 + c, m], np.rot90(images[c, m], k))


def test_bad_omniglot_source_and_missing_dir():
    with pytest.raises(ConfigError, match="source"):
        tasks.build(DataConfig(dataset="omniglot", omniglot=OmniglotConfig(source="ftp",
                                                                           data_dir="x")))
    with pytest.raises(ConfigError, match="data_dir"):
        tasks.build(DataConfig(dataset="omniglot"))


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="mnist"):
        tasks.build(DataConfig(dataset="mnist"))


# Omniglot on the real small zips


def image_alphabets(data) -> dict:
    """Bytes of every image and each of its rotations -> the alphabets drawing it."""
    index = {}
    for images, alphabet in zip(data.images, data.alphabets):
        for image in images:
            for k in range(4):
                index.setdefault(np.rot90(image, k).tobytes(), set()).add(alphabet)
    return index


def episode_alphabets(batch, index) -> set:
    images = np.concatenate([batch.support_x, batch.query_x], axis=1)
    codes = np.rint(np.asarray(images) * 255).astype(np.uint8)[..., 0]
    found = set()
    for image in codes.reshape(-1, *codes.shape[-2:]):
        assert image.tobytes() in index, "an episode image is not an Omniglot drawing"
        found |= index[image.tobytes()]
    return found


def test_omniglot_episodes_from_held_out_alphabets(omniglot_copy):
    data = load_omniglot(omniglot_copy)
    index = image_alphabets(data)
    source = tasks.build(DataConfig(dataset="omniglot", ways=5, shots=1, queries=15,
                                    omniglot=OmniglotConfig(data_dir=str(omniglot_copy))))
    assert (source.example_shape, source.outputs, source.loss) == ((28, 28, 1), 5, "cross_entropy")
    seen = {}
    for split in ("train", "test"):
        seen[split] = set()
        for batch in source.episodes(split, seed=0, meta_batch=10).take(3):
            assert batch.support_x.shape == (10, 5, 28, 28, 1)
            assert batch.query_x.shape == (10, 75, 28, 28, 1)
            assert batch.support_x.dtype == tf.float32
            query = batch.query_x.numpy()
            assert 0.0 <= query.min() < query.max() <= 1.0
            seen[split] |= episode_alphabets(batch, index)
    assert len(seen["test"]) == 2
    assert not seen["test"] & seen["train"]
    assert seen["test"] | seen["train"] == set(data.alphabets)


def test_omniglot_too_few_examples_per_class(omniglot_copy):
    config = DataConfig(dataset="omniglot", ways=5, shots=10, queries=15,
                        omniglot=OmniglotConfig(data_dir=str(omniglot_copy)))
    with pytest.raises(DataError, match=r"fewer examples than shots \+ queries = 10 \+ 15 = 25"):
        tasks.build(config)


def test_train_drawings_keeps_the_first_drawings_of_meta_train_characters_only(monkeypatch):
    from tfmeta.tasks import omniglot_split
    images = (np.arange(6 * 20 * 2 * 2) % 251).astype(np.uint8).reshape(6, 20, 2, 2)
    data = omniglot_split.omniglot.OmniglotData(images, np.array(list("aabbcc")),
                                                np.array(list("123456")))
    monkeypatch.setattr(omniglot_split, "load", lambda config: data)
    config = OmniglotConfig(data_dir="x", split="character", holdout=4,
                            rotations=False, train_drawings=6)
    pools = omniglot_split.omniglot_pools(config)
    train, test = split_classes(data.alphabets, config)
    np.testing.assert_array_equal(pools["train"].images, images[train][:, :6].reshape(-1, 2, 2, 1))
    np.testing.assert_array_equal(pools["test"].images, images[test].reshape(-1, 2, 2, 1))
    assert list(pools["test"].counts) == [20] * 4                  # meta-test keeps all 20
    for bad in (0, 21):
        with pytest.raises(ConfigError, match="train_drawings' must be between 1 and 20"):
            omniglot_split.omniglot_pools(OmniglotConfig(data_dir="x", split="character",
                                                         holdout=4, train_drawings=bad))


def test_every_dataset_is_registered_and_linear_is_one():
    """Each registry entry's builder imports, and its options are a section of DataConfig whose
    path fields exist; a dataset outside the registry is refused with the registry's names."""
    import dataclasses
    import importlib

    from tfmeta.config.data import DATASETS, DataConfig
    sections = {f.name: f.type for f in dataclasses.fields(DataConfig)}
    for name, record in DATASETS.items():
        module, function = record.source.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
        if record.options:
            assert sections[name] is record.options, name
            assert all(hasattr(record.options(), field) for field in record.paths), name
    with pytest.raises(ConfigError, match="'data.dataset' must be one of sine, omniglot, "
                                          "miniimagenet, linear, folder, tfds:NAME"):
        config_lib.load(None, values={"data.dataset": "cifar"})
    config = config_lib.load(None, values={"data.dataset": "linear", "data.linear.dim": 3,
                                           "data.shots": 5, "data.queries": 7})
    source = tasks.build(config.data)
    assert (source.example_shape, source.outputs, source.loss) == ((3,), 1, "mse")
    support_x, _, _, query_y = take(source.episodes("train", 0, 2), 1)[0]
    assert support_x.shape == (2, 5, 3) and query_y.shape == (2, 7, 1)


def toy_source(config, dtype):
    """A dataset registered by the test below: sine tasks under another name."""
    from tfmeta.tasks import sine
    return sine.source(config, dtype)


@pytest.mark.trains
def test_a_dataset_is_its_module_and_its_registry_entry(monkeypatch, tmp_path):
    """ARCHITECTURE.md's "where to add a dataset": an entry in `DATASETS` whose builder lives in
    a module of its own (here, this one) is trained on by `tfmeta train --dataset toy`, with
    nothing else touched."""
    from click.testing import CliRunner

    from tfmeta.config.data import DATASETS, Dataset
    from tfmeta_cli.main import cli
    monkeypatch.setitem(DATASETS, "toy", Dataset(f"{__name__}:toy_source", classes=False))
    result = CliRunner().invoke(cli, ["train", "--dataset", "toy", "--run-dir",
                                      str(tmp_path / "run"), "--epochs", "1", "--iterations", "2",
                                      "--no-progress", "--set", "train.eval_tasks=4"])
    assert result.exit_code == 0, result.output
    assert "meta_test/mse" in result.output
    assert json.loads((tmp_path / "run" / "data.json").read_text())["dataset"] == "toy"
