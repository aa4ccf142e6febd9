"""Snapshots of large tensors go into reused staging memory: still independent, exact copies."""

import torch

from useg.checkpoint import CheckpointManager
from useg.checkpoint.state import snapshot_state

LARGE = (1024, 512)  # 2 MiB of float32: above the staging threshold


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


def test_staging_memory_is_reused_only_when_no_tensor_of_the_previous_snapshot_remains():
    weight = torch.randn(LARGE)
    first = snapshot_state({"w": weight})["w"]
    first_memory = first.data_ptr()
    row = first[0]  # a view keeps the first snapshot's memory in use
    del first
    second = snapshot_state({"w": weight + 1})["w"]
    assert second.data_ptr() != first_memory
    assert torch.equal(row, weight[0])
    second_memory = second.data_ptr()
    del second
    third = snapshot_state({"w": weight + 2})["w"]
    assert third.data_ptr() == second_memory  # nobody sees the second snapshot any more
    assert torch.equal(third, weight + 2) and torch.equal(row, weight[0])


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
