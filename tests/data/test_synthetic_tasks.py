"""Synthetic in-context tasks: a pure function of (seed, image size, the caller's draws), whatever the cache
and the threads, with labels that are there, not everything, and found only by reading the supports."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from useg.data.synthetic_tasks import MAX_AREA, MIN_AREA, SyntheticTasks, make_family
from useg.errors import ConfigError

SIZE, SUPPORT = 32, 4


def tasks(seed: int = 0, **options) -> SyntheticTasks:
    return SyntheticTasks(seed, SIZE, families=options.pop("families", 12), **options)


def task_at(source: SyntheticTasks, index: int, support: int = SUPPORT) -> tuple[np.ndarray, np.ndarray]:
    return source.task(np.random.default_rng([7, index]), support)


def assert_same_tasks(left: list, right: list) -> None:
    for (images, labels), (other_images, other_labels) in zip(left, right, strict=True):
        assert images.tobytes() == other_images.tobytes() and np.array_equal(labels, other_labels)


def test_a_task_has_the_promised_shapes_types_and_ranges():
    images, labels = task_at(tasks(), 0)
    assert images.shape == labels.shape == (1 + SUPPORT, SIZE, SIZE)
    assert images.dtype == np.float32 and labels.dtype == bool
    assert images.min() >= 0.0 and images.max() <= 1.0 and np.isfinite(images).all()


def test_the_same_seed_and_draws_give_bitwise_the_same_task_and_another_seed_another():
    first = [task_at(tasks(seed=3), index) for index in range(6)]
    assert_same_tasks(first, [task_at(tasks(seed=3), index) for index in range(6)])
    other = task_at(tasks(seed=4), 0)
    assert not np.array_equal(first[0][0], other[0])


def test_a_task_is_the_same_from_a_cold_a_warm_and_a_too_small_cache():
    indices = range(10)
    cold = [task_at(tasks(), index) for index in indices]  # a fresh instance for each task
    warm_source = tasks()
    for index in reversed(indices):  # every family built beforehand, in another order
        task_at(warm_source, index)
    warm = [task_at(warm_source, index) for index in indices]
    one_family_bytes = make_family(0, SIZE, 0).nbytes
    evicting = tasks(cache_bytes=one_family_bytes)  # families keep being dropped and built again
    assert_same_tasks(cold, warm)
    assert_same_tasks(cold, [task_at(evicting, index) for index in indices])


def test_threads_sharing_one_instance_build_the_same_tasks_as_one_thread():
    indices = list(range(16))
    expected = [task_at(tasks(), index) for index in indices]
    shared, results, errors = tasks(), {}, []

    def build(order: list[int]) -> None:
        try:
            for index in order:
                results.setdefault(index, []).append(task_at(shared, index))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    orders = (indices, indices[::-1], indices[5:] + indices[:5])
    threads = [threading.Thread(target=build, args=(order,)) for order in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index in indices:
        assert_same_tasks([expected[index]] * 3, results[index])


def test_the_cache_stays_within_its_byte_bound():
    one_family_bytes = make_family(0, SIZE, 0).nbytes
    source = tasks(families=30, cache_bytes=3 * one_family_bytes + one_family_bytes // 2)
    for index in range(30):
        source.family(index)
        assert source.cache.nbytes <= source.cache.max_bytes
    assert 1 <= len(source.cache) <= 4


def test_every_image_shows_its_label_but_never_fills_the_image_and_targets_fit_the_size_range():
    source = tasks(families=40)
    target_areas = []
    for index in range(60):
        _, labels = task_at(source, index)
        areas = labels.mean(axis=(1, 2))
        assert (areas > 0).all() and (areas < 1).all()
        target_areas.append(areas[0])
    in_range = np.mean([MIN_AREA <= area <= MAX_AREA for area in target_areas])
    assert in_range >= 0.95
    assert min(target_areas) < 0.05 and max(target_areas) > 0.15  # small and large structures both occur


def test_the_target_is_a_different_subject_from_each_support_even_when_supports_must_repeat():
    source = tasks(subjects=4)
    for index in range(10):
        images, _ = task_at(source, index, support=6)  # 6 supports from the 3 other subjects
        assert all(not np.array_equal(images[0], support) for support in images[1:])
    images, _ = task_at(tasks(), 0, support=8)
    assert len({image.tobytes() for image in images}) == 9  # enough subjects: all different


def test_a_subject_looks_the_same_in_whichever_task_shows_it():
    source = tasks()
    images, label_maps = source.render(2, [5, 9, 1])
    again_images, again_maps = source.render(2, [1, 5])
    assert np.array_equal(again_images[1], images[0]) and np.array_equal(again_maps[0], label_maps[2])


def test_subjects_of_a_family_share_its_layout_and_families_differ():
    source = tasks()
    _, first_family = source.render(0, [0, 1])
    _, second_family = source.render(1, [0])
    same_family_agreement = np.mean(first_family[0] == first_family[1])
    other_family_agreement = np.mean(first_family[0] == second_family[0])
    assert same_family_agreement > 0.6 and other_family_agreement < 0.3
    templates = [source.family(index).template[0] for index in range(4)]
    assert len({round(float(template.mean()), 3) for template in templates}) == 4


def test_a_label_is_told_from_its_surroundings_but_not_by_one_fixed_intensity():
    source = tasks(families=40)
    contrasts = []
    for index in range(60):
        images, labels = task_at(source, index)
        contrasts.append(images[labels].mean() - images[~labels].mean())
    contrasts = np.asarray(contrasts)
    assert np.mean(np.abs(contrasts)) > 0.08  # the label stands out from the rest of its image
    assert 0.2 < np.mean(contrasts > 0) < 0.8  # brighter in some tasks, darker in others


@pytest.mark.parametrize("options, message", [
    ({"seed": -1}, "--seed must be 0 or more"),
    ({"image_size": 4}, "at least 8 pixels"),
    ({"subjects": 1}, "at least 1 family and 2 subjects"),
])
def test_bad_settings_are_refused_with_one_clear_line(options, message):
    arguments = {"seed": 0, "image_size": SIZE, **options}
    with pytest.raises(ConfigError, match=message):
        SyntheticTasks(arguments.pop("seed"), arguments.pop("image_size"), **arguments)


def test_the_smallest_images_still_make_tasks():
    images, labels = SyntheticTasks(0, 8, families=5).task(np.random.default_rng(0), 3)
    assert images.shape == (4, 8, 8) and labels.any(axis=(1, 2)).all()
