"""Accuracy, negative log-likelihood and calibration of a model, or of an output ensemble.

For language-model data (labels (n, T), log-probabilities (n, T, V)) every measure is per
token: the accuracy of next-token predictions, the mean NLL (whose exp is the perplexity),
and the calibration of the next-token distributions.

Calibration (the SWAMP paper family reports NLL; SWA work by the same group reports NLL after
temperature scaling, Guo et al. 2017):

- `expected_calibration_error`: top-label ECE over `ECE_BINS` equal-width confidence bins;
- `fit_temperature`: the temperature T minimising the NLL of softmax(logits / T) on the
  *validation* split only; `calibrate` reports the test NLL at that T. A model is never
  calibrated on the data it is scored on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from swamp.data import Split, batches_of


@dataclass(frozen=True)
class Score:
    acc: float   # fraction correct, in [0, 1]
    nll: float   # mean negative log-likelihood (nats)
    ece: float = math.nan   # top-label expected calibration error, ECE_BINS bins, in [0, 1]

    @staticmethod
    def empty() -> "Score":
        return Score(math.nan, math.nan, math.nan)


@torch.no_grad()
def log_probs(model: nn.Module, split: Split, batch_size: int = 1024) -> torch.Tensor:
    if len(split) == 0:
        return torch.empty(0, 0)   # nothing to score (calibrate and ECE give NaN)
    was_training = model.training
    model.eval()
    # `batch_size` counts scored positions: a language-model block scores each of its tokens
    step = max(1, batch_size // max(1, split.y[0].numel())) if len(split) else batch_size
    out = torch.cat([torch.log_softmax(model(x).float(), dim=-1)
                     for x in batches_of(split.x, step)])    # slices, or streamed files
    model.train(was_training)
    return out


def score_log_probs(logp: torch.Tensor, y: torch.Tensor) -> Score:
    logp, y = per_position(logp, y)
    acc = (logp.argmax(1) == y).float().mean().item()
    nll = torch.nn.functional.nll_loss(logp, y).item()
    return Score(acc, nll, expected_calibration_error(logp, y))


def per_position(logp: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, C) and (n,) as they are; (n, T, V) and (n, T) as (n·T, V) and (n·T,): a language
    model is scored per token."""
    if logp.dim() > 2:
        return logp.reshape(-1, logp.shape[-1]), y.reshape(-1)
    return logp, y


def score_split(logp: torch.Tensor, split: Split) -> Score:
    """The score of `logp`, the log-probabilities of `split` (empty split: NaN)."""
    if len(split) == 0:
        return Score.empty()
    return score_log_probs(logp, split.y)


def evaluate(model: nn.Module, split: Split) -> Score:
    return score_split(log_probs(model, split), split)


def ensemble_log_probs(members: Sequence[torch.Tensor]) -> torch.Tensor:
    """Log of the mean predicted probability of the members (an output ensemble)."""
    stacked = torch.stack(list(members))
    return torch.logsumexp(stacked, dim=0) - math.log(len(members))


def evaluate_ensemble(member_log_probs: Sequence[torch.Tensor], split: Split) -> Score:
    if len(split) == 0:
        return Score.empty()
    return score_log_probs(ensemble_log_probs(member_log_probs), split.y)


# ---- calibration ------------------------------------------------------------------------------
ECE_BINS = 15          # equal-width confidence bins, as in Guo et al. (2017)
# The temperature is searched in [1/20, 20] on a log scale; a fitted T at a bound says the
# model is far off (or the split tiny), and is reported as it is.
T_BOUNDS = (0.05, 20.0)


def expected_calibration_error(logp: torch.Tensor, y: torch.Tensor,
                               bins: int = ECE_BINS) -> float:
    """Top-label ECE: sum over equal-width bins of the confidence (max probability) of
    |bin| / n * |accuracy in bin - mean confidence in bin|; bin b holds confidences in
    (b/bins, (b+1)/bins] (the first also 0). Hand-written: a dozen lines of torch, where a
    metrics library (torchmetrics) would be a dependency for one function."""
    if len(y) == 0:
        return math.nan
    logp, y = per_position(logp, y)
    conf, pred = logp.detach().float().exp().max(dim=1)
    # on the CPU in float64: every device, MPS included, gives the same sums
    correct = (pred == y).cpu().double()
    conf = conf.cpu().double()
    index = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, torch.ones_like(conf))
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, conf)
    return ((acc_sum - conf_sum).abs().sum() / len(y)).item()


def nll_at_temperature(logp: torch.Tensor, y: torch.Tensor, temperature: float) -> float:
    """Mean NLL of softmax(logits / T). `logp` may be log-probabilities (or an ensemble's
    log mean probability): log_softmax is unchanged by a per-row shift, so
    log_softmax(logp / T) = log_softmax(logits / T)."""
    scaled = torch.log_softmax(logp.double() / temperature, dim=1)
    return torch.nn.functional.nll_loss(scaled, y).item()


def fit_temperature(val_logp: torch.Tensor, val_y: torch.Tensor) -> float:
    """The temperature minimising validation NLL: a 1-D bounded search (scipy's bounded
    Brent method, deterministic) over log T in `T_BOUNDS`. NaN when there is no validation
    data: nothing else may stand in for it."""
    if len(val_y) == 0:
        return math.nan
    from scipy.optimize import minimize_scalar

    val_logp, val_y = per_position(val_logp, val_y)
    logp = val_logp.detach().double().cpu()
    y = val_y.detach().cpu()
    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(lambda u: nll_at_temperature(logp, y, math.exp(u)), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-5})
    best = math.exp(float(res.x))
    # the search ends near, not at, T = 1; never report a calibration worse on validation
    return best if nll_at_temperature(logp, y, best) <= nll_at_temperature(logp, y, 1.0) else 1.0


@dataclass(frozen=True)
class Calibration:
    temperature: float   # fitted on validation; NaN without a validation split
    nll: float           # test NLL at that temperature (NaN without one)


def calibrate(val_logp: torch.Tensor, val_y: torch.Tensor, test_logp: torch.Tensor,
              test_y: torch.Tensor) -> Calibration:
    """Temperature fitted on the validation split, test NLL at that temperature."""
    t = fit_temperature(val_logp, val_y)
    if math.isnan(t) or len(test_y) == 0:
        return Calibration(t, math.nan)
    test_logp, test_y = per_position(test_logp.detach().cpu(), test_y.detach().cpu())
    return Calibration(t, nll_at_temperature(test_logp, test_y, t))
# ---- generators (issue 16) -------------------------------------------------------------------
FEATURE_EPOCHS = 5        # the feature classifier's fixed recipe (SGD lr 0.1, batch 128)
MAX_SAMPLES = 1000        # per metric: MMD's kernel matrices are (n, n) per width


class GenerativeScores:
    """A generator's metrics against a split of the run's data: MMD^2 (the U-statistic, the
    run's kernel widths) between its samples and the split, and the Frechet distance between
    the features of real and generated samples under a fixed classifier (the penultimate
    layer of an MLP trained on the data's labels, as FID uses Inception's). The classifier is
    trained once per run, seeded, with a fixed recipe, so every level and method of a study
    is scored by the same features (it is retrained, identically, when a run resumes)."""

    def __init__(self, data, bandwidths, seed: int):
        import dataclasses

        from swamp.config import TrainSettings
        from swamp.core.seeds import derive_seed
        from swamp.models.small import MLP
        from swamp.train.fit import train_steps
        from swamp.train.schedule import Schedule

        self.bandwidths = tuple(bandwidths)
        self.seed = seed
        device = data.train.x.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(derive_seed(seed, "features"))
            clf = MLP(data.input_shape, data.num_classes).to(device)
        t = TrainSettings(epochs=FEATURE_EPOCHS, lr=0.1, batch_size=128, rewind_epochs=0.0)
        schedule = Schedule.build(dataclasses.replace(t), len(data.train), swa=False)
        train_steps(clf, None, data.train, schedule, t, start=0, stop=schedule.total,
                    order_seed=derive_seed(seed, "features-order"), label="feature classifier")
        clf.eval()
        self.classifier = clf
        self.accuracy = evaluate(clf, data.test).acc if len(data.test) else math.nan

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in list(self.classifier)[:-1]:     # the penultimate layer's output
            x = layer(x)
        return x.float()

    def score(self, model: nn.Module, split: Split) -> dict[str, float]:
        """{"mmd": MMD^2, "frechet": Frechet distance} of `model`'s samples vs `split`."""
        from swamp.generative import frechet_distance, mmd2, sample

        if len(split) < 2:
            return {"mmd": math.nan, "frechet": math.nan}
        real = split.x[:MAX_SAMPLES]
        fake = sample(model, len(real), real, seed=self.seed)
        mmd = float(mmd2(fake.flatten(1).float(), real.flatten(1).float(), self.bandwidths))
        fd = frechet_distance(self.features(real), self.features(fake))
        return {"mmd": mmd, "frechet": fd}


def samples_png(model: nn.Module, real: Split, title: str, seed: int = 0, n: int = 8) -> bytes:
    """A picture of a generator's samples next to real ones, as PNG bytes: a scatter plot
    for 2-D data, else the first `n` samples as curves (signals, flattened)."""
    import io

    # a Figure without pyplot: no global state, no GUI backend, a faster import
    from matplotlib.figure import Figure

    from swamp.generative import sample

    x = real.x[:MAX_SAMPLES]
    fake = sample(model, len(x), x, seed=seed).flatten(1).float().cpu()
    x = x.flatten(1).float().cpu()
    if x.shape[1] == 2:
        fig = Figure(figsize=(4, 4))
        ax = fig.subplots()
        ax.scatter(x[:, 0], x[:, 1], s=4, alpha=0.5, label="real (test)")
        ax.scatter(fake[:, 0], fake[:, 1], s=4, alpha=0.5, label="generated")
        ax.legend(fontsize=7, loc="upper right")
        ax.set_title(title, fontsize=9)
    else:
        fig = Figure(figsize=(1.4 * n, 3))
        axes = fig.subplots(2, n, sharex=True, sharey=True, squeeze=False)
        for r, (name, data) in enumerate((("real", x), ("generated", fake))):
            for c in range(min(n, len(data))):
                axes[r, c].plot(data[c].numpy(), lw=1)
                axes[r, c].set_xticks([])
                axes[r, c].set_yticks([])
            axes[r, 0].set_ylabel(name, fontsize=8)
        fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return buf.getvalue()
