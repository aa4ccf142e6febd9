"""`--resize`: a wide image made square by squashing (the default) or by letterboxing (`pad`), and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from useg.cli import main
from useg.data import load_dataset
from useg.data.geometry import from_square
from useg.data.images import resize_mask
from useg.errors import ConfigError


def write_wide_pair(root: Path, name: str = "scan") -> None:
    """A 64x32 (width x height) grey scan with a bright 16x16 square, and its mask."""
    image = np.full((32, 64), 60, dtype=np.uint8)
    mask = np.zeros((32, 64), dtype=np.uint8)
    image[8:24, 20:36], mask[8:24, 20:36] = 200, 255
    for folder, values in (("images", image), ("masks", mask)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(values).save(root / folder / f"{name}.png")


def extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) rows and columns of the mask's pixels, inclusive."""
    rows, columns = np.nonzero(mask)
    return rows.min(), rows.max(), columns.min(), columns.max()


def test_pad_keeps_a_square_square_and_squash_stretches_it(tmp_path):
    write_wide_pair(tmp_path)
    squashed = load_dataset(tmp_path, image_size=32)
    padded = load_dataset(tmp_path, image_size=32, resize="pad")
    top, bottom, left, right = extent(squashed.masks[0, 0])
    assert (bottom - top + 1, right - left + 1) == (16, 8)  # twice as tall as wide: squeezed sideways
    top, bottom, left, right = extent(padded.masks[0, 0])
    assert (bottom - top + 1, right - left + 1) == (8, 8)  # still a square
    assert (top, left) == (8 + 4, 10)  # the 32x16 picture sits centred in rows 8..23
    letterbox = np.r_[0:8, 24:32]
    assert not padded.images[0][letterbox].any() and not padded.masks[0, 0][letterbox].any()
    assert padded.images[0][8:24].min() > 0.2  # the scan itself fills the middle rows


def test_a_square_image_is_the_same_under_both_rules(tmp_path):
    data = load_dataset(None, image_size=32)
    padded = load_dataset(None, image_size=32, resize="pad")
    assert np.array_equal(data.images, padded.images) and np.array_equal(data.masks, padded.masks)


@pytest.mark.parametrize("shape, size", [((12, 24), 48), ((10, 30), 90), ((30, 10), 60)])
@pytest.mark.parametrize("mode", ["pad", "squash"])
def test_a_mask_comes_back_from_the_square_unchanged_at_integer_scales(shape, size, mode):
    mask = np.random.default_rng(sum(shape)).random(shape) > 0.6
    square = resize_mask(mask, size, mode)
    back = from_square(torch.from_numpy(square.astype(np.float32)), shape, mode).numpy() > 0.5
    assert back.shape == shape and np.array_equal(back, mask)


def test_from_square_crops_the_letterbox_before_resizing():
    square = torch.zeros(2, 32, 32)
    square[:, 8:24] = 1.0  # where pad puts a 64x32 image: everything inside is foreground
    assert torch.equal(from_square(square, (32, 64), "pad"), torch.ones(2, 32, 64))
    assert from_square(square, (32, 64), "squash").mean() == 0.5  # squash reads the letterbox as image


def test_an_unknown_rule_is_named(tmp_path):
    write_wide_pair(tmp_path)
    with pytest.raises(ConfigError, match="--resize crop is unknown; use squash or pad"):
        load_dataset(tmp_path, image_size=32, resize="crop")


def test_a_config_file_with_another_rule_is_one_line_and_exit_2(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("resize: crop\n", encoding="utf-8")
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "resize (--resize) must be squash" in err and "got 'crop'" in err
    assert not (tmp_path / "run").exists()
