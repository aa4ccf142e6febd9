"""torch.distributed set-up from the environment torchrun provides; a no-op in a single process."""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from useg.errors import UsegError


@dataclass(frozen=True)
class World:
    """Where this process stands: rank 0 of 1 unless launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return world


_GROUP_ENDS_WITH_PROCESS = False  # set by `end_group_with_process`


def close_world(world: World) -> None:
    """Destroy the process group once every rank is done with it, unless the process ends right after
    (`end_group_with_process`): then the exit releases it, and destroying it only risks a hang."""
    if world.enabled and dist.is_initialized() and not _GROUP_ENDS_WITH_PROCESS:
        dist.destroy_process_group()


def end_group_with_process() -> None:
    """This process ends with `end_worker_process` once it has trained: leave the process group to the exit.

    destroy_process_group is known to hang for good now and then (pytorch/pytorch#75097), and a CI run
    once hung for 300 s with both ranks past their last save, one still inside train(); os._exit
    closes the group's sockets without that call."""
    global _GROUP_ENDS_WITH_PROCESS
    _GROUP_ENDS_WITH_PROCESS = True


def launched_by_torchrun() -> bool:
    """True in a process torchrun started as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def end_worker_process(code: int) -> NoReturn:
    """End a torchrun worker with `code` once its work is done, without interpreter finalization.

    The exit hooks run as usual (they wait for a checkpoint write still in flight), and the output
    is flushed; what is skipped is the teardown of torch's native threads (gloo, autograd engine)
    racing the interpreter's, which can leave a finished rank hanging forever at exit
    (pytorch/pytorch#75097, #190489): a job that trained every epoch and never ends.
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said on it
            pass
    os._exit(code)


def barrier(world: World) -> None:
    if world.enabled:
        dist.barrier()


def gather_objects(world: World, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not world.enabled:
        return [value]
    values: list[Any] = [None] * world.world_size
    dist.all_gather_object(values, value)
    return values


def broadcast_object(world: World, value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not world.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(world: World, flag: bool) -> bool:
    """True on every rank when it is true on at least one (e.g. a SIGTERM reached one rank)."""
    if not world.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(world: World, value: float) -> float:
    """The mean of a float over ranks, identical on every rank."""
    if not world.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=collective_device())
    dist.all_reduce(tensor)
    return float(tensor.item() / world.world_size)


def on_main(world: World, action, share: bool = False):
    """Run `action` on rank 0 only; a user error there is raised on every rank.

    Returns its result on rank 0 (and on every rank with `share`), None elsewhere.
    """
    result, outcome = None, ("ok", None)
    if world.is_main:
        try:
            result = action()
        except UsegError as error:
            if not world.enabled:
                raise
            outcome = ("error", (type(error), str(error)))
    if not world.enabled:
        return result
    outcome = broadcast_object(world, outcome if not share or outcome[0] == "error" else ("ok", result))
    if outcome[0] == "error":
        kind, message = outcome[1]
        raise kind(message)
    return outcome[1] if share else result


def local_part(batch, world: World):
    """This rank's share of the global batch (the batch is the same definition at any world size)."""
    if not world.enabled:
        return batch
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name)[world.rank::world.world_size]
                                         for f in dataclasses.fields(batch)})


def check_replicas_agree(world: World, model: torch.nn.Module) -> None:
    """With several processes, every rank must hold the same weights, or the checkpoint is a lie."""
    if not world.enabled:
        return
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    fingerprints = gather_objects(world, digest.hexdigest())
    if len(set(fingerprints)) != 1:
        raise RuntimeError(f"model replicas diverged across ranks: {fingerprints}")


def wrap_distributed(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """The model in DistributedDataParallel when several processes train it; as it is otherwise."""
    if not world.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # The last decoder block's support conv is never used (its output is discarded), hence unused parameters.
    device_ids = [world.local_rank] if torch.cuda.is_available() else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
