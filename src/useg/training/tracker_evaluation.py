"""`useg evaluate` on a run's own checkpoint, given to the run's tracked runs without changing their state:
`evaluation/<split>_dice` at the checkpoint's epoch, and the sweep pictures."""

from __future__ import annotations

import importlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from useg.run_folder import run_paths
from useg.training.tracker_stores import OUTCOMES, PACKAGES, mlflow_uri, wandb_mode, wandb_settings
from useg.training.trackers import STATE_NAME, metric_name, quiet_libraries, read_state, short_reason


@dataclass
class Evaluated:
    """What `useg evaluate` gives the run's tracked runs: anonymous numbers and pictures."""

    split: str  # test, val, or held_out (another folder): as evaluation_<split>.csv is named
    epoch: int  # the checkpoint's: the trackers' step
    metrics: dict[str, float]
    pictures: list[Path] = field(default_factory=list)  # the sweep pictures, anonymous (no file names)

    def picture_key(self, picture: Path) -> str:
        """`evaluation/test/support_sweep` for evaluation_support_sweep.png."""
        return f"evaluation/{self.split}/{picture.stem.removeprefix('evaluation_')}"


def evaluation_metrics(split: str, mean_dice: float | None, per_class_dice: dict[str, float | None]) -> dict[str, float]:
    """`evaluation/<split>_dice` (the mean over classes) and `evaluation/<split>_dice/<class>`; none missing or NaN."""
    key = f"evaluation/{split}_dice"
    values = {key: mean_dice, **{f"{key}/{name}": value for name, value in per_class_dice.items()}}
    return {metric_name(name): float(value) for name, value in values.items()
            if value is not None and math.isfinite(float(value))}


class NotLogged(Exception):
    """A tracked run the evaluation is not given, and why (one line)."""


def evaluate_to_tensorboard(paths, entry: dict, evaluated: Evaluated, run_name: str) -> None:
    """A new event file in the run's TensorBoard folder; no purge_step, so nothing the run logged is hidden."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(paths.logs / "tensorboard"))
    try:
        for key, value in evaluated.metrics.items():
            writer.add_scalar(key, value, evaluated.epoch)
        for picture in evaluated.pictures:
            with Image.open(picture) as image:
                writer.add_image(evaluated.picture_key(picture), np.asarray(image.convert("RGB")), evaluated.epoch,
                                 dataformats="HWC")
    finally:
        writer.close()


def evaluate_to_mlflow(paths, entry: dict, evaluated: Evaluated, run_name: str) -> None:
    """Metrics and artifacts logged into the tracked run as it is: only set_terminated changes a run's status,
    so a finished or killed run stays so (a running one goes on running)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = mlflow_uri(paths)
    if not os.environ.get("MLFLOW_TRACKING_URI") and not (paths.logs / "mlflow.db").is_file():
        raise NotLogged(f"no store at {paths.logs / 'mlflow.db'}; set MLFLOW_TRACKING_URI to the store the "
                        "training used")  # a new, empty store would be created here otherwise
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, evaluated.epoch) for key, value in evaluated.metrics.items()]
    client.log_batch(entry["run_id"], metrics=metrics)
    for picture in evaluated.pictures:
        client.log_artifact(entry["run_id"], str(picture), f"evaluation/{evaluated.split}/epoch_{evaluated.epoch}")


def evaluate_to_wandb(paths, entry: dict, evaluated: Evaluated, run_name: str) -> None:
    """The run id resumed (offline unless WANDB_MODE says otherwise) and finished again with the exit code its
    training ended with, so its state stays as it was. The values also go into the run's summary: W&B drops a
    step lower than one it already holds (a run resumed online); offline, each session counts from 0."""
    outcome = entry.get("outcome")
    if outcome not in OUTCOMES:
        raise NotLogged("its training did not record how it ended (still training, or killed); finishing it "
                        "again would change its state")
    import wandb

    run = wandb.init(dir=str(paths.logs), project=os.environ.get("WANDB_PROJECT") or "useg", name=run_name,
                     id=entry["run_id"], resume="allow", mode=wandb_mode(), settings=wandb_settings())
    try:
        run.summary.update(evaluated.metrics)
        pictures = {evaluated.picture_key(picture): wandb.Image(str(picture)) for picture in evaluated.pictures}
        if run.step <= evaluated.epoch:  # else the summary alone holds the values
            run.log({**evaluated.metrics, **pictures}, step=evaluated.epoch)
    finally:
        run.finish(exit_code=OUTCOMES[outcome][1])


EVALUATION_LOGGERS: dict[str, Callable[..., None]] = {
    "tensorboard": evaluate_to_tensorboard, "mlflow": evaluate_to_mlflow, "wandb": evaluate_to_wandb}


def log_evaluation(run_root: Path, trackers: list[str], evaluated: Evaluated, warn: Callable[[str], None]) -> list[str]:
    """Give `evaluated` to the run's tracked runs (RUN/logs/trackers.json) of `trackers`, those the checkpoint's
    run used; the names of those that took it. A tracker missing or failing is one warning and changes nothing else."""
    paths = run_paths(run_root)
    state = read_state(paths.logs / STATE_NAME)
    run_name = Path(paths.root).resolve().name
    logged = []
    for name in trackers:
        entry = state.get(name)
        if name not in EVALUATION_LOGGERS or entry is None or (name != "tensorboard" and not entry.get("run_id")):
            continue  # never opened (its package was missing), or the run folder lost its record
        try:
            importlib.import_module(PACKAGES[name])  # first: importing MLflow sets its loggers' levels
            with quiet_libraries():
                EVALUATION_LOGGERS[name](paths, entry, evaluated, run_name)
            logged.append(name)
        except ImportError:
            warn(f"the evaluation is not logged to {name}: it needs the {PACKAGES[name]} package "
                 f"(pip install 'useg[{name}]')")
        except NotLogged as reason:
            warn(f"the evaluation is not logged to {name}: {reason}")
        except Exception as error:  # an optional tracker failing: evaluate's own outputs stand
            warn(f"the evaluation is not logged to {name} ({short_reason(error)})")
    return logged
