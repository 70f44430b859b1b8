"""Writes a folder of class folders of synthetic images, to try `--dataset folder` without data
of your own: each class is a shape (circle, square, triangle, cross, ring, bar, diamond or star)
in one colour, drawn with PIL at a random position, size and rotation on a noisy background.

    python examples/shapes_folder.py OUT [--classes 30] [--per-class 12] [--size 32]
        [--grayscale] [--jpeg]

Then: tfmeta train --dataset folder --data-dir OUT
"""

import argparse
import math
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar", "diamond", "star")
COLOURS = ((230, 60, 50), (40, 160, 70), (50, 90, 220), (240, 200, 40), (160, 60, 200),
           (30, 190, 200), (250, 130, 30), (120, 120, 120))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list:
    if shape == "square":
        corners = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
        points = [(x * r * 0.8, y * r * 0.8) for x, y in corners]
    elif shape == "triangle":
        points = [(r * math.cos(a), r * math.sin(a)) for a in
                  (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)]
    elif shape == "diamond":
        points = [(0, r), (r * 0.6, 0), (0, -r), (-r * 0.6, 0)]
    elif shape == "bar":
        points = [(r, r * 0.3), (-r, r * 0.3), (-r, -r * 0.3), (r, -r * 0.3)]
    elif shape == "star":
        points = [((r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5),
                   (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5))
                  for i in range(10)]
    else:  # cross
        w = 0.3
        points = [(w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1), (w, -1),
                  (w, -w), (1, -w), (1, w), (w, w)]
        points = [(x * r, y * r) for x, y in points]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def draw(shape: str, colour: tuple, size: int, rng: np.random.Generator):
    """One PIL RGB image of `shape` in `colour`."""
    from PIL import Image, ImageDraw
    background = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background, "RGB")
    pen = ImageDraw.Draw(image)
    r = size * rng.uniform(0.22, 0.34)
    cx, cy = rng.uniform(r, size - r, 2)
    jitter = tuple(int(np.clip(v + rng.integers(-25, 26), 0, 255)) for v in colour)
    if shape in ("circle", "ring"):
        box = [cx - r, cy - r, cx + r, cy + r]
        pen.ellipse(box, fill=None if shape == "ring" else jitter, outline=jitter,
                    width=max(2, size // 12))
    else:
        pen.polygon(_polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=jitter)
    return image


def write(out: Path, classes: int = 30, per_class: int = 12, size: int = 32,
          grayscale: bool = False, jpeg: bool = False, seed: int = 0) -> Path:
    """Writes OUT/<shape>-<colour index>/<i>.png (or .jpg); returns OUT."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    for c in range(classes):
        shape, colour = SHAPES[c % len(SHAPES)], COLOURS[(c // len(SHAPES)) % len(COLOURS)]
        folder = out / f"{shape}-{c // len(SHAPES)}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = draw(shape, colour, size, rng)
            if grayscale:
                image = image.convert("L")
            image.save(folder / f"{i:03d}.{'jpg' if jpeg else 'png'}")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--classes", type=int, default=30)
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--grayscale", action="store_true")
    parser.add_argument("--jpeg", action="store_true")
    args = parser.parse_args()
    write(Path(args.out), args.classes, args.per_class, args.size, args.grayscale, args.jpeg)
    print(f"wrote {args.classes} classes of {args.per_class} images to {args.out}")


if __name__ == "__main__":
    main()
