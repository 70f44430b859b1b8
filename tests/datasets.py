"""Small datasets written here for the tests, with no download: a TFDS dataset of generated
shapes, and MiniImagenet's csv layout of generated images."""

import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import shapes_folder  # noqa: E402

TINY_CLASSES, TINY_PER_CLASS = 12, 5


class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """12 classes of examples/shapes_folder.py's shapes, 5 RGB 16x16 images each, in two TFDS
    splits."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "picture": tfds.features.Image(shape=(16, 16, 3)),
            "kind": tfds.features.ClassLabel(names=[f"shape{c}" for c in range(TINY_CLASSES)])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(0, 3)),
                "test": self._generate_examples(range(3, TINY_PER_CLASS))}

    def _generate_examples(self, indices):
        for c in range(TINY_CLASSES):
            shape = shapes_folder.SHAPES[c % len(shapes_folder.SHAPES)]
            colour = shapes_folder.COLOURS[c // len(shapes_folder.SHAPES)]
            for i in indices:
                image = shapes_folder.draw(shape, colour, 16, np.random.default_rng(100 * c + i))
                yield f"{c}-{i}", {"picture": np.asarray(image), "kind": c}



MINI_CLASSES = {"train": 8, "val": 6, "test": 6}
PER_CLASS = 6


def label(split: str, c: int) -> str:
    return f"n{ {'train': 1, 'val': 2, 'test': 3}[split]}{c:07d}"


def write_csv_layout(root, per_class=None, seed=0):
    """images/*.jpg and {split}.csv; rows shuffled across classes, class order unsorted."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    for split, count in MINI_CLASSES.items():
        rows = []
        for c in rng.permutation(count):
            n = (per_class or {}).get(label(split, c), PER_CLASS)
            colour = rng.integers(0, 256, 3)
            for k in range(n):
                pixels = np.clip(colour + rng.normal(0, 40, (84, 84, 3)), 0, 255).astype(np.uint8)
                name = f"{label(split, c)}{k:08d}.jpg"
                Image.fromarray(pixels).save(root / "images" / name, quality=90)
                rows.append((name, label(split, c)))
        # Rows of different classes interleave.
        order = np.argsort(rng.permutation(len(rows)) % 3, kind="stable")
        lines = ["filename,label"] + [f"{rows[i][0]},{rows[i][1]}" for i in order]
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


if __name__ == "__main__":   # the docs' TFDS example prepares this dataset: datasets.py DIR
    TinyShapes(data_dir=sys.argv[1]).download_and_prepare()
