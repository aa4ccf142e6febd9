"""`useg predict` says which supports it drew (on stdout, beside the files it wrote; anonymous ids, and files with
--with-paths) and never gives an input image itself as one of its supports."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny import train_tiny

from useg.cli import main
from useg.data import make_synthetic

DRAWN = re.compile(r"^supports of foreground \(S=2\): (.+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("predict_supports") / "run", 2)


def write_supports(root: Path, count: int) -> Path:
    """images/ + masks/ of `count` synthetic cysts at 48x48, named s0.png, s1.png ..."""
    data = make_synthetic(image_size=48, seed=1, n_patients=count, images_per_patient=1, classes=["cyst"])
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
    for index, (image, mask) in enumerate(zip(data.images, data.masks[:, 0])):
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / f"s{index}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"s{index}.png")
    return root


@pytest.fixture
def supports(tmp_path) -> Path:
    return write_supports(tmp_path / "supports", 6)


@pytest.fixture
def new_image(tmp_path) -> Path:
    path = tmp_path / "new" / "scan.png"
    path.parent.mkdir()
    image = make_synthetic(image_size=40, seed=7, n_patients=1, images_per_patient=1).images[0]
    Image.fromarray((image * 255).astype(np.uint8)).save(path)
    return path


def predict(run: Path, capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(["predict", "--run-dir", str(run), "--support-size", "2", *args]) == 0
    return capsys.readouterr().out


def drawn_files(out: str) -> list[str]:
    """The files of the shared draw, from a --with-paths report: `p000_i000 (images/s0.png), ...`."""
    return re.findall(r"\((images/s\d\.png)\)", DRAWN.search(out).group(1))


def test_predict_names_the_supports_it_drew_by_anonymous_id_only(run, supports, new_image, tmp_path, capsys):
    out = predict(run, capsys, "--support", str(supports), "--images", str(new_image), "--out", str(tmp_path / "o"))
    ids = DRAWN.search(out).group(1).split(", ")
    assert len(ids) == 2 and all(re.fullmatch(r"p\d{3}_i\d{3}", name) for name in ids)
    assert "s0" not in out and "images/" not in out and str(supports) not in out


def test_with_paths_names_the_support_files_too(run, supports, new_image, tmp_path, capsys):
    out = predict(run, capsys, "--support", str(supports), "--images", str(new_image), "--out", str(tmp_path / "o"),
                  "--with-paths")
    assert len(drawn_files(out)) == 2


def test_each_ensemble_draw_is_named(run, supports, new_image, tmp_path, capsys):
    out = predict(run, capsys, "--support", str(supports), "--images", str(new_image), "--out", str(tmp_path / "o"),
                  "--ensembles", "2")
    assert re.search(r"^supports of foreground \(S=2, draw 1 of 2\): p\d{3}_i\d{3}, p\d{3}_i\d{3}$", out, re.MULTILINE)
    assert re.search(r"^supports of foreground \(S=2, draw 2 of 2\): ", out, re.MULTILINE)


def test_an_input_that_is_a_support_image_is_predicted_without_it(run, supports, tmp_path, capsys):
    """The same folder as --images and as --support's images: an input drawn as a support gets the draw it would
    get from the folder without it, and the report says so."""
    together = tmp_path / "together"
    out = predict(run, capsys, "--support", str(supports), "--images", str(supports / "images"), "--out",
                  str(together), "--with-paths")
    drawn = drawn_files(out)
    assert len(drawn) == 2
    for file in drawn:
        stem = Path(file).stem
        line = next(line for line in out.splitlines() if line.startswith(f"input {supports / file} is itself"))
        assert line.count("(images/") == 2 and f"({file})" not in line.split("drawn without it:")[1]
        without = tmp_path / f"without_{stem}"
        shutil.copytree(supports, without)
        (without / "images" / f"{stem}.png").unlink()
        (without / "masks" / f"{stem}.png").unlink()
        alone = tmp_path / f"alone_{stem}"
        predict(run, capsys, "--support", str(without), "--images", str(supports / file), "--out", str(alone))
        assert np.array_equal(np.asarray(Image.open(together / f"{stem}.png")),
                              np.asarray(Image.open(alone / f"{stem}.png")))
    others = [line for line in out.splitlines() if "is itself a support image" in line]
    assert len(others) == 2  # the inputs that were not drawn keep the shared draw


def test_a_hard_link_to_a_support_image_counts_as_that_image(run, supports, tmp_path, capsys):
    out = predict(run, capsys, "--support", str(supports), "--images", str(supports / "images"), "--out",
                  str(tmp_path / "o"), "--with-paths")
    file = drawn_files(out)[0]
    linked = tmp_path / "linked" / "copy.png"
    linked.parent.mkdir()
    linked.hardlink_to(supports / file)
    out = predict(run, capsys, "--support", str(supports), "--images", str(linked), "--out", str(tmp_path / "o2"))
    assert "input 1 of 1 is itself a support image: its foreground supports (S=2) are drawn without it" in out


def test_the_only_support_image_as_input_is_one_line_and_writes_nothing(run, tmp_path, capsys):
    single = write_supports(tmp_path / "single", 1)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["predict", "--run-dir", str(run), "--support", str(single), "--support-size", "1", "--images",
                 str(single / "images" / "s0.png"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "only support image showing class foreground" in err
    assert not out.exists()
