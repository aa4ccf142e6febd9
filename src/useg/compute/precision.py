"""Mixed precision: autocast around forward and loss, and the fp16 loss scaler.

The weights, the optimiser state and every checkpoint stay fp32 ("master weights"): autocast
only changes the dtype that ops compute in, never the parameters.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from useg.config import PRECISIONS  # their names (torch-free, for the command line); here what each computes in

DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.bfloat16, torch.float16), strict=True))


def default_precision(device: torch.device) -> str:
    """fp32 on the CPU (autocast there is slower than fp32, see BENCHMARKS.md); on CUDA bf16 where the GPU
    supports it (no loss scaling needed: bf16 has fp32's range), else fp16."""
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(precision: str, device: torch.device):
    """The context for forward and loss: nothing for fp32, torch.autocast to bf16 / fp16 otherwise."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16, whose small gradients would otherwise flush to zero; None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None) -> bool:
    """Backward and optimiser step; False when the scaler skipped the step (inf/NaN gradients,
    its signal to lower the scale, not a diverged run: the weights are left as they were)."""
    if scaler is None:
        loss.backward()
        optimizer.step()
        return True
    scaler.scale(loss).backward()
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale  # update() lowers the scale exactly when it skipped the step


def scaler_state(scaler: torch.amp.GradScaler | None) -> dict:
    """What a checkpoint stores as grad_scaler_state_dict: plain numbers ({} without a scaler)."""
    return {} if scaler is None else scaler.state_dict()


def restore_scaler(scaler: torch.amp.GradScaler | None, state: dict | None) -> None:
    """Put a saved scale back; a checkpoint from an fp32/bf16 run (or older) leaves a fresh scaler."""
    if scaler is not None and state:
        scaler.load_state_dict(state)


def cast_weights(weights: dict[str, torch.Tensor], precision: str) -> dict[str, torch.Tensor]:
    """Floating-point tensors of a state dict in `precision` (for `export --dtype`); others unchanged."""
    dtype = DTYPES[precision]
    return {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
