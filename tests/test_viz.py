"""What the pictures say, read structurally (legend texts, axis labels, PNG text chunks), never by pixels."""

from __future__ import annotations

import colorsys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from useg.data.dataset import ImageSource
from useg.data.index import write_data_index
from useg.apply.predict import overlay_picture
from useg.viz import COLOUR_NOTE, class_display_name, colour_input_note, contrasting_tints, prediction_figure
from useg.viz import save_prediction_figure


def target_and_support(size: int = 16, shots: int = 3):
    image = np.linspace(0, 1, size * size, dtype=np.float32).reshape(size, size)
    truth = np.zeros((size, size), dtype=np.float32)
    truth[4:10, 4:10] = 1
    pred = np.roll(truth, 2, axis=1)
    return image, truth, pred, np.stack([image] * shots), np.stack([truth] * shots)


def test_training_figure_has_a_legend_labelled_panels_and_a_labelled_support_strip():
    fig = prediction_figure(*target_and_support(), title="epoch 1 · p001_i000 · class cyst · Dice 0.500",
                            note=COLOUR_NOTE)
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["ground truth", "prediction",
                                                                        "ground truth outline"]
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "ground truth", "prediction"]
    assert [ax.get_ylabel() for ax in fig.axes[3:]] == ["support\nimages", "support\nmasks"] + [""] * 4
    assert fig._suptitle.get_text().startswith("epoch 1 · p001_i000")
    assert COLOUR_NOTE in [text.get_text() for text in fig.texts]


def test_saved_training_figure_repeats_title_legend_and_note_in_its_png_text(tmp_path):
    path = save_prediction_figure(tmp_path / "pictures" / "f.png", *target_and_support(), title="class solid",
                                  note=COLOUR_NOTE)
    text = Image.open(path).text
    assert text["Title"] == "class solid"
    assert text["Description"] == f"legend: ground truth, prediction, ground truth outline; note: {COLOUR_NOTE}"


@pytest.mark.parametrize("name, shown", [("u_dac", "solid tumour (u_dac)"), ("nang_da_thuy", "multilocular cyst "
                                         "(nang_da_thuy)"), ("septated_cyst", "septated cyst"), ("label_3", "label 3")])
def test_classes_are_shown_by_their_display_names(name, shown):
    assert class_display_name(name) == shown


def write_image(path: Path, rgb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = np.zeros((24, 24, 3), dtype=np.uint8)
    picture[:] = rgb
    Image.fromarray(picture).save(path)


def test_a_colour_input_gets_the_grey_conversion_note_and_a_grey_one_does_not(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    write_image(data / "images" / "stained.png", (150, 60, 180))
    write_image(data / "images" / "grey_as_rgb.png", (90, 90, 90))  # RGB file, but nothing is lost
    run.mkdir()
    dataset = SimpleNamespace(ids=["p000_i000", "p001_i000"], source="folders", datasets=[],
                              sources=[ImageSource("images/stained.png"), ImageSource("images/grey_as_rgb.png")])
    write_data_index(run, data, dataset)
    assert colour_input_note(run, "p000_i000") == COLOUR_NOTE
    assert colour_input_note(run, "p001_i000") is None
    assert colour_input_note(tmp_path / "synthetic run", "p000_i000") is None  # no index: nothing to say


def test_with_several_datasets_the_colour_note_reads_each_image_from_its_own_dataset_s_folder(tmp_path):
    first, second, run = tmp_path / "a", tmp_path / "b", tmp_path / "run"
    write_image(first / "images" / "s.png", (90, 90, 90))  # the same file name, grey in a, colour in b
    write_image(second / "images" / "s.png", (150, 60, 180))
    run.mkdir()
    dataset = SimpleNamespace(ids=["d1/p000_i000", "d2/p000_i000"], source="folders", datasets=["a", "b"],
                              sources=[ImageSource("images/s.png", dataset=0), ImageSource("images/s.png", dataset=1)])
    write_data_index(run, [str(first), str(second)], dataset)
    assert colour_input_note(run, "d1/p000_i000") is None
    assert colour_input_note(run, "d2/p000_i000") == COLOUR_NOTE


def hue_degrees(rgb) -> float:
    return 360 * colorsys.rgb_to_hsv(*(channel / 255 for channel in rgb))[0]


def test_overlay_on_purple_stained_cells_is_tinted_in_a_contrasting_colour_not_red_or_purple():
    purple = np.zeros((40, 40, 3), dtype=np.uint8)
    purple[:] = (150, 60, 180)
    purple[::4] = (210, 160, 225)  # lighter pink-purple background rows
    [tint] = contrasting_tints(purple, 1, for_grey=[(255, 64, 64)])
    assert 60 <= hue_degrees(tint) <= 180  # yellow-green to cyan: far from red (0) and purple (~285)
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:30, 10:30] = True
    overlay = overlay_picture(purple, [mask])
    assert tuple(overlay[10, 10]) == tint  # the outline is drawn in the chosen tint


def test_several_classes_get_distinct_tints_and_a_grey_image_keeps_the_usual_ones():
    purple = np.full((32, 32, 3), (150, 60, 180), dtype=np.uint8)
    tints = contrasting_tints(purple, 3, for_grey=[(255, 64, 64)])
    assert len(set(tints)) == 3 and all(abs(hue_degrees(t) - 283) > 90 for t in tints)
    grey = np.full((32, 32, 3), 120, dtype=np.uint8)
    assert contrasting_tints(grey, 2, for_grey=[(255, 64, 64), (64, 200, 255)]) == [(255, 64, 64), (64, 200, 255)]


def test_training_on_colour_images_writes_pictures_that_name_the_class_and_the_grey_conversion(tmp_path):
    from tiny import train_tiny

    data = tmp_path / "stained"
    for number in range(10):
        write_image(data / "images" / f"cell{number}.png", (150 + number, 60, 180))
        mask = np.zeros((24, 24), dtype=np.uint8)
        mask[4 + number % 5:14 + number % 5, 6:16] = 255
        (data / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask).save(data / "masks" / f"cell{number}.png")
    run = train_tiny(tmp_path / "run", 1, "--data", str(data), "--vis-every", "1", "--classes", "nucleus")
    [picture] = (run / "visualizations_training").glob("*.png")
    text = Image.open(picture).text
    assert "class nucleus" in text["Title"] and text["Description"].endswith(f"note: {COLOUR_NOTE}")
