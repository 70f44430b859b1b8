"""A task distribution as the rest of tfmeta sees it: shapes, loss and seeded episode streams."""

import dataclasses
from typing import Callable, Dict, Optional

import tensorflow as tf

from tfmeta.errors import ConfigError
from tfmeta.tasks import sampler
from tfmeta.tasks.episode import Episode
from tfmeta.tasks.image_format import ImageFormat

# Each split's stream id; labelled streams use id + 2. Adding a split never moves another's tasks.
_STREAMS = {"train": 0, "test": 1, "val": 4}


@dataclasses.dataclass(frozen=True)
class TaskSource:
    """A task distribution with a train and a test split, and for some a val split.

    Attributes:
        example_shape: shape of one input, e.g. (28, 28, 1) or (1,).
        outputs: width of the model's head (N ways, or 1 for regression).
        loss: "cross_entropy" or "mse".
        episode_fns: split name -> function drawing one Episode from a stateless seed.
        labelled_fns: split name -> function drawing one labelled example (x [*example_shape],
            y [] int class or [1] target) from a stateless seed, for supervised pre-training.
        classes: split name -> classes in the split (1 for regression): the width of a head
            trained on the whole split.
        eval_split: the split that training evaluates after each epoch and measures the
            landscape on: "val" where there is one, else "test".
        image_format: how the dataset's image files become inputs (None: not images).
        ways: split name -> N of its episodes, where fewer than `outputs` (`data.test_ways`).
    """
    example_shape: tuple
    outputs: int
    loss: str
    episode_fns: Dict[str, Callable[[tf.Tensor], Episode]]
    labelled_fns: Dict[str, Callable] = dataclasses.field(default_factory=dict)
    classes: Dict[str, int] = dataclasses.field(default_factory=dict)
    eval_split: str = "test"
    image_format: Optional[ImageFormat] = None
    ways: Dict[str, int] = dataclasses.field(default_factory=dict)

    def classes_in(self, split: str) -> Optional[int]:
        """M when the split's episodes use only the first M of the head's classes, else None."""
        return self.ways.get(split)

    def episodes(self, split: str, seed: int, meta_batch: int, start: int = 0,
                 count: int = -1, stride: int = 0) -> tf.data.Dataset:
        """Meta-batches of the split's episode stream; see `sampler.episodes`."""
        if split not in self.episode_fns:
            why = (" (a run that meta-trains on every class, such as data.omniglot.holdout=0, "
                   "has no meta-test split)") if split == "test" else ""
            raise ConfigError(f"no {split!r} split here; the splits are "
                              f"{', '.join(self.episode_fns)}{why}")
        return sampler.episodes(self.episode_fns[split], sampler.episode_seed(seed, _STREAMS[split]),
                                meta_batch, start, count, stride)

    def labelled(self, split: str, seed: int, batch_size: int, start: int = 0,
                 stride: int = 0) -> tf.data.Dataset:
        """Endless batches (x [B, ...], y [B] or [B, 1]) of single labelled examples of the split,
        example i drawn from (seed, i) like episodes, so a resumed run continues the stream;
        `stride` as in `sampler.episodes`."""
        return sampler.episodes(self.labelled_fns[split],
                                sampler.episode_seed(seed, _STREAMS[split] + 2), batch_size, start,
                                stride=stride)
