"""Experiment tracking: an event subscriber that logs runs to TensorBoard, W&B or MLflow.

    events = swamp.Events()
    tracker = Tracker("tensorboard", "runs/tracking")   # or "wandb", "mlflow"
    events.subscribe(tracker)
    swamp.run(settings, events=events)
    tracker.close()

Each run of the bus (a compare has many) becomes one tracked run, named by its run directory
and configured with its settings. Logged, with the level as the step:

- `level/<metric>`: every number of the level's metrics.csv row (test/val accuracy and NLL,
  density, sparsity, particle and ensemble scores, training time);
- `layer_density/<tensor>`: the realised density of every prunable tensor;
- `level/particle_train_loss_mean`: the particles' mean training loss of the level;
- `engine`: how the level was trained (text: the engine's choice, e.g. "vectorised (4 ...)");
- `progress/level_<n>`, `progress/lr_level_<n>`: iterations reached by the level's first
  particle and its learning rate (step: iteration).

The trackers are optional extras; a missing one is one line naming it. Nothing here talks
to a server unless the tracker is configured to (TensorBoard writes event files; W&B obeys
WANDB_MODE, e.g. offline; MLflow writes to its tracking URI, by default a folder).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from swamp.errors import SwampError
from swamp.events import Event, LevelFinished, LevelStarted, ParticleProgress, RunFinished, \
    RunStarted
from swamp.store import RunStore, read_json

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # -> extra
PROGRESS_EVERY_S = 1.0      # progress scalars at most this often per level (and the last one)


def missing_extra(tracker: str) -> SwampError:
    return SwampError(f"--log {tracker} needs the extra: pip install 'swamp[{TRACKERS[tracker]}]'")


def check_tracker(tracker: str) -> None:
    """One line for an unknown tracker or one whose library is not installed."""
    if tracker not in TRACKERS:
        raise SwampError(f"unknown tracker '{tracker}'; use one of: {', '.join(TRACKERS)}")
    module = {"tensorboard": "torch.utils.tensorboard"}.get(tracker, tracker)
    try:
        __import__(module)
    except ImportError:   # torch.utils.tensorboard raises ImportError without tensorboard
        raise missing_extra(tracker) from None


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{k}": v for section, values in settings.items()
            for k, v in values.items()}


# ---- backends: one tracked run each ---------------------------------------------------
class _TensorBoard:
    def __init__(self, name: str, config: dict[str, Any], folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / name))
        self.writer.add_text("settings", "\n".join(f"    {k} = {v!r}"
                                                   for k, v in sorted(config.items())))

    def scalars(self, values: dict[str, float], step: int, axis: str) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def finish(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, name: str, config: dict[str, Any], folder: Path):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(project="swamp", name=name, dir=str(folder), config=config,
                              reinit="create_new")
        # W&B's own step only grows, and levels (0, 1, ...) follow iterations: each family
        # of metrics gets its own x axis instead.
        for prefix, axis in (("level", "level"), ("layer_density", "level"),
                             ("progress", "iteration")):
            self.run.define_metric(f"{prefix}/*", step_metric=axis)

    def scalars(self, values: dict[str, float], step: int, axis: str) -> None:
        self.run.log({**values, axis: step})

    def text(self, tag: str, text: str, step: int) -> None:
        self.run.summary[tag] = text

    def finish(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, name: str, config: dict[str, Any], folder: Path):
        import os

        import mlflow

        # MLFLOW_TRACKING_URI (a server, sqlite:///...) wins; else a local folder. MLflow 3
        # keeps its folder store in maintenance behind a documented opt-in, which a folder
        # given to swamp gives (it needs no database libraries, unlike sqlite).
        uri = os.environ.get("MLFLOW_TRACKING_URI") or folder.absolute().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name("swamp")
        experiment = (found.experiment_id if found is not None
                      else self.client.create_experiment("swamp"))
        self.run_id = self.client.create_run(experiment, run_name=name).info.run_id
        for key, value in config.items():
            self.client.log_param(self.run_id, key, str(value))

    def scalars(self, values: dict[str, float], step: int, axis: str) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key.replace("/", "."), value, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.client.set_tag(self.run_id, tag, text)

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)


_BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _MLflow}


class Tracker:
    """An event subscriber (`events.subscribe(tracker)`) logging every run to `tracker`
    under `folder`; `close()` finishes a run left open by an error."""

    def __init__(self, tracker: str, folder: str | Path):
        check_tracker(tracker)
        self.kind = tracker
        self.folder = Path(folder)
        self._backend: Any = None
        self._run_dir: Path | None = None
        self._level = 0
        self._last_progress = 0.0
        self._last_iteration = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.close()
            self._run_dir = event.run_dir
        elif isinstance(event, LevelStarted):
            self._level, self._last_iteration = event.level, event.last_iteration
            self._last_progress = 0.0
        elif isinstance(event, ParticleProgress):
            now = time.monotonic()
            if event.index == 0 and (now - self._last_progress >= PROGRESS_EVERY_S
                                     or event.iteration == self._last_iteration):
                self._last_progress = now
                values = {f"progress/level_{event.level}": float(event.iteration)}
                if event.lr is not None:
                    values[f"progress/lr_level_{event.level}"] = event.lr
                self._open().scalars(values, event.iteration, "iteration")
        elif isinstance(event, LevelFinished):
            self._level_finished(event.row)
        elif isinstance(event, RunFinished):
            self.close()

    def _open(self) -> Any:
        """The tracked run of the current run directory, started on its first use (the
        run's settings.json is written after RunStarted)."""
        if self._backend is None:
            if self._run_dir is None:
                raise SwampError("the tracker received events before a run started; "
                                 "subscribe it before calling run")
            store = RunStore(self._run_dir)
            config = _flat(read_json(store.settings_path)) if store.exists() else {}
            self._backend = _BACKENDS[self.kind](self._run_dir.name, config, self.folder)
        return self._backend

    def _level_finished(self, row: dict[str, Any]) -> None:
        level = int(row["level"])
        values = {f"level/{k}": float(v) for k, v in row.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "level"
                  and math.isfinite(float(v))}
        details: dict[str, Any] = {}
        if self._run_dir is not None:
            store = RunStore(self._run_dir)
            path = store.level_metrics_path(level)
            if path.is_file():
                details = store.read_record(path)
        for name, layer in details.get("layers", {}).items():
            values[f"layer_density/{name}"] = float(layer["density"])
        losses = [x for x in details.get("particle_train_loss", []) if x is not None]
        if losses:
            values["level/particle_train_loss_mean"] = sum(losses) / len(losses)
        backend = self._open()
        backend.scalars(values, level, "level")
        if "engine" in details:
            backend.text("engine", str(details["engine"]), level)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.finish()
            self._backend = None
