"""UniverSeg's task and in-task augmentation (useg.data.recipe, recipe_pixels): what each change does to a task."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from useg.data import recipe, recipe_pixels
from useg.data.recipe import InTaskAugmentation, TaskAugmentation, augmentation_from, settings_from
from useg.data.recipe_pixels import augment, augment_into
from useg.data.task_kinds import edges, inverted

GEOMETRY = ("flip_left_right", "flip_up_down", "affine", "elastic")


def only(**on: float) -> tuple[TaskAugmentation, InTaskAugmentation]:
    """Settings with every probability 0 but the ones named (task_X or in_task_X)."""
    def zeroed(cls, prefix):
        probabilities = {f.name: 0.0 for f in fields(cls) if isinstance(getattr(cls(), f.name), float)
                         and f.name != "max_translation"}
        chosen = {name[len(prefix):]: value for name, value in on.items() if name.startswith(prefix)}
        return cls(**{**probabilities, **chosen})
    return zeroed(TaskAugmentation, "task_"), zeroed(InTaskAugmentation, "in_task_")


def squares(count: int = 5, height: int = 40, width: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Images whose intensity is their label: an off-centre rectangle, so that flips and turns show."""
    labels = np.zeros((count, height, width), bool)
    for k in range(count):
        labels[k, 6 + k:22 + k, 9:30 - k] = True
    return labels.astype(np.float32), labels


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("change", [f"task_{name}" for name in GEOMETRY] + ["in_task_affine", "in_task_elastic",
                                                                             "everything"])
def test_each_geometric_change_moves_the_label_with_the_image(change: str) -> None:
    names = [f"task_{name}" for name in GEOMETRY] + ["in_task_affine", "in_task_elastic"]
    task, own = only(**{name: 1.0 for name in (names if change == "everything" else [change])})
    images, labels = squares()
    moved = False
    for seed in range(4):
        out_images, out_labels, applied = augment(np.random.default_rng(seed), images, labels, task, own)
        assert applied == ()
        for image, label in zip(out_images, out_labels):
            assert iou(image >= 0.5, label == 1) > 0.9
        moved |= not np.array_equal(out_labels, labels)
    assert moved  # the change did happen


def test_flips_mirror_the_whole_task_exactly() -> None:
    images, labels = squares()
    for change, expected in (("task_flip_left_right", np.s_[:, :, ::-1]), ("task_flip_up_down", np.s_[:, ::-1])):
        out_images, out_labels, _ = augment(np.random.default_rng(0), images, labels, *only(**{change: 1.0}))
        assert np.array_equal(out_images, images[expected]) and np.array_equal(out_labels, labels[expected])


def test_what_comes_from_outside_the_image_is_0_in_the_image_and_the_label() -> None:
    images, labels = np.ones((3, 32, 32), np.float32), np.ones((3, 32, 32), bool)
    task, own = only(task_affine=1.0)
    task = replace(task, rotation_degrees=(45.0, 45.0), scale=(0.6, 0.6))
    out_images, out_labels, _ = augment(np.random.default_rng(0), images, labels, task, own)
    assert out_images[:, 0, 0].max() == 0 and out_labels[:, 0, 0].max() == 0  # corners: outside
    assert out_images[:, 16, 16].min() == 1 and out_labels[:, 16, 16].min() == 1


@pytest.mark.parametrize("changes, expected_names", [
    (("label_inversion",), ("inverted",)), (("edges",), ("edges",)),
    (("edges", "label_inversion"), ("edges", "inverted"))])
def test_label_changes_are_the_complement_and_the_edges_of_the_warped_label(changes, expected_names) -> None:
    images, labels = squares()
    warps = {"task_affine": 1.0, "in_task_elastic": 1.0}
    for seed in range(3):
        plain_images, plain, names = augment(np.random.default_rng(seed), images, labels, *only(**warps))
        out_images, changed, names = augment(np.random.default_rng(seed), images, labels,
                                             *only(**warps, **{f"task_{name}": 1.0 for name in changes}))
        expected = plain
        if "edges" in changes:
            expected = edges(expected)
        if "label_inversion" in changes:
            expected = inverted(expected)
        assert names == expected_names
        assert np.array_equal(changed, expected) and changed.dtype == np.float32
        assert np.array_equal(out_images, plain_images)  # nothing from a label reaches an image


def test_an_inverted_tasks_outside_is_foreground_in_the_target_and_every_support() -> None:
    images, labels = np.ones((4, 32, 32), np.float32), np.ones((4, 32, 32), bool)  # all foreground
    task, own = only(task_affine=1.0, task_label_inversion=1.0)
    task = replace(task, scale=(0.6, 0.6))
    out_images, out_labels, names = augment(np.random.default_rng(1), images, labels, task, own)
    assert names == ("inverted",)
    outside = out_images < 0.5
    assert outside.any(axis=(1, 2)).all() and (out_labels[outside] == 1).all() and (out_labels[~outside] == 0).all()


def test_intensity_changes_leave_the_labels_alone_and_labels_never_reach_the_images() -> None:
    images = np.random.default_rng(0).uniform(0.2, 0.8, (4, 24, 24)).astype(np.float32)
    labels = np.zeros((4, 24, 24), bool)
    labels[:, 5:15, 5:15] = True
    for change in ("intensity_inversion", "brightness_contrast", "blur", "noise", "sharpness"):
        for level in ("task", "in_task"):
            if level == "in_task" and change == "intensity_inversion":
                continue
            task, own = only(**{f"{level}_{change}": 1.0})
            out_images, out_labels, _ = augment(np.random.default_rng(3), images, labels, task, own)
            assert np.array_equal(out_labels, labels), change
            assert not np.array_equal(out_images, images), change
            other, _, _ = augment(np.random.default_rng(3), images, ~labels, task, own)
            assert np.array_equal(other, out_images), change


def test_intensity_inversion_is_one_minus_the_image() -> None:
    images, labels = squares()
    images = images * 0.7 + 0.1
    out_images, _, _ = augment(np.random.default_rng(0), images, labels, *only(task_intensity_inversion=1.0))
    assert np.array_equal(out_images, (1 - images).astype(np.float32))


def test_with_every_probability_0_the_task_comes_back_unchanged() -> None:
    images = np.random.default_rng(0).random((3, 20, 36), dtype=np.float32)
    labels = images > 0.5
    for task, own in (only(), (None, None), (only()[0], None), (None, only()[1])):
        out_images, out_labels, names = augment(np.random.default_rng(0), images, labels, task, own)
        assert np.array_equal(out_images, images) and np.array_equal(out_labels, labels) and names == ()
        assert out_images.dtype == out_labels.dtype == np.float32


def everything() -> tuple[TaskAugmentation, InTaskAugmentation]:
    def all_on(settings):
        names = [f.name for f in fields(settings) if isinstance(getattr(settings, f.name), float)
                 and f.name not in ("max_translation", "label_inversion", "edges")]
        return replace(settings, **{name: 1.0 for name in names})
    return all_on(TaskAugmentation()), all_on(InTaskAugmentation())


def test_the_same_seed_draws_the_same_task_bitwise_whatever_thread_runs_it() -> None:
    images, labels = squares(count=9)
    settings_ = (TaskAugmentation(label_inversion=0.5, edges=0.5), InTaskAugmentation())

    def run(seed: int):
        return augment(np.random.default_rng([7, seed]), images, labels, *settings_)

    first = [run(seed) for seed in range(6)]
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(run, reversed(range(6))))[::-1]
    for (a_images, a_labels, a_names), (b_images, b_labels, b_names) in zip(first, threaded):
        assert np.array_equal(a_images, b_images) and np.array_equal(a_labels, b_labels) and a_names == b_names
    assert not np.array_equal(first[0][0], first[1][0])


def test_augment_into_writes_what_augment_returns_into_the_target_and_support_arrays() -> None:
    images, labels = squares(count=7)
    task, own = TaskAugmentation(label_inversion=1.0), InTaskAugmentation()
    out_images, out_labels, names = augment(np.random.default_rng(5), images, labels, task, own)
    targets = [np.full((1, 40, 48), -1, np.float32), np.full((6, 40, 48), -1, np.float32)]
    target_labels = [np.full_like(part, -1) for part in targets]
    assert augment_into(np.random.default_rng(5), images, labels, task, own, targets, target_labels) == names
    assert np.array_equal(np.concatenate(targets), out_images)
    assert np.array_equal(np.concatenate(target_labels), out_labels)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 6), height=st.integers(2, 40), width=st.integers(2, 40),
       label_kind=st.sampled_from([bool, np.float32]))
def test_outputs_are_float32_images_in_0_1_and_labels_exactly_0_or_1(seed, count, height, width, label_kind) -> None:
    rng = np.random.default_rng(seed)
    images = rng.random((count, height, width), dtype=np.float32)
    labels = (rng.random((count, height, width)) > 0.6).astype(label_kind)
    given_images, given_labels = images.copy(), labels.copy()
    out_images, out_labels, names = augment(rng, images, labels, *everything())
    assert np.array_equal(images, given_images) and np.array_equal(labels, given_labels)  # inputs untouched
    assert out_images.shape == out_labels.shape == images.shape
    assert out_images.dtype == out_labels.dtype == np.float32
    assert out_images.min() >= 0 and out_images.max() <= 1 and np.isfinite(out_images).all()
    assert set(np.unique(out_labels)) <= {0.0, 1.0}
    assert set(names) <= {"edges", "inverted"}


def test_the_elastic_field_has_kornias_magnitude_and_smoothness() -> None:
    # kornia: uniform(-1, 1) noise per pixel, Gaussian-smoothed (sigma in pixels), times alpha, in
    # normalised units (the side spans 2). The recipe draws it at control points; compare its std
    # and its correlation a sigma away with the full-resolution definition.
    size, alpha, sigma = 96, 2.0, 7.0
    values = np.zeros((200, 11))
    values[:, 4], values[:, 5] = alpha, sigma
    field = recipe_pixels._elastic_fields(np.random.default_rng(0), values, (1, size, size))[:, :, 8:-8, 8:-8]
    rng = np.random.default_rng(1)
    taps = np.arange(-28, 29)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    noise = rng.uniform(-1, 1, (40, size + 56, size + 56))
    smooth = np.apply_along_axis(lambda line: np.convolve(line, kernel, "valid"), 1, noise)
    smooth = np.apply_along_axis(lambda line: np.convolve(line, kernel, "valid"), 2, smooth) * alpha * size / 2
    assert field.std() == pytest.approx(smooth.std(), rel=0.05)
    for points in (2, 4):  # control points 4 pixels apart: a correlation 8 and 16 pixels away
        ours = (field[..., :-points, :] * field[..., points:, :]).mean() / field.var()
        shift = 4 * points
        theirs = (smooth[:, :-shift] * smooth[:, shift:]).mean() / smooth.var()
        assert ours == pytest.approx(theirs, abs=0.03)


# ------------------------------------------------------------------ settings


def test_on_paper_and_off_are_the_presets_and_false_as_plain_json() -> None:
    for kind, cls in (("task", TaskAugmentation), ("in_task", InTaskAugmentation)):
        assert cls(**settings_from(kind, "paper")) == cls()  # the dataclasses' defaults are the paper's recipe
        assert cls(**settings_from(kind, "on")) == replace(cls(), **recipe.ON[kind])
        defaults = settings_from(kind, True)
        assert settings_from(kind, "on") == settings_from(kind, "ON ") == defaults
        assert settings_from(kind, False) is False and settings_from(kind, "off") is False
        assert json.loads(json.dumps(defaults)) == defaults
        assert all(isinstance(value, float) or (isinstance(value, list) and len(value) == 2
                                                and all(isinstance(x, float) for x in value))
                   for value in defaults.values())
        assert augmentation_from(kind, defaults) == cls(**defaults) and augmentation_from(kind, False) is None
    assert settings_from("task", True)["label_inversion"] == recipe.LABEL_INVERSION_PROBABILITY
    assert settings_from("task", True)["inverted_pairs"] == recipe.INVERTED_PAIRS_PROBABILITY
    assert settings_from("task", True)["edges"] == recipe.EDGES_PROBABILITY
    assert settings_from("in_task", True)["elastic_alpha"] == [1.0, 2.5]


def test_a_mapping_updates_the_defaults_and_is_stored_as_floats() -> None:
    stored = settings_from("task", {"label_inversion": 1, "scale": (0.9, 1)})
    assert stored == {**settings_from("task", True), "label_inversion": 1.0, "scale": [0.9, 1.0]}
    assert TaskAugmentation(**stored).scale == (0.9, 1.0)
    assert settings_from("task", stored) == stored  # a stored value reads back as itself


@pytest.mark.parametrize("kind, key, value, words", [
    ("task", "label_inversion", 1.5,
     "task_augmentation.label_inversion must be a probability between 0 and 1; got 1.5"),
    ("task", "edges", -0.1, "task_augmentation.edges must be a probability between 0 and 1; got -0.1"),
    ("task", "inverted_pairs", 2, "task_augmentation.inverted_pairs must be a probability between 0 and 1; got 2"),
    ("task", "noise", "often", "task_augmentation.noise must be a probability between 0 and 1; got 'often'"),
    ("task", "blur", True, "task_augmentation.blur must be a probability between 0 and 1; got True"),
    ("task", "affine", float("nan"), "task_augmentation.affine must be a probability"),
    ("task", "scale", [1.2, 0.8], "task_augmentation.scale must be a range [low, high] with 0 < low <= high; "
                                  "got [1.2, 0.8]"),
    ("task", "scale", [0, 1], "task_augmentation.scale must be a range"),
    ("task", "scale", 1.0, "task_augmentation.scale must be a range [low, high] with 0 < low <= high; got 1.0"),
    ("task", "rotation_degrees", [10], "task_augmentation.rotation_degrees must be a range"),
    ("task", "elastic_sigma", [-1, 2], "task_augmentation.elastic_sigma must be a range [low, high] of pixels "
                                       "with 0 < low <= high; got [-1, 2]"),
    ("in_task", "blur_sigma", [-0.5, 1], "in_task_augmentation.blur_sigma must be a range [low, high] of pixels"),
    ("in_task", "noise_std", [0, 2], "in_task_augmentation.noise_std must be a range"),
    ("in_task", "max_translation", 1.5, "in_task_augmentation.max_translation must be a fraction between 0 and 1; "
                                        "got 1.5"),
    ("in_task", "label_inversion", 0.5, "in_task_augmentation.label_inversion is not a setting; the settings are: "),
    ("task", "rotation", [0, 90], "task_augmentation.rotation is not a setting; the settings are: label_inversion"),
])
def test_each_bad_setting_is_one_line_naming_the_key_the_rule_and_the_value(kind, key, value, words) -> None:
    with pytest.raises(ValueError) as raised:
        settings_from(kind, {key: value})
    message = str(raised.value)
    assert words in message and "\n" not in message


def test_a_value_that_is_neither_on_off_nor_a_mapping_is_one_line() -> None:
    for value in (3, None, "sometimes", [0.5]):
        with pytest.raises(ValueError, match=r"^task_augmentation must be on, off, paper or a mapping of its settings; "
                                             r"got .*$"):
            settings_from("task", value)


def test_a_stored_recipe_is_described_by_its_preset_and_what_it_changes() -> None:
    # `useg runs compare` shows a run's recipe so: a whole mapping would fill the table.
    assert recipe.describe("task", settings_from("task", "on")) == "on"
    assert recipe.describe("in_task", settings_from("in_task", "paper")) == "paper"
    assert recipe.describe("task", False) == "off"
    assert recipe.describe("task", settings_from("task", {"edges": 0.25, "scale": [0.9, 1]})) == \
        "on, edges=0.25 scale=[0.9, 1]"
