"""The three experiment trackers one run can log to: TensorBoard, MLflow and W&B, each opened by
useg.training.trackers with where it starts (Start) and what it is told about the run (About).

Each backend's package is imported inside it, so a run without trackers never imports them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from useg.files import json_text

if TYPE_CHECKING:  # annotations only: useg.training.trackers imports this module for OPENERS
    from useg.training.trackers import About, Start

OUTCOMES = {"finished": ("FINISHED", 0), "interrupted": ("KILLED", 1), "failed": ("FAILED", 1)}  # MLflow, W&B


class TensorBoardRun:
    """RUN/logs/tensorboard/ through torch's SummaryWriter."""

    run_id = None

    def __init__(self, paths, start: Start, about: About):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides the folder's events from this step on (a branch's left-behind
        # epochs, or an earlier run's after --overwrite); a new run starts at 1.
        self.writer = SummaryWriter(log_dir=str(paths.logs / "tensorboard"), purge_step=start.logged + 1)
        if start.logged == 0 and start.branch_epoch is None:
            self.writer.add_text("useg/config", f"```\n{json_text(about.params)}\n```", 0)
        if start.branch_epoch is not None:
            self.writer.add_text("useg/branch", f"resumed from epoch {start.branch_epoch}; epochs "
                                 f"{start.branch_epoch + 1}-{start.abandoned} of the earlier branch are hidden",
                                 start.branch_epoch)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()  # before the run folder records the epoch as logged

    def log_result(self, result: dict[str, Any], pictures: list[Path], best: Path | None) -> None:
        import numpy as np
        from PIL import Image

        step = result.get("best_epoch") or 0
        self.writer.add_text("useg/result", "\n\n".join(f"{key}: {value}" for key, value in result.items()), step)
        for picture in pictures:
            with Image.open(picture) as image:
                self.writer.add_image(picture.stem, np.asarray(image.convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self, outcome: str) -> None:
        self.writer.close()


class MlflowRun:
    """MLflow through its client: a local SQLite store in the run folder unless MLFLOW_TRACKING_URI is set."""

    def __init__(self, paths, start: Start, about: About):
        from mlflow.tracking import MlflowClient

        paths.logs.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=mlflow_uri(paths))
        self.run_id = start.run_id or self.new_run(paths, start, about)
        if start.run_id:
            self.client.update_run(self.run_id, status="RUNNING")

    def new_run(self, paths, start: Start, about: About) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "useg"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            local = None if os.environ.get("MLFLOW_TRACKING_URI") else (paths.logs / "mlflow_artifacts").resolve().as_uri()
            experiment_id = self.client.create_experiment(name, artifact_location=local)
        else:
            experiment_id = experiment.experiment_id
        tags = dict(about.tags)
        if start.branch_of:
            tags.update({"useg.branch_of": start.branch_of, "useg.branch_epoch": str(start.branch_epoch)})
        run_id = self.client.create_run(experiment_id, tags=tags, run_name=about.name).info.run_id
        self.client.log_batch(run_id, params=[param(key, value) for key, value in about.params.items()])
        if start.branch_of:
            self.client.set_tag(start.branch_of, "useg.continued_in", run_id)
            self.client.set_tag(start.branch_of, "useg.left_after_epoch", str(start.branch_epoch))
        return run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, epoch) for key, value in metrics.items()])

    def log_result(self, result: dict[str, Any], pictures: list[Path], best: Path | None) -> None:
        for key, value in result.items():
            self.client.set_tag(self.run_id, f"useg.{key}", str(value))
        for picture in pictures:
            self.client.log_artifact(self.run_id, str(picture))
        if best is not None:
            self.client.log_artifact(self.run_id, str(best), "checkpoints")

    def close(self, outcome: str) -> None:
        self.client.set_terminated(self.run_id, status=OUTCOMES[outcome][0])


def mlflow_uri(paths) -> str:
    """MLFLOW_TRACKING_URI when set, else the run folder's own SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(paths.logs / 'mlflow.db').resolve()}"


def param(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key, value if isinstance(value, str) else json.dumps(value))


class WandbRun:
    """W&B, offline into RUN/logs/wandb/ unless WANDB_MODE says otherwise; no console, code, git or
    machine details are recorded (they may name files)."""

    def __init__(self, paths, start: Start, about: About):
        import wandb

        config = None
        if start.run_id is None:
            config = {**about.params, **about.tags}
            if start.branch_of:
                config.update({"useg.branch_of": start.branch_of, "useg.branch_epoch": start.branch_epoch})
        paths.logs.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(dir=str(paths.logs), project=os.environ.get("WANDB_PROJECT") or "useg",
                              name=about.name, id=start.run_id, resume="allow" if start.run_id else None,
                              mode=wandb_mode(), config=config, settings=wandb_settings())
        self.run_id = self.run.id

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=epoch)

    def log_result(self, result: dict[str, Any], pictures: list[Path], best: Path | None) -> None:
        import wandb

        self.run.summary.update(result)
        if pictures:
            self.run.log({picture.stem: wandb.Image(str(picture)) for picture in pictures})
        if best is not None:
            artifact = wandb.Artifact(f"{self.run.id}-best", type="model")
            artifact.add_file(str(best))
            self.run.log_artifact(artifact)

    def close(self, outcome: str) -> None:
        # W&B's own process may still be writing when this returns; it finishes before ours exits.
        self.run.finish(exit_code=OUTCOMES[outcome][1])


def wandb_settings():
    """No console, code, git or machine details (they may name files), and no lines of W&B's own."""
    import wandb

    return wandb.Settings(console="off", save_code=False, disable_git=True, x_disable_meta=True,
                          x_disable_stats=True, x_disable_machine_info=True, x_save_requirements=False,
                          disable_job_creation=True, silent=True)


def wandb_mode() -> str:
    return os.environ.get("WANDB_MODE") or "offline"


OPENERS: dict[str, Callable[..., Any]] = {"tensorboard": TensorBoardRun, "mlflow": MlflowRun, "wandb": WandbRun}
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
