"""Snapshots are copied into reused staging memory: still independent, exact copies."""

import torch

from useg.checkpoint import CheckpointManager
from useg.checkpoint.state import StagingPool, snapshot_state

LARGE = (1024, 512)  # 2 MiB of float32


def test_snapshot_of_large_tensors_is_an_exact_copy_that_training_cannot_change():
    sources = {
        "float32": torch.randn(LARGE),
        "int64": torch.arange(LARGE[0] * LARGE[1]).reshape(LARGE),
        "bfloat16": torch.randn(LARGE).to(torch.bfloat16),
        "bool": torch.rand(4 * LARGE[0], LARGE[1]) > 0.5,
    }
    originals = {name: tensor.clone() for name, tensor in sources.items()}
    snapshot = snapshot_state({"tensors": sources})
    for tensor in sources.values():
        tensor.zero_()  # the next optimiser step
    for name, original in originals.items():
        copied = snapshot["tensors"][name]
        assert copied.dtype == original.dtype and copied.shape == original.shape
        assert torch.equal(copied, original), name


def test_pooled_copies_are_reused_only_after_they_are_given_back():
    pool = StagingPool()
    weight = torch.randn(LARGE)
    first = snapshot_state({"w": weight}, pool)
    second = snapshot_state({"w": weight + 1}, pool)  # the first is still being written: fresh memory
    assert first["w"].data_ptr() != second["w"].data_ptr()
    assert torch.equal(first["w"], weight) and torch.equal(second["w"], weight + 1)
    memory = first["w"].data_ptr()
    pool.give_back(first)
    third = snapshot_state({"w": weight + 2, "other": torch.zeros(3)}, pool)
    assert third["w"].data_ptr() == memory and torch.equal(third["w"], weight + 2)
    assert torch.equal(second["w"], weight + 1)  # not given back: untouched


def test_manager_reuses_the_previous_snapshot_memory_once_its_write_is_done(tmp_path):
    model = torch.nn.Linear(*LARGE)
    with CheckpointManager(tmp_path, total_epochs=3) as manager:
        manager.save({"model_state_dict": model}, epoch=1)
        manager.wait()
        [pooled] = manager._staging._free[(model.weight.shape, model.weight.stride(), torch.float32, False)]
        with torch.no_grad():
            model.weight.mul_(2.0)
        manager.save({"model_state_dict": model}, epoch=2)
        assert pooled.data_ptr() in {t.data_ptr() for _, t in manager._staging._lent.values()}
        manager.wait()
        torch.testing.assert_close(manager.load("latest")["model_state_dict"], model.state_dict(), rtol=0, atol=0)


def test_large_non_contiguous_tensor_keeps_its_strides():
    transposed = torch.randn(LARGE).t()
    copied = snapshot_state({"w": transposed})["w"]
    assert copied.stride() == transposed.stride() and torch.equal(copied, transposed)


def test_checkpoint_of_staged_tensors_loads_back_equal(tmp_path):
    model = torch.nn.Linear(*LARGE)
    with CheckpointManager(tmp_path, total_epochs=2) as manager:
        manager.save({"model_state_dict": model}, epoch=1)
        expected = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            model.weight.add_(1.0)  # training goes on while the write may still run
        manager.save({"model_state_dict": model}, epoch=2)
        assert manager.verify("latest").ok
        torch.testing.assert_close(manager.load(1)["model_state_dict"], expected, rtol=0, atol=0)
        torch.testing.assert_close(manager.load("latest")["model_state_dict"], model.state_dict(), rtol=0, atol=0)


def test_snapshot_is_exact_without_torch_foreach_copy_too(monkeypatch):
    monkeypatch.setattr("useg.checkpoint.overlap._foreach_copy", None)
    sources = {"w": torch.randn(LARGE).t(), "b": torch.arange(7), "step": torch.tensor(3.0)}
    snapshot = snapshot_state({"s": sources})
    for name, tensor in sources.items():
        assert torch.equal(snapshot["s"][name], tensor) and snapshot["s"][name].data_ptr() != tensor.data_ptr()


def test_a_tensor_met_twice_is_copied_once_and_stays_shared():
    weight = torch.randn(3, 4, requires_grad=True)
    snapshot = snapshot_state({"model": {"w": weight}, "tied": {"w": weight}, "list": [weight]})
    assert snapshot["model"]["w"] is snapshot["tied"]["w"] is snapshot["list"][0]
    assert torch.equal(snapshot["model"]["w"], weight.detach()) and not snapshot["model"]["w"].requires_grad


def test_an_interrupted_snapshot_gives_what_it_took_back_to_the_pool():
    class Interrupting:
        def state_dict(self):
            raise KeyboardInterrupt

    pool = StagingPool()
    weight = torch.randn(LARGE)
    try:
        snapshot_state({"w": weight, "later": Interrupting()}, pool)
    except KeyboardInterrupt:
        pass
    assert not pool._lent  # nothing is left lent out for ever
    again = snapshot_state({"w": weight}, pool)
    assert torch.equal(again["w"], weight)
