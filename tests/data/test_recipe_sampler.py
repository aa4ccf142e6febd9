"""The in-context recipe inside the sampler (draw version 3): what a run draws, exactly reproducibly."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
import torch

from useg.data import TaskSampler
from useg.data import recipe as recipe_module
from useg.data.compiled import OFF_SWITCH, enabled
from useg.data.synthetic import make_synthetic
from useg.data.tasks import SYNTHETIC, Recipe
from useg.errors import ConfigError

FULL = Recipe(recipe_module.settings_from("task", True), recipe_module.settings_from("in_task", True), 0.3)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(24, seed=0, n_patients=10, images_per_patient=4)


def sampler(ds, recipe: Recipe = FULL, **overrides) -> TaskSampler:
    settings = dict(support_size=3, seed=5, samples_per_epoch=40, recipe=recipe)
    settings.update(overrides)
    return TaskSampler(ds, np.arange(len(ds)), **settings)


def same_batch(a, b) -> bool:
    return all(torch.equal(tensor, getattr(b, name)) for name, tensor in vars(a).items())


def test_with_the_recipe_off_version_3_draws_exactly_what_version_2_drew(dataset) -> None:
    # `--task-augmentation off --in-task-augmentation off --synthetic-tasks 0` is today's recipe.
    old, new = sampler(dataset, Recipe(), draw_version=2), sampler(dataset, Recipe())
    assert new.draw_version == 3
    for batch_index in range(3):
        assert same_batch(old.batch(2, batch_index, 4), new.batch(2, batch_index, 4))


def test_recipe_batches_are_a_pure_function_of_seed_epoch_and_index(dataset) -> None:
    first = sampler(dataset)
    forwards = [first.batch(1, index, 4) for index in range(5)]
    backwards = [sampler(dataset).batch(1, index, 4) for index in reversed(range(5))][::-1]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # what the prefetch threads do
        threaded = list(pool.map(lambda index: first.batch(1, index, 4), range(5)))
    for a, b, c in zip(forwards, backwards, threaded):
        assert same_batch(a, b) and same_batch(a, c)
    assert not same_batch(forwards[0], sampler(dataset).batch(2, 0, 4))  # another epoch draws anew
    assert not same_batch(forwards[0], sampler(dataset, seed=6).batch(1, 0, 4))


def test_recipe_batches_have_the_trainers_shapes_and_values(dataset) -> None:
    batch = sampler(dataset).batch(0, 0, 4)
    assert batch.target_image.shape == batch.target_label.shape == (4, 1, 24, 24)
    assert batch.support_images.shape == batch.support_labels.shape == (4, 3, 1, 24, 24)
    for tensor in vars(batch).values():
        assert tensor.is_contiguous()
    for name in ("target_image", "support_images", "target_label", "support_labels"):
        tensor = getattr(batch, name)
        assert tensor.dtype == torch.float32 and tensor.min() >= 0 and tensor.max() <= 1, name
    labels = torch.cat([batch.target_label.flatten(), batch.support_labels.flatten()])
    assert set(labels.unique().tolist()) <= {0.0, 1.0}


def test_synthetic_tasks_come_at_their_share_and_real_tasks_keep_the_support_rules(dataset) -> None:
    draws = sampler(dataset, samples_per_epoch=400)
    batches = [draws.batch(0, index, 8) for index in range(50)]
    targets = torch.cat([batch.targets for batch in batches])
    synthetic = targets == SYNTHETIC
    assert 0.2 < synthetic.float().mean() < 0.4  # --synthetic-tasks 0.3
    supports = torch.cat([batch.supports for batch in batches])
    classes = torch.cat([batch.classes for batch in batches])
    assert (supports[synthetic] == SYNTHETIC).all() and (classes[synthetic] == SYNTHETIC).all()
    real_targets, real_supports = targets[~synthetic].numpy(), supports[~synthetic].numpy()
    assert (real_supports != real_targets[:, None]).all()
    assert (dataset.patients[real_supports] != dataset.patients[real_targets][:, None]).all()
    none = sampler(dataset, Recipe(FULL.task_augmentation, FULL.in_task_augmentation, 0.0), samples_per_epoch=400)
    assert not any((none.batch(0, index, 8).targets == SYNTHETIC).any() for index in range(20))


def test_task_augmentation_changes_what_a_task_asks(dataset) -> None:
    # With label inversion certain, every real task's labels are the complement of the masks it was drawn
    # from (only geometry moves them): the target's label covers the most of its image in an inverted task.
    settings = recipe_module.settings_from("task", {"label_inversion": 1.0, "edges": 0.0})
    draws = sampler(dataset, Recipe(settings, False, 0.0), samples_per_epoch=40)
    batch = draws.batch(0, 0, 8)
    truth = torch.from_numpy(dataset.masks[batch.targets.numpy(), batch.classes.numpy()]).float()
    assert batch.target_label.mean() > 0.5 > truth.mean()


def test_a_recipe_cannot_be_drawn_by_an_older_draw_version(dataset) -> None:
    with pytest.raises(ConfigError, match="draw version 2"):
        sampler(dataset, draw_version=2)


def pairs_recipe(probability: float) -> Recipe:
    settings = recipe_module.settings_from("task", {"label_inversion": 0.0, "inverted_pairs": probability})
    return Recipe(settings, recipe_module.settings_from("in_task", True), 0.0)


def test_an_inverted_pair_is_one_task_twice_with_opposite_labels(dataset) -> None:
    # Samples 2k and 2k+1 of an epoch: the same target and supports, augmented alike, asking the opposite.
    batch = sampler(dataset, pairs_recipe(1.0)).batch(0, 0, 4)
    for first, second in ((0, 1), (2, 3)):
        for name in ("target_image", "support_images", "targets", "classes", "supports"):
            assert torch.equal(getattr(batch, name)[first], getattr(batch, name)[second]), name
        for name in ("target_label", "support_labels"):
            assert torch.equal(getattr(batch, name)[second], 1 - getattr(batch, name)[first]), name
            assert 0 < getattr(batch, name)[first].mean() < 1, name
    assert not torch.equal(batch.target_image[0], batch.target_image[2])


def test_a_pair_forms_only_inside_one_batch(dataset) -> None:
    # Batches of 3 from sample 3: sample 3's partner (2) is in the batch before, so it is a task of its own.
    draws = sampler(dataset, pairs_recipe(1.0))
    batch = draws.batch(0, 1, 3)  # samples 3, 4, 5
    assert torch.equal(batch.target_label[2], 1 - batch.target_label[1])
    assert torch.equal(batch.target_image[2], batch.target_image[1])
    assert not torch.equal(batch.target_image[0], batch.target_image[1])
    alone = draws.batch(0, 3, 1)  # sample 3 alone draws what it drew first in the batch of 3
    for name, tensor in vars(alone).items():
        assert torch.equal(tensor[0], getattr(batch, name)[0]), name


def test_pairs_come_at_half_their_probability_and_without_them_a_task_draws_the_same_in_any_batch(dataset) -> None:
    draws = sampler(dataset, pairs_recipe(0.6), samples_per_epoch=400)
    batches = [draws.batch(0, index, 8) for index in range(50)]
    twins = [torch.equal(batch.target_image[b], batch.target_image[b - 1]) and
             torch.equal(batch.target_label[b], 1 - batch.target_label[b - 1])
             for batch in batches for b in range(1, 8, 2)]
    assert 0.45 < np.mean(twins) < 0.75  # of the pairs' second tasks: 0.6
    # At 0 nothing is drawn for pairs: each task draws what it draws alone (a run stored before pairs existed).
    unpaired = sampler(dataset, pairs_recipe(0.0))
    together = unpaired.batch(0, 0, 4)
    alone = [unpaired.batch(0, index, 1) for index in range(4)]
    for name, tensor in vars(together).items():
        assert torch.equal(tensor, torch.cat([getattr(one, name) for one in alone])), name


@pytest.mark.skipif(not enabled(),
                   reason="numba's loops are off: the fast extra is not installed, or USEG_NO_NUMBA is set")
def test_batches_are_the_same_with_numbas_loops_and_with_numpys(monkeypatch) -> None:
    # Every augmentation at probability 1 but the inversions (which would undo each other), on images whose
    # side is not a multiple of the elastic control spacing: every loop numba compiles takes part.
    every = {name: 1.0 for name in recipe_module.probability_names(recipe_module.TaskAugmentation)}
    task = recipe_module.settings_from("task", {**every, "label_inversion": 0.0, "inverted_pairs": 0.0})
    in_task = recipe_module.settings_from(
        "in_task", {name: 1.0 for name in recipe_module.probability_names(recipe_module.InTaskAugmentation)})
    draws = sampler(make_synthetic(26, seed=1, n_patients=6, images_per_patient=3), Recipe(task, in_task, 0.5))
    with_numba = [draws.batch(1, index, 3) for index in range(4)]
    monkeypatch.setenv(OFF_SWITCH, "1")
    assert not enabled()
    assert all(same_batch(a, draws.batch(1, index, 3)) for index, a in enumerate(with_numba))
