"""A folder of real photos for vision benches, built offline: the colour and grey photographs
that ship inside scikit-image and scikit-learn (a cat, an astronaut, coffee, motorcycles, a
rocket, a palace, a flower, a street camera, textures, the moon …), cut into random-resized
crops the way ImageNet training pipelines view an image. Deterministic for a seed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SKIMAGE = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg",
           "hubble_deep_field.jpg", "camera.png", "grass.png", "gravel.png", "brick.png", "coins.png", "moon.png",
           "page.png", "retina.jpg", "ihc.png")


def source_photos() -> list[tuple[str, Image.Image]]:
    """(name, RGB image) of every photo bundled with scikit-image and scikit-learn."""
    import skimage
    from sklearn.datasets import load_sample_images
    folder = Path(skimage.__file__).parent / "data"  # the files in the wheel (no pooch download)
    out = []
    for fname in SKIMAGE:
        with Image.open(folder / fname) as im:
            out.append((Path(fname).stem, im.convert("RGB")))
    sk = load_sample_images()
    for fname, arr in zip(sk.filenames, sk.images):
        out.append((Path(fname).stem, Image.fromarray(arr).convert("RGB")))
    return out


def write_crops(folder: Path, n: int, seed: int = 0, side: int = 288) -> Path:
    """``n`` JPEG crops (scale 0.15–1 of the area, aspect 3:4–4:3, random flip), shorter side
    ``side`` pixels, named by source photo. Kept when the folder already holds them."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == n:
        return folder
    for f in folder.glob("*.jpg"):
        f.unlink()
    rng = np.random.default_rng(seed)
    photos = source_photos()
    for i in range(n):
        name, im = photos[i % len(photos)]
        w, h = im.size
        area = w * h * rng.uniform(0.15, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(w, int(round(np.sqrt(area * aspect)))), min(h, int(round(np.sqrt(area / aspect))))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        s = side / min(crop.size)
        crop = crop.resize((max(side, round(crop.size[0] * s)), max(side, round(crop.size[1] * s))), Image.BILINEAR)
        crop.save(folder / f"{i:04d}-{name}.jpg", quality=92)
    return folder
