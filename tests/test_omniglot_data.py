"""Tests for the Omniglot reader, against the real small zips in ../shared/data/omniglot.

The expected counts come from that directory's README (and the zips' own listings), not from the
loader. Every test copies the zips into tmp_path, so no cache is ever written beside shared data,
and skips when they are missing. The TFDS path runs on tfds.testing.mock_data, offline.
"""

import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfmeta.errors import DataError
from tfmeta.tasks import omniglot
from tfmeta.tasks.omniglot import OmniglotData, load_omniglot, load_omniglot_tfds

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
SMALL1 = "images_background_small1.zip"
SMALL2 = "images_background_small2.zip"
SMALL1_ALPHABETS = {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}
SMALL2_ALPHABETS = {"Greek", "Japanese_(katakana)", "Latin", "Sanskrit", "Tagalog"}

@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points the fallback cache (~/.cache/tfmeta) into tmp_path so tests never touch $HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache" / "tfmeta"


def copy_zips(directory: Path, *names: str) -> Path:
    """Copies the named shared zips into `directory` (created) and returns it; skips without them."""
    for name in names:
        if not (SHARED / name).is_file():
            pytest.skip(f"Omniglot zip {SHARED / name} not found")
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(SHARED / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_zips(tmp_path_factory.mktemp("small"), SMALL1, SMALL2)


@pytest.fixture(scope="module")
def merged(small_dir: Path) -> OmniglotData:
    return load_omniglot(small_dir)


def zip_characters(name: str) -> set[tuple[str, str]]:
    """(alphabet, character) pairs listed in a shared zip: the independent truth for merging."""
    with zipfile.ZipFile(SHARED / name) as archive:
        return {
            tuple(member.split("/")[1:3])
            for member in archive.namelist()
            if member.endswith(".png")
        }


def count_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wraps the PNG decoder so a test can see whether a load decoded anything."""
    calls: list[str] = []
    decode = omniglot._decode_member

    def counting(archive, path, name, image_size):
        calls.append(name)
        return decode(archive, path, name, image_size)

    monkeypatch.setattr(omniglot, "_decode_member", counting)
    return calls


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_both_small_zips_merge_to_242_characters(merged: OmniglotData) -> None:
    assert merged.images.shape == (242, 20, 28, 28)
    assert merged.images.dtype == np.uint8
    assert set(merged.alphabets) == SMALL1_ALPHABETS | SMALL2_ALPHABETS
    keys = list(zip(merged.alphabets, merged.characters))
    assert keys == sorted(keys)
    assert set(keys) == zip_characters(SMALL1) | zip_characters(SMALL2)
    assert len(set(keys)) == 242


def test_small1_alone_and_shared_alphabets_counted_once(
    tmp_path: Path, merged: OmniglotData
) -> None:
    small1 = load_omniglot(copy_zips(tmp_path, SMALL1))
    assert small1.images.shape == (136, 20, 28, 28)
    assert set(small1.alphabets) == SMALL1_ALPHABETS
    for alphabet in ("Greek", "Latin"):
        in_small1 = [i for i, name in enumerate(small1.alphabets) if name == alphabet]
        in_merged = [i for i, name in enumerate(merged.alphabets) if name == alphabet]
        assert len(in_merged) == len(in_small1) > 0
        np.testing.assert_array_equal(merged.images[in_merged], small1.images[in_small1])


def test_strokes_are_high_and_match_the_png(merged: OmniglotData) -> None:
    images = merged.images.astype(np.float64)
    assert images.mean() < 40  # mostly background
    assert merged.images.max() == 255
    # One drawing checked against its PNG: the ink fraction is the mean intensity after resizing.
    index = list(zip(merged.alphabets, merged.characters)).index(("Korean", "character05"))
    with zipfile.ZipFile(SHARED / SMALL1) as archive:
        names = sorted(
            name for name in archive.namelist()
            if name.startswith("images_background_small1/Korean/character05/")
            and name.endswith(".png")
        )
        with Image.open(io.BytesIO(archive.read(names[3]))) as image:
            drawn = np.asarray(image.convert("L"))
    ink = (drawn < 128).mean()
    assert 0.02 < ink < 0.5
    assert images[index, 3].mean() / 255 == pytest.approx(ink, abs=0.02)


def test_image_size(tmp_path: Path) -> None:
    data = load_omniglot(copy_zips(tmp_path, SMALL1), image_size=14)
    assert data.images.shape == (136, 20, 14, 14)
    assert len(list((tmp_path / ".tfmeta-cache").glob("*.npz"))) == 1


def test_loads_are_deterministic_and_cached(
    tmp_path: Path, merged: OmniglotData, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = load_omniglot(copy_zips(tmp_path / "other", SMALL1, SMALL2))
    np.testing.assert_array_equal(fresh.images, merged.images)
    assert (fresh.alphabets, fresh.characters) == (merged.alphabets, merged.characters)

    calls = count_calls(monkeypatch)
    cached = load_omniglot(tmp_path / "other")
    assert calls == []
    np.testing.assert_array_equal(cached.images, merged.images)
    assert (cached.alphabets, cached.characters) == (merged.alphabets, merged.characters)
    cache_dir = tmp_path / "other" / ".tfmeta-cache"
    assert [path.suffix for path in cache_dir.iterdir()] == [".npz"]  # no temp file left


DAMAGES = {
    "truncated": lambda contents: contents[: len(contents) // 2],
    "garbage": lambda contents: b"not an npz" * 100,
    "empty": lambda contents: b"",
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_cache_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    data_dir = copy_zips(tmp_path, SMALL1)
    first = load_omniglot(data_dir)
    (cache_file,) = (data_dir / ".tfmeta-cache").glob("*.npz")
    cache_file.write_bytes(DAMAGES[damage](cache_file.read_bytes()))
    calls = count_calls(monkeypatch)
    rebuilt = load_omniglot(data_dir)
    assert calls
    np.testing.assert_array_equal(rebuilt.images, first.images)
    with np.load(cache_file) as archive:
        np.testing.assert_array_equal(archive["images"], first.images)


def test_interrupted_cache_write_leaves_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = copy_zips(tmp_path, SMALL1)

    def interrupted(file, **arrays):
        file.write(b"PK\x03\x04 half an npz")
        raise KeyboardInterrupt

    monkeypatch.setattr(omniglot.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_omniglot(data_dir)
    assert list((data_dir / ".tfmeta-cache").iterdir()) == []


def test_changed_zip_invalidates_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = copy_zips(tmp_path, SMALL1)
    load_omniglot(data_dir)
    stat = (data_dir / SMALL1).stat()
    os.utime(data_dir / SMALL1, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    calls = count_calls(monkeypatch)
    load_omniglot(data_dir)
    assert calls


def test_read_only_data_dir_caches_in_user_dir(
    tmp_path: Path, user_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = copy_zips(tmp_path / "data", SMALL1)
    data_dir.chmod(0o555)
    try:
        first = load_omniglot(data_dir)
        assert not (data_dir / ".tfmeta-cache").exists()
        assert len(list(user_cache.glob("*.npz"))) == 1
        calls = count_calls(monkeypatch)
        np.testing.assert_array_equal(load_omniglot(data_dir).images, first.images)
        assert calls == []
    finally:
        data_dir.chmod(0o755)


def test_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as error:
        load_omniglot(missing)
    message = str(error.value)
    for part in (str(missing), *omniglot.ZIP_NAMES, "github.com/brendenlake/omniglot", "python/",
                 "source: tfds"):
        assert part in message


def test_dir_without_zips(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "images_background").mkdir()
    with pytest.raises(DataError) as error:
        load_omniglot(tmp_path)
    message = str(error.value)
    for part in (str(tmp_path), *omniglot.ZIP_NAMES, "notes.txt", "images_background,"):
        assert part in message


def test_corrupt_zip(tmp_path: Path) -> None:
    (tmp_path / SMALL1).write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(DataError, match="images_background_small1.zip"):
        load_omniglot(tmp_path)


def test_truncated_zip(tmp_path: Path) -> None:
    zip_path = copy_zips(tmp_path, SMALL1) / SMALL1
    contents = zip_path.read_bytes()
    zip_path.write_bytes(contents[: len(contents) // 2])
    with pytest.raises(DataError, match="images_background_small1.zip"):
        load_omniglot(tmp_path)


def test_zip_with_wrong_layout(tmp_path: Path) -> None:
    drawing = png_bytes(np.full((105, 105), 255, np.uint8))
    write_zip(tmp_path / SMALL2, {f"Greek/{i:02d}.png": drawing for i in range(20)})
    with pytest.raises(DataError, match="images_background_small2.zip.*no images laid out"):
        load_omniglot(tmp_path)


def test_zip_with_unreadable_png(tmp_path: Path) -> None:
    drawing = png_bytes(np.full((105, 105), 255, np.uint8))
    members = {f"set/Greek/character01/0001_{i:02d}.png": drawing for i in range(1, 21)}
    members["set/Greek/character01/0001_07.png"] = b"this is text, not a PNG"
    write_zip(tmp_path / SMALL1, members)
    with pytest.raises(DataError) as error:
        load_omniglot(tmp_path)
    assert "images_background_small1.zip" in str(error.value)
    assert "set/Greek/character01/0001_07.png" in str(error.value)


def test_character_without_20_images(tmp_path: Path) -> None:
    drawing = png_bytes(np.full((105, 105), 255, np.uint8))
    members = {f"set/Greek/character01/0001_{i:02d}.png": drawing for i in range(1, 21)}
    members.update({f"set/Greek/character02/0002_{i:02d}.png": drawing for i in range(1, 20)})
    write_zip(tmp_path / SMALL1, members)
    with pytest.raises(DataError, match="images_background_small1.zip.*Greek/character02.*19"):
        load_omniglot(tmp_path)


# TFDS features of one character: (label, alphabet id, alphabet_char_id, drawings, gray level).
# Label 5 is in train and again in small1, as small1 reuses train's ids; its small1 copy has another
# gray level so the test can tell which split's drawings were kept. Label 11 has only 7 drawings.
TFDS_SPLITS = {
    "train": [(5, 2, 4, 20, 10), (7, 0, 0, 20, 20), (9, 2, 1, 20, 30)],
    "test": [(1000, 1, 2, 20, 40)],
    "small1": [(5, 2, 4, 20, 99)],
    "small2": [(11, 3, 0, 7, 50)],
}


def mock_omniglot_split(self, split, **kwargs):
    """A `_as_dataset` for tfds.testing.mock_data: uniform gray drawings, black on white."""
    import tensorflow as tf

    examples = [
        {
            "image": np.full((105, 105, 3), 255 - level, np.uint8),
            "alphabet": alphabet,
            "alphabet_char_id": char_id,
            "label": label,
        }
        for label, alphabet, char_id, drawings, level in TFDS_SPLITS[str(split)]
        for _ in range(drawings)
    ]
    return tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={
            "image": tf.TensorSpec((105, 105, 3), tf.uint8),
            "alphabet": tf.TensorSpec((), tf.int64),
            "alphabet_char_id": tf.TensorSpec((), tf.int64),
            "label": tf.TensorSpec((), tf.int64),
        },
    )


def test_tfds_groups_and_dedupes_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    from tfmeta.tasks import omniglot
    monkeypatch.setattr(omniglot, "url_reachable", lambda url: "")  # mocked data: no download
    with tfds.testing.mock_data(
        policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=mock_omniglot_split
    ):
        data = load_omniglot_tfds(None, image_size=14)
    assert data.images.shape == (4, 20, 14, 14)
    assert data.images.dtype == np.uint8
    # Without prepared metadata the alphabet ClassLabel has no names, so ids stand in for them.
    assert data.alphabets == ("0", "1", "2", "2")
    assert data.characters == ("character01", "character03", "character02", "character05")
    levels = data.images.reshape(4, -1)
    # Uniform drawings stay uniform through the resize: one gray level per character, train's for 5.
    np.testing.assert_allclose(levels.min(axis=1), [20, 40, 30, 10], atol=1)
    np.testing.assert_allclose(levels.max(axis=1), [20, 40, 30, 10], atol=1)


def test_tfds_without_complete_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    from tfmeta.tasks import omniglot
    monkeypatch.setattr(omniglot, "url_reachable", lambda url: "")  # mocked data: no download
    # Random mock examples spread over 1,623 labels, so no character gets 20 drawings.
    with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(DataError, match="no character with 20 drawings"):
            load_omniglot_tfds(None)


def test_tfds_failure_suggests_local_zips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(self, *args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    from tfmeta.tasks import omniglot
    monkeypatch.setattr(omniglot, "url_reachable", lambda url: "")   # the host answers
    with pytest.raises(DataError, match="could not prepare omniglot.*no network.*--data-dir"):
        load_omniglot_tfds(str(tmp_path))
    # Without download, an unprepared data dir is the same user error.
    with pytest.raises(DataError, match="could not prepare omniglot.*--data-dir"):
        load_omniglot_tfds(str(tmp_path), download=False)



def test_tfds_offline_fails_within_seconds_naming_the_missing_zips(
        omniglot_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network (an unreachable proxy): TFDS would retry its downloads for minutes."""
    import time
    pytest.importorskip("tensorflow_datasets")
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    began = time.perf_counter()
    with pytest.raises(DataError) as error:
        load_omniglot_tfds(str(omniglot_copy))
    assert time.perf_counter() - began < 30
    message = str(error.value)
    assert "images_background.zip, images_evaluation.zip" in message
    assert "small1" not in message and "data.omniglot.source=zips" in message
    assert str(omniglot_copy) in message


def test_tfds_uses_the_zips_in_data_dir_without_asking_the_network(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    from tfmeta.tasks import omniglot
    for name in ("images_background.zip", "images_evaluation.zip",
                 "images_background_small1.zip", "images_background_small2.zip"):
        (tmp_path / name).write_bytes(b"zip")
    monkeypatch.setattr(omniglot, "url_reachable", lambda url: pytest.fail("network asked"))
    seen = {}

    def prepare(self, download_config=None, **kwargs):
        seen["manual_dir"] = str(download_config.manual_dir)
        raise ConnectionError("stop here")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", prepare)
    with pytest.raises(DataError, match="stop here"):
        load_omniglot_tfds(str(tmp_path))
    assert seen["manual_dir"] == str(tmp_path)
