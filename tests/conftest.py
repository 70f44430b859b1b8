"""Shared fixtures: the real Omniglot zips beside the repository, and a private user cache."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

OMNIGLOT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
OMNIGLOT_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")


@pytest.fixture(scope="session", autouse=True)
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory):
    """Points the loader's fallback cache (~/.cache/tfmeta) into a temp dir for the session."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
        yield


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """The shared Omniglot zips; read them, never write there (copy into tmp_path instead)."""
    if not all((OMNIGLOT_DIR / name).is_file() for name in OMNIGLOT_ZIPS):
        pytest.skip(f"Omniglot zips not found in {OMNIGLOT_DIR}")
    return OMNIGLOT_DIR


@pytest.fixture(scope="session")
def omniglot_copy(omniglot_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the shared zips, so a loader may write its cache beside them."""
    copy = tmp_path_factory.mktemp("omniglot")
    for name in OMNIGLOT_ZIPS:
        shutil.copy(omniglot_dir / name, copy / name)
    return copy


@pytest.fixture(scope="session")
def tiny_omniglot_run(omniglot_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of ten omniglot_5w1s-cpu meta-iterations with 8 filters, shared by every test
    that only reads it (export, serve)."""
    from helpers import train_tiny
    return train_tiny(tmp_path_factory.mktemp("omniglot") / "run", "omniglot_5w1s-cpu",
                      f"data.omniglot.data_dir={omniglot_dir}", "model.filters=8",
                      "train.meta_batch=2")


@pytest.fixture(scope="session")
def tiny_sine_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of ten sine meta-iterations, shared by every test that only reads it."""
    from helpers import train_tiny
    return train_tiny(tmp_path_factory.mktemp("sine") / "run", "sine")
