"""The level loop of DESIGN.md section 2, for every method in the family.

Idempotent: each artefact is looked for before it is made, so running the same command again
resumes an interrupted run from the last finished level and redoes no finished work.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from swamp import finetune, world
from swamp.assemble import bn_augment, build_context, prepare_data, resolve_device
from swamp.config import UNHASHED, Settings
from swamp.core.averaging import recompute_batchnorm
from swamp.core.masks import Mask
from swamp.core.patterns import check_pattern, pattern_of
from swamp.core.seeds import derive_seed
from swamp.data import DataBundle, is_file_dataset
from swamp.engines import Engine, LevelTask, ParticleJob, engine_device, make_engine
from swamp.engines.base import TrainContext
from swamp.errors import SwampError
from swamp.events import (Events, LevelFinished, LevelStarted, ParticleProgress,
                           RunFinished, RunStarted)
from swamp.evaluation import (GenerativeScores, calibrate, ensemble_log_probs, evaluate,
                              evaluate_ensemble, log_probs, samples_png, score_split)
from swamp.generative import bandwidths_for, is_generative
from swamp.inputs import data_fingerprint, differences, model_fingerprints
from swamp.methods import get_method
from swamp.dense_cache import DenseSource, level0_depends, start_depends
from swamp.methods.slt import ScoreLevel
from swamp.oneshot import run_prunable
from swamp.store import (RunStore, atomic_write_bytes, is_temporary, load_state, read_json,
                         remove_temporary, save_state)
from swamp.train import Objective, ParticleResult, SingleReplica, TrainPlan, fit
from swamp.train import stop as stops
from swamp.train.checkpoint import CheckpointFile
from swamp.train.fit import optimizer_state_by_name

StateDict = dict[str, torch.Tensor]


@dataclass
class RunResult:
    """What a finished (or resumed-to-the-end) run hands back to Python callers."""

    run_dir: Path
    settings: Settings
    levels: list[dict[str, Any]] = field(default_factory=list)

    def solution(self, level: int, device: str = "cpu") -> StateDict:
        return load_state(RunStore(self.run_dir).solution_path(level), device)

    def mask(self, level: int) -> Mask:
        return Mask.load(RunStore(self.run_dir).mask_path(level))


def _comparable(settings_dict: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, sec in settings_dict.items() for k, v in sec.items()
            if k not in UNHASHED}


def open_run_dir(settings: Settings, run_dir: str | Path | None,
                 inputs: dict[str, str] | None = None) -> RunStore:
    """The run directory for these settings; refuses one made with different settings, or
    with another model or data passed through the Python API (`inputs`: their fingerprints)."""
    inputs = inputs or {}
    root = (Path(run_dir) if run_dir is not None
            else Path(settings.run.out) / settings.run_name(inputs))
    store = RunStore(root)
    if store.exists():
        # (checksums.json lost: `run` records it anew, with a warning, under the run's lock)
        read = read_json if store.checksums_missing() else store.read_record
        try:
            saved = read(store.settings_path)
        except SwampError as e:   # not recomputable: the settings are what the run is checked by
            if "checksum" in str(e):
                raise
            raise SwampError(f"{store.settings_path} is corrupted, so this run cannot be "
                             f"resumed; restore the file or use another `out`") from None
        mine = _comparable(settings.to_dict())
        try:
            theirs = _comparable(saved)
        except AttributeError:
            raise SwampError(f"{store.settings_path} is not a swamp settings file") from None
        # A setting added since the run was made (e.g. `slt_init`) is missing from its file;
        # the run used what the setting's default does (a new setting's default must keep
        # the old behaviour), so it counts as the default.
        for k, v in _comparable(Settings().to_dict()).items():
            theirs.setdefault(k, v)
        diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if diff:
            shown = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in diff[:3])
            raise SwampError(f"{root} holds a run with different settings ({shown}); "
                             f"use another `out` or the run's own settings")
        saved_inputs = read(store.inputs_path) if store.inputs_path.is_file() else {}
        changed = differences(saved_inputs, inputs)
        if changed:
            raise SwampError(f"{root} holds a run of another {' and '.join(changed)} than the "
                             f"one passed now (fingerprints differ); pass the run's own "
                             f"model and data, or use another run directory")
    elif root.exists() and any(p.name not in ("inputs.json", "run.lock", "checksums.json")
                               and not is_temporary(p) for p in root.iterdir()):
        # (inputs.json alone, or the temporary file of an interrupted write: a run that
        # stopped before its settings were written)
        raise SwampError(f"{root} exists and is not a swamp run directory; choose another `out`")
    return store


class LevelLoop:
    """Runs (or resumes) one pruning study: rewind point, then levels 0..L."""

    def __init__(self, settings: Settings, *, model: nn.Module | None = None,
                 data: DataBundle | None = None, run_dir: str | Path | None = None,
                 events: Events | None = None, engine: Engine | None = None,
                 objective: Objective | None = None, context: TrainContext | None = None):
        """`engine`, `objective` and `context` (the model, data and schedule on their
        device, as `assemble.build_context` makes them) may be given instead of built here:
        tests and callers that run many studies on one model and data share them. Nothing is
        written until `run`."""
        self.settings = settings.resolved()
        self.events = events or Events()   # no subscriber: the run is silent
        # under torchrun, `cuda` is this rank's GPU
        self.device = engine_device(self.settings.run.engine,
                                    resolve_device(self.settings.run.device))
        s = self.settings
        # Everything that can fail on bad input happens before the run directory is touched.
        # A model or data passed in is identified by fingerprints (inputs.py), built-in ones
        # by the settings.
        self.inputs = {**(model_fingerprints(model) if model is not None else {}),
                       **(data_fingerprint(data) if data is not None else {})}
        if data is None and is_file_dataset(s.data.dataset):
            # The user's files (data/files.py) name the run by their contents too, as data
            # passed in does: read (and checked) now, before the run directory is opened.
            data = context.data if context is not None else prepare_data(s)
            self.inputs.update(data_fingerprint(data))
        self.store = open_run_dir(s, run_dir, self.inputs)
        self.ctx = context or build_context(s, model=model, data=data, device=self.device,
                                            objective=objective)
        self.data, self.model, self.schedule = self.ctx.data, self.ctx.model, self.ctx.schedule
        # model sources (issue 12): a timm/torchvision/hf model's head stays dense by default
        self.prunable = run_prunable(self.model, s.model.model, s.prune.include,
                                     s.prune.exclude)
        check_pattern(pattern_of(s.prune), {n: self.model.get_parameter(n).shape
                                            for n in self.prunable})   # N:M, blocks fit?
        # Made when there is training to do (a finished run starts no processes).
        self.engine: Engine | None = engine
        self.plan = get_method(s.method.method).plan(s, len(self.data.train), self.device)
        # issue 12: gradual pruning's window and a transferred mask are checked now, before
        # anything is written (the mask is read again only by a run with no finished level)
        self._transfer: Mask | None = None
        self._notes: list[str] = []          # told when the run starts
        if s.prune.prune_schedule == "gradual":
            a, b, every = finetune.gradual_window(s, self.schedule)
            self._notes.append(f"gradual pruning: {s.prune.ramp} ramp from iteration {a} to "
                               f"{b}, every {every} iterations")
        if s.train.distill != "none":
            layers = getattr(self.ctx.objective, "layers", ())
            teacher = "level-0 solution" if s.train.teacher == "dense" else "starting weights"
            self._notes.append(f"distilling ({s.train.distill}"
                               + (f" on {', '.join(layers)}" if layers else "")
                               + f") from the {teacher}")
        if s.prune.mask_from is not None and not self.store.finished_levels():
            self._transfer, line = finetune.transferred_mask(
                s.prune.mask_from, self.model, self.prunable, self.device)
            self._notes.append(line)
        # slt (issue 16): scores are trained, the weights stay frozen (methods/slt.py)
        self.scores = self.plan.method.scores
        # a generator (issue 16) is scored by MMD and the Frechet distance, not accuracy
        self.generative = is_generative(self.model)
        self._generative_scores: GenerativeScores | None = None
        # Dense work shared with earlier runs beside this one (dense_cache.py); not with a
        # given objective or context, which the settings do not describe, nor when level 0
        # already prunes (gradual pruning, a transferred mask), a weights file is loaded, or
        # scores are trained instead of weights (slt).
        self.dense = (DenseSource(self.store.root, UNHASHED, s.to_dict(), self.events.info)
                      if s.run.share_dense and objective is None and context is None
                      and s.prune.prune_schedule == "levels" and s.prune.mask_from is None
                      and not s.model.weights and self.scores is None else None)

    def _engine(self, first_level: int = 0) -> Engine:
        """The engine (made once, when there is training to do: a finished run starts no
        processes); `auto` decides for the levels from `first_level` on."""
        if self.engine is None:
            s = self.settings
            recorded = (self.store.read_record(self.store.engine_path)
                        if self.store.engine_path.is_file() else None)
            particles = [len(self._jobs(lv)) for lv in range(first_level, self.plan.levels + 1)]
            name = s.run.engine
            if self.scores is not None and name == "auto":
                # slt: score particles train in this process (one particle: sequentially)
                name = "vectorised"
            self.engine = make_engine(name, self.ctx, s, info=self.events.info,
                                      recorded=recorded, particles=particles)
        return self.engine

    # ---- dense work shared with the runs beside this one (issue 14) ---------------------
    def _start_files(self, store: RunStore) -> list[Path]:
        files = [store.init_path, store.rewind_path]
        if self.settings.train.rewind_optimizer:
            files.append(store.rewind_optimizer_path)
        return files

    def _depends(self, kind: str) -> dict[str, Any]:
        make = start_depends if kind == "start" else level0_depends
        mine = make(self.settings.to_dict(), UNHASHED, self.inputs)
        return json.loads(json.dumps(mine))       # as the other runs' settings.json read

    def _reuse_start(self) -> None:
        """Copy the initial weights and rewind point of an identical run beside this one."""
        files = self._start_files(self.store)
        if self.dense is None or any(p.is_file() for p in files):
            return
        source = self.dense.find("start", self._depends("start"), self._start_files)
        if source is None:
            return
        for path, theirs in zip(files, self._start_files(source)):
            atomic_write_bytes(path, theirs.read_bytes())
        self.store.record_checksums(*files)
        self.events.info(f"reusing the initial weights and rewind point of {source.root} "
                         f"(same settings for them)")

    def _level0_files(self, store: RunStore, n: int) -> list[Path]:
        return [store.level_metrics_path(0), *(store.particle_path(0, i) for i in range(n))]

    def _reuse_level0(self, task: LevelTask) -> list[ParticleResult] | None:
        if self.dense is None or task.level != 0:
            return None
        n = len(task.jobs)
        source = self.dense.find("level0", self._depends("level0"),
                                 lambda store: self._level0_files(store, n))
        if source is None:
            return None
        details = source.read_record(source.level_metrics_path(0))
        averaged, losses = details.get("swa_snapshots"), details.get("particle_train_loss")
        if not (isinstance(averaged, list) and isinstance(losses, list)
                and len(averaged) == len(losses) == n):
            return None
        self.events.info(f"level 0: reusing the particles of {source.root} (same settings "
                         f"for level 0)")
        return [ParticleResult(load_state(source.particle_path(0, i), self.device),
                               int(averaged[i]), float(losses[i])) for i in range(n)]

    # ---- artefacts before level 0 -------------------------------------------------------
    def _init_state(self) -> StateDict:
        if self.store.init_path.is_file():
            return load_state(self.store.init_path, self.device)
        built = self.ctx.initial_state or self.model.state_dict()
        state = {k: v.detach().clone() for k, v in built.items()}
        save_state(self.store.init_path, state)
        self.store.record_checksums(self.store.init_path)
        return state

    def _check_layout(self, state: StateDict) -> None:
        """A resumed run's weights must fit the model built now: a run made by an earlier
        swamp version whose built-in model stored its tensors otherwise gets one line, not a
        shape error deep inside load_state_dict. (A finished run is only read: no check.)"""
        mine = self.model.state_dict()
        odd = sorted(k for k in mine.keys() | state.keys()
                     if k not in mine or k not in state or mine[k].shape != state[k].shape)
        if odd:
            k = odd[0]
            found = tuple(state[k].shape) if k in state else "missing"
            wanted = tuple(mine[k].shape) if k in mine else "no such tensor"
            raise SwampError(f"{self.store.init_path} does not fit the model built now ({k}: "
                             f"{found} in the file, {wanted} in the model), e.g. it was made by "
                             f"an earlier swamp version; use another `out`")

    def _rewind_state(self, init: StateDict) -> StateDict:
        """Weights at T0: the dense network trained T0 iterations (T0 = 0: init)."""
        if self.store.rewind_path.is_file():
            return load_state(self.store.rewind_path, self.device)
        keep_optimizer = self.settings.train.rewind_optimizer
        optimizer_state: StateDict = {}
        if self.schedule.rewind == 0 or self.scores is not None:   # slt trains no weights
            state = init
        else:
            self.events.info(f"training the dense network to the rewind point "
                              f"({self.schedule.rewind} iterations)")
            s = self.settings
            dense = dataclasses.replace(self.schedule, swa=False)   # its lr: no SWA phase
            plan = TrainPlan(self.data.train, dense, s.train, 0, self.schedule.rewind,
                             order_seeds=[derive_seed(s.run.seed, "rewind-order")],
                             augment_seeds=[derive_seed(s.run.seed, "rewind-augment")],
                             subsets=[None], labels=["rewind training"],
                             augment=self.data.augment, objective=self.ctx.objective,
                             rng_seed=derive_seed(s.run.seed, "rewind-rng"))
            replica = SingleReplica(self.model, init, self.ctx.objective.captures)
            path = self.store.rewind_checkpoint_path
            file = CheckpointFile(path, "rewind", s.run.checkpoint_every)
            resume = file.load(self.device)
            (result,), optimizer = fit(replica, plan, precision=s.train.precision,
                                       clip_grad_norm=s.train.clip_grad_norm, checkpoint=file,
                                       resume=resume)
            state = result.state
            if keep_optimizer:
                optimizer_state = optimizer_state_by_name(optimizer, replica)
        if keep_optimizer:
            save_state(self.store.rewind_optimizer_path, optimizer_state)
            self.store.record_checksums(self.store.rewind_optimizer_path)
        save_state(self.store.rewind_path, state)
        self.store.record_checksums(self.store.rewind_path)
        self.store.rewind_checkpoint_path.unlink(missing_ok=True)
        return state

    def _rewind_optimizer(self) -> StateDict | None:
        """The optimiser state at T0 every particle starts from (`rewind_optimizer`)."""
        if not self.settings.train.rewind_optimizer:
            return None
        return load_state(self.store.rewind_optimizer_path, self.device)

    # ---- one level ----------------------------------------------------------------------
    def _jobs(self, level: int) -> list[ParticleJob]:
        seed = self.settings.run.seed   # seeds (run seed, level, particle); colt: data subsets
        return [ParticleJob(level, i, derive_seed(seed, "order", level, i),
                            derive_seed(seed, "augment", level, i), subset)
                for i, subset in enumerate(self.plan.subsets(level))]

    def _refit(self, state: StateDict) -> StateDict:
        """`state` with BatchNorm statistics recomputed on the training data."""
        self.model.load_state_dict(state)
        recompute_batchnorm(self.model, self.data.train, augment=bn_augment(self.settings,
                                                                             self.data))
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _val_acc(self, state: StateDict) -> float:
        self.model.load_state_dict(state)
        return evaluate(self.model, self.data.val).acc

    def _train(self, task: LevelTask, ctx: TrainContext | None = None
               ) -> list[ParticleResult]:
        """The level's particles, in job order. Each group of particles trained together is
        checkpointed into the level's folder as it trains and when it finishes, so a stop
        loses at most `checkpoint_every` iterations and no finished particle."""
        reused = self._reuse_level0(task)
        if reused is not None:
            return reused
        ctx = ctx or self.ctx        # slt trains on a schedule of its own (ScoreLevel)
        return self._engine().train_particles(
            task, ctx,
            lambda index, it: self.events.emit(ParticleProgress(
                task.level, index, it, ctx.schedule.lr_at(it - 1) if it > 0 else None)))

    def _finish_particle(self, result: ParticleResult) -> StateDict:
        """A particle's solution, with BN statistics recomputed if it is an average."""
        return self._refit(result.state) if result.averaged > 1 else result.state

    def run_level(self, level: int, start: StateDict, mask: Mask
                  ) -> tuple[dict[str, Any], StateDict]:
        """Train, combine, evaluate and save one level; returns its row and solution."""
        s = self.settings
        scored = None
        gradual = None
        if self.scores is not None:   # slt: the particles are score networks, weights frozen
            scored = ScoreLevel(s, self.ctx, self._init_state(), self.prunable, level,
                                self.plan.target_density(level))
            task = LevelTask(level, scored.start, None, 0, self._jobs(level),
                             checkpoint_dir=self.store.level_dir(level),
                             checkpoint_every=s.run.checkpoint_every)
        else:
            gradual = finetune.gradual_step(s, self.schedule, self._target_density(level), mask)
            task = LevelTask(level, mask.apply_to_state_dict(start), mask,
                             self.schedule.rewind, self._jobs(level),
                             checkpoint_dir=self.store.level_dir(level),
                             checkpoint_every=s.run.checkpoint_every,
                             optimizer_state=self._rewind_optimizer(), gradual=gradual,
                             teacher_state=self._teacher(level))
        t0 = time.perf_counter()
        total = scored.ctx.schedule.total if scored is not None else self.schedule.total
        self.events.emit(LevelStarted(level, len(task.jobs), task.start_step, total))
        results = self._train(task, scored.ctx if scored is not None else None)
        record = self._engine().record
        if not self.store.engine_path.is_file() or \
                self.store.read_record(self.store.engine_path) != record:
            self.store.write_record(self.store.engine_path, record)
        if scored is not None:        # each particle's ticket (its own mask), BN recomputed
            particles = [self._refit(p) for p in scored.particles(results)]
        else:
            particles = [self._finish_particle(r) for r in results]
        if gradual is not None:      # the level's mask: made from its particles' weights
            mask = finetune.gradual_level_mask(particles, mask, gradual)

        members = self.plan.members(len(particles))
        if self.generative:               # a generator (issue 16): MMD, Frechet, samples
            return self._generative_level(level, mask, particles, members, results, scored, t0)
        # Evaluate every particle and the output ensemble of the level's members (colt: not
        # its ticket particle); validation scores feed selections, test scores only reports.
        test_lp, val_lp, particle_scores, particle_val = [], [], [], []
        for state in particles:
            self.model.load_state_dict(state)
            test_lp.append(log_probs(self.model, self.data.test))
            particle_scores.append(score_split(test_lp[-1], self.data.test))
            val_lp.append(log_probs(self.model, self.data.val))
            particle_val.append(score_split(val_lp[-1], self.data.val).acc)
        ensemble = evaluate_ensemble([test_lp[i] for i in members], self.data.test)
        # calibration (evaluation.py): temperature fitted on validation only, test NLL at it
        ensemble_cal = calibrate(ensemble_log_probs([val_lp[i] for i in members]),
                                 self.data.val.y,
                                 ensemble_log_probs([test_lp[i] for i in members]),
                                 self.data.test.y)

        # The level's solution (methods.py): by default the particles' average, masked, BN
        # recomputed; a greedy soup chosen on validation accuracy; colt's ticket particle.
        solution, combined, mask = self._solution(particles, particle_val, mask,
                                                  self._val_acc, scored, results)
        self.model.load_state_dict(solution)
        solution_val = log_probs(self.model, self.data.val)
        solution_test = log_probs(self.model, self.data.test)
        test = score_split(solution_test, self.data.test)
        val = score_split(solution_val, self.data.val)
        cal = calibrate(solution_val, self.data.val.y, solution_test, self.data.test.y)
        seconds = time.perf_counter() - t0

        accs = [particle_scores[i].acc for i in members]
        row = {
            "level": level,
            "density": mask.density,
            "sparsity": 1.0 - mask.density,
            "target_density": self._target_density(level),
            "test_acc": test.acc, "test_nll": test.nll,
            "val_acc": val.acc, "val_nll": val.nll,
            "particle_acc_mean": statistics.fmean(accs),
            "particle_acc_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
            "particle_nll_mean": statistics.fmean(particle_scores[i].nll for i in members),
            "ensemble_acc": ensemble.acc, "ensemble_nll": ensemble.nll,
            "particles": len(particles),
            "train_seconds": seconds,
            # calibration, after the columns older runs have (their records lack these)
            "test_ece": test.ece, "test_nll_ts": cal.nll, "temperature": cal.temperature,
            "ensemble_ece": ensemble.ece, "ensemble_nll_ts": ensemble_cal.nll,
        }
        if self.data.task == "lm":   # language models: accuracies are per token; perplexity
            row["test_ppl"] = math.exp(test.nll) if math.isfinite(test.nll) else math.nan
        details = {
            **row,
            "particle_test": [{"acc": p.acc, "nll": p.nll, "ece": p.ece}
                              for p in particle_scores],
            "ensemble_temperature": ensemble_cal.temperature,
            "particle_val_acc": particle_val,
            "combined": combined,
            "particle_train_loss": [r.train_loss for r in results],
            "swa_snapshots": [r.averaged for r in results],
            "engine": self._engine().description,
            "layers": {name: {"nnz": nnz, "numel": numel, "density": nnz / numel}
                       for name, (nnz, numel) in mask.per_layer().items()},
        }
        return self._write_level(level, row, details, mask, solution, particles, members)

    def _solution(self, particles: list[StateDict], particle_val: list[float], mask: Mask,
                  score_val: Any, scored: ScoreLevel | None, results: list[ParticleResult]
                  ) -> tuple[StateDict, dict[str, Any], Mask]:
        """The level's solution, how it was made, and the level's mask: the method plan's
        (average, soup, ticket particle) under the level's mask, or (slt) the frozen weights
        under the mask of the particles' combined scores, BatchNorm recomputed."""
        if scored is not None:
            ticket, combined = scored.combine(results)
            return self._refit(scored.solution(results, ticket)), combined, ticket
        solution, combined = self.plan.solution(particles, particle_val, mask, self._refit,
                                                score_val)
        return solution, combined, mask

    # ---- generators (issue 16) -----------------------------------------------------------
    def _generative_metrics(self) -> GenerativeScores:
        if self._generative_scores is None:
            widths = (getattr(self.ctx.objective, "bandwidths", None)
                      or bandwidths_for(self.data.train.x))
            self._generative_scores = GenerativeScores(
                self.data, widths, derive_seed(self.settings.run.seed, "generative-metrics"))
        return self._generative_scores

    def _generative_level(self, level: int, mask: Mask, particles: list[StateDict],
                          members: list[int], results: list[ParticleResult],
                          scored: ScoreLevel | None, t0: float
                          ) -> tuple[dict[str, Any], StateDict]:
        """A generator's level: the solution as for any model, scored by MMD^2 and the
        Frechet distance (`GenerativeScores`; lower is better) instead of accuracy (NaN in
        its columns), and a picture of samples per level."""
        metrics = self._generative_metrics()

        def scores(state: StateDict) -> tuple[dict[str, float], dict[str, float]]:
            self.model.load_state_dict(state)
            return (metrics.score(self.model, self.data.test),
                    metrics.score(self.model, self.data.val))

        per = [scores(p) for p in particles]
        particle_val = [-v["mmd"] for _, v in per]      # selections: higher is better
        solution, combined, mask = self._solution(particles, particle_val, mask,
                                                  lambda st: -scores(st)[1]["mmd"], scored,
                                                  results)
        test, val = scores(solution)
        seconds = time.perf_counter() - t0
        mmds = [per[i][0]["mmd"] for i in members]
        nan = float("nan")
        row = {
            "level": level, "density": mask.density, "sparsity": 1.0 - mask.density,
            "target_density": self.plan.target_density(level),
            **{k: nan for k in ("test_acc", "test_nll", "val_acc", "val_nll",
                                "particle_acc_mean", "particle_acc_std", "particle_nll_mean",
                                "ensemble_acc", "ensemble_nll")},
            "particles": len(particles), "train_seconds": seconds,
            "test_mmd": test["mmd"], "test_frechet": test["frechet"], "val_mmd": val["mmd"],
            "particle_mmd_mean": statistics.fmean(mmds),
            "particle_mmd_std": statistics.pstdev(mmds) if len(mmds) > 1 else 0.0,
        }
        details = {
            **row,
            "particle_test": [t for t, _ in per],
            "particle_val_mmd": [v["mmd"] for _, v in per],
            "combined": combined,
            "particle_train_loss": [r.train_loss for r in results],
            "swa_snapshots": [r.averaged for r in results],
            "engine": self._engine().description,
            "generative": {"bandwidths": list(metrics.bandwidths),
                           "feature_classifier_test_acc": metrics.accuracy},
            "layers": {name: {"nnz": nnz, "numel": numel, "density": nnz / numel}
                       for name, (nnz, numel) in mask.per_layer().items()},
        }
        self.store.level_dir(level).mkdir(parents=True, exist_ok=True)
        self.model.load_state_dict(solution)
        self.store.write_record(self.store.samples_path(level), samples_png(
            self.model, self.data.test, f"level {level}: density {100 * mask.density:.1f}%",
            seed=metrics.seed))
        return self._write_level(level, row, details, mask, solution, particles, members)

    def _write_level(self, level: int, row: dict[str, Any], details: dict[str, Any],
                     mask: Mask, solution: StateDict, particles: list[StateDict],
                     members: list[int]) -> tuple[dict[str, Any], StateDict]:
        """Save a level's mask, solution, particles, next mask and record."""
        s = self.settings
        # metrics.json is written last: it marks the level finished.
        self.store.level_dir(level).mkdir(parents=True, exist_ok=True)
        written = [self.store.mask_path(level), self.store.solution_path(level)]
        mask.save(written[0])
        save_state(written[1], solution)
        if s.run.save_particles:
            for i, state in enumerate(particles):
                written.append(self.store.particle_path(level, i))
                save_state(written[-1], state)
        if level < self.plan.levels:
            # Made now, while the particles are in memory (mask combinations vote with them).
            if s.prune.prune_schedule == "gradual":   # the next level prunes on from here
                following, record = mask, None
            else:
                following, record = self.plan.next_mask(
                    level, solution, [particles[i] for i in members], mask,
                    self._dense_solution)
            if record is not None:
                details["combined"]["next_mask"] = record
            written.append(self.store.next_mask_path(level))
            following.save(written[-1])
        self.store.record_checksums(*written)
        self.store.write_record(self.store.level_metrics_path(level), details)
        self.store.remove_checkpoints(level)
        self.store.write_metrics_csv()
        return row, solution

    def next_mask(self, level: int, solution: StateDict, mask: Mask) -> Mask:
        """The mask of level + 1, saved with the level; run directories that predate that
        file (methods that prune one state) have the plan prune the saved solution again."""
        path = self.store.next_mask_path(level)
        if path.is_file():
            self.store.verify_file(path, f"delete {self.store.level_dir(level)} to rerun it")
            return Mask.load(path, self.device)
        return self.plan.next_mask(level, solution, None, mask, self._dense_solution)[0]

    # ---- issue 12: teacher, transferred mask, gradual targets ----------------------------
    def _teacher(self, level: int) -> StateDict | None:
        """The frozen teacher of a distilling run: the level-0 solution (from level 1 on), or
        the weights the run starts from (`teacher` init)."""
        t = self.settings.train
        if t.distill == "none":
            return None
        if t.teacher == "init":
            return load_state(self.store.init_path, self.device)
        return self._dense_solution() if level > 0 else None

    def _base_density(self) -> float:
        """Density of level 0's mask: 1, or that of a transferred mask."""
        if self.settings.prune.mask_from is None:
            return 1.0
        if self._transfer is not None:
            return self._transfer.density
        return Mask.load(self.store.mask_path(0)).density

    def _target_density(self, level: int) -> float:
        return self._base_density() * self.plan.target_density(level)

    def _dense_solution(self) -> StateDict:
        return load_state(self.store.solution_path(0), self.device)

    # ---- the whole study ----------------------------------------------------------------
    def run(self) -> RunResult:
        s = self.settings
        self.events.emit(RunStarted(
            self.store.root, s.method.method, s.model.model, s.data.dataset, s.method.particles,
            s.prune.levels, s.prune.prune_fraction, str(self.device), s.run.engine))
        adapted = self.schedule.adapted_rewind(s.train)
        if adapted is not None:
            self.events.info(adapted)
        if self.store.posthoc_path.is_file():   # Lottery Pools / ensemble output
            raise SwampError(f"{self.store.root} holds post-hoc results, not a run; choose "
                             f"another run directory")
        self.store.lock()                  # one process per run directory
        try:
            with stops.stop_on_signals():  # SIGINT/SIGTERM: checkpoint, then stop cleanly
                return self._run()
        finally:
            self.store.unlock()

    def _run(self) -> RunResult:
        s = self.settings
        for note in self._notes:
            self.events.info(note)
        remove_temporary(self.store.root)          # left by writes a stop interrupted
        if self.store.checksums_missing():
            n = self.store.rebuild_checksums()
            self.events.info(f"[bold yellow]warning[/]: {self.store.checksums_path} was "
                             f"missing; recorded the checksums of the run's {n} files as they "
                             f"are now (damage done before now cannot be found)")
        if not self.store.exists():
            if self.inputs:
                self.store.write_record(self.store.inputs_path, self.inputs)
            # last: marks a run directory
            self.store.write_record(self.store.settings_path, s.to_dict())
        self.store.verify_checksums()   # a damaged file is found now, not levels later
        self._reuse_start()
        init = self._init_state()
        finished = self.store.finished_levels()
        if len(finished) <= self.plan.levels:   # work left: the weights must fit the model
            self._check_layout(init)
            # before the rewind segment: processes `auto` starts get ready meanwhile
            self._engine(len(finished))
        rewind = self._rewind_state(init)
        rows = self.store.level_metrics()
        if finished:
            self.store.write_metrics_csv()   # it may be missing or stale after a stop
            for level in finished:           # a stop between metrics.json and the clean-up
                self.store.remove_checkpoints(level)
            self.events.info(f"resuming {self.store.root}: levels 0..{finished[-1]} are "
                              f"finished")
            for row in rows:
                self.events.emit(LevelFinished(row))
            last = finished[-1]
            mask = Mask.load(self.store.mask_path(last), self.device)
            solution = load_state(self.store.solution_path(last), self.device)
            if last < self.plan.levels:
                mask = self.next_mask(last, solution, mask)
        else:
            mask = (self._transfer if self._transfer is not None
                    else Mask.ones(self.model, self.prunable))
            solution = None
        try:
            for level in range(len(finished), self.plan.levels + 1):
                start = self.plan.start_state(rewind, solution)   # sms: the previous solution
                row, solution = self.run_level(level, start, mask)
                rows.append(row)
                self.events.emit(LevelFinished(row))
                stops.raise_if_requested()
                if level < self.plan.levels:
                    mask = self.next_mask(level, solution, mask)
        finally:
            if self.engine is not None:      # stops distributed ranks and processes it started
                self.engine.close(rows)
        self.events.emit(RunFinished(self.store.root, rows))
        return RunResult(self.store.root, s, rows)


def run(settings: Settings | None = None, *, model: nn.Module | None = None,
        data: DataBundle | None = None, run_dir: str | Path | None = None,
        events: Events | None = None, objective: Objective | None = None,
        progress: bool | None = None) -> RunResult:
    """Run (or resume) a pruning study. `model` and `data` replace the built-in ones;
    `objective` replaces classification cross-entropy.

    `progress=True` prints plain progress lines to stderr (swamp.progress.TextProgress: a
    line per trained particle, a table row per level); the default (None) does so when
    stderr is a terminal, and stays silent in notebooks, pipes and tests; False never
    prints. Any other display subscribes to `events`.

    Under torchrun, ranks above 0 serve rank 0's levels (they never build a level loop or
    open the run directory) and return rank 0's level rows when it is done.
    """
    settings = settings or Settings()
    if model is not None and settings.model.model in (None, "conv1d"):
        settings = copy.deepcopy(settings)
        settings.model.model = "custom"
    if data is not None and settings.data.dataset == "mnist1d":
        settings = copy.deepcopy(settings)
        settings.data.dataset = data.name
    if world.launched() and world.env_rank() > 0:
        return serve(settings, model=model, data=data, objective=objective)
    if progress is None:
        import sys

        progress = sys.stderr.isatty()
    if progress:
        from swamp.progress import TextProgress

        events = events or Events()
        unsubscribe = events.subscribe(TextProgress())
        try:
            return LevelLoop(settings, model=model, data=data, run_dir=run_dir,
                             events=events, objective=objective).run()
        finally:
            unsubscribe()   # the caller's bus is left as it was given
    return LevelLoop(settings, model=model, data=data, run_dir=run_dir, events=events,
                     objective=objective).run()


def serve(settings: Settings, *, model: nn.Module | None = None,
          data: DataBundle | None = None, objective: Objective | None = None) -> RunResult:
    """A torchrun rank above 0: train the particles rank 0 sends until it says stop."""
    from swamp.engines import join_torchrun

    s = settings.resolved()
    device = engine_device(s.run.engine, resolve_device(s.run.device))
    ctx = build_context(s, model=model, data=data, device=device, objective=objective)
    engine = join_torchrun(ctx, s.run.threads)
    try:
        rows = engine.serve(ctx)
    finally:
        engine.close()          # leave the process group together with rank 0
    return RunResult(Path(s.run.out), s, list(rows))
