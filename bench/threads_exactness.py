"""python -m bench.threads_exactness: does the CPU thread count change what one training step computes?

One Adam step of UniverSeg, deterministic mode, the same weights and inputs, with 1 and with 2 torch
threads; prints how many weight tensors differ afterwards and by how much. Why a resume keeps the
checkpoint's thread count (CHECKPOINT_GUIDE.md, "Device, precision and exact resume on a GPU").
"""

from __future__ import annotations

import torch

from useg.training.losses import segmentation_loss
from useg.model import build_universeg


def one_step(threads: int, widths: tuple[int, ...], size: int, support: int = 4,
             batch: int = 4) -> dict[str, torch.Tensor]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_universeg(widths)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(batch, 1, size, size, generator=generator)
    images = torch.rand(batch, support, 1, size, size, generator=generator)
    loss = segmentation_loss(model(target, images, (images > 0.5).float()).float(), (target > 0.5).float(), "dice")
    loss.backward()
    optimizer.step()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def main() -> None:
    torch.use_deterministic_algorithms(True)
    for widths, size in (((8, 8), 32), ((32, 32, 32, 32), 64)):  # the tests' tiny model, the default one
        one, two = one_step(1, widths, size), one_step(2, widths, size)
        differ = [name for name in one if not torch.equal(one[name], two[name])]
        largest = max((one[name] - two[name]).abs().max().item() for name in one)
        print(f"widths {','.join(map(str, widths))}, {size} px: {len(differ)} of {len(one)} tensors differ after "
              f"one step with 1 vs 2 threads (largest difference {largest:.2g})")


if __name__ == "__main__":
    main()
