"""The fixed calibration set int8 encoders are checked against at start-up.

The images are generated, not downloaded: deterministic (a seeded generator per image), small
(64-192 px), and varied on purpose (gradients, stripes at several frequencies, checkerboards,
shapes, noise, smooth blobs, flat colours, mixtures) so that quantisation errors which only show
on some kinds of content show here. The same 32+ prompts serve any text tower run quantised.
"""

from __future__ import annotations

import numpy as np

CALIBRATION_IMAGE_COUNT = 40

CALIBRATION_PROMPTS: tuple[str, ...] = (
    "a photo of a cat",
    "a photo of a dog",
    "a close-up of a bird on a branch",
    "a red sports car on a mountain road",
    "a bowl of fresh fruit on a wooden table",
    "a city skyline at night",
    "an empty beach at sunrise",
    "a person riding a bicycle in the rain",
    "a plate of spaghetti with tomato sauce",
    "a snowy forest",
    "a black and white photograph of an old building",
    "a diagram with arrows and boxes",
    "a child's drawing of a house",
    "a screenshot of a spreadsheet",
    "two people shaking hands",
    "a cup of coffee next to a laptop",
    "an aerial view of farmland",
    "a herd of elephants crossing a river",
    "a blurry photo",
    "a macro shot of a flower with dew drops",
    "a painting in the style of van gogh",
    "a neon sign that says open",
    "a bookshelf full of books",
    "a tabby cat sleeping on a sofa",
    "a golden retriever catching a frisbee",
    "a bowl of ramen",
    "a sailboat on a calm lake",
    "a crowded train station",
    "an x-ray image of a hand",
    "a logo on a white background",
    "a satellite image of a hurricane",
    "x",
    "photo",
    "a very long description of a scene with many objects: a table, four chairs, a lamp, "
    "a window with curtains, a rug, a plant in a pot, and a dog lying on the floor",
)


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    start, end = rng.uniform(0, 255, (2, 3))
    t = (xs / max(w - 1, 1) * rng.uniform(0, 1) + ys / max(h - 1, 1) * rng.uniform(0, 1)) / 2
    return start + (end - start) * t[..., None]


def _stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(2, 40)
    wave = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period)
    colours = rng.uniform(0, 255, (2, 3))
    return colours[0] + (colours[1] - colours[0]) * ((wave[..., None] + 1) / 2)


def _checkerboard(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    cell = int(rng.integers(2, 24))
    ys, xs = np.mgrid[0:h, 0:w]
    board = ((ys // cell + xs // cell) % 2).astype(np.float32)
    colours = rng.uniform(0, 255, (2, 3))
    return colours[0] + (colours[1] - colours[0]) * board[..., None]


def _shapes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    image = np.empty((h, w, 3), np.float32)
    image[:] = rng.uniform(0, 255, 3)
    ys, xs = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(3, 9))):
        cy, cx, radius = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, max(h, w) / 3)
        if rng.random() < 0.5:
            mask = (ys - cy) ** 2 + (xs - cx) ** 2 < radius**2
        else:
            mask = (abs(ys - cy) < radius) & (abs(xs - cx) < radius * rng.uniform(0.3, 2))
        image[mask] = rng.uniform(0, 255, 3)
    return image


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.uniform(0, 255, (h, w, 3))


def _blobs(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    coarse = rng.uniform(0, 255, (max(2, h // 16), max(2, w // 16), 3))
    rows = np.linspace(0, coarse.shape[0] - 1, h).round().astype(int)
    cols = np.linspace(0, coarse.shape[1] - 1, w).round().astype(int)
    image = coarse[rows][:, cols]
    for axis in (0, 1):  # a cheap box blur so the blocks become blobs
        image = (np.roll(image, 3, axis) + image + np.roll(image, -3, axis)) / 3
    return image


def _flat(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return np.broadcast_to(rng.uniform(0, 255, 3), (h, w, 3)).copy()


def _mixture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    first, second = rng.choice(len(_PATTERNS) - 1, 2, replace=False)
    mask = _shapes(rng, h, w)[..., :1] > 127
    return np.where(mask, _PATTERNS[first](rng, h, w), _PATTERNS[second](rng, h, w))


_PATTERNS = (_gradient, _stripes, _checkerboard, _shapes, _noise, _blobs, _flat, _mixture)


def calibration_images(count: int = CALIBRATION_IMAGE_COUNT) -> list[np.ndarray]:
    """`count` HxWx3 uint8 RGB images, the same on every machine and every call."""
    images = []
    for index in range(count):
        rng = np.random.default_rng(1000 + index)
        h, w = (int(side) for side in rng.integers(64, 193, 2))
        pattern = _PATTERNS[index % len(_PATTERNS)]
        images.append(np.clip(pattern(rng, h, w), 0, 255).astype(np.uint8))
    return images
