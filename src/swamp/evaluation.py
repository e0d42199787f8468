"""Accuracy and negative log-likelihood of a model, or of an output ensemble of models."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from swamp.data import Split


@dataclass(frozen=True)
class Score:
    acc: float   # fraction correct, in [0, 1]
    nll: float   # mean negative log-likelihood (nats)

    @staticmethod
    def empty() -> "Score":
        return Score(math.nan, math.nan)


@torch.no_grad()
def log_probs(model: nn.Module, split: Split, batch_size: int = 1024) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([torch.log_softmax(model(split.x[i:i + batch_size]).float(), dim=1)
                     for i in range(0, len(split), batch_size)])
    model.train(was_training)
    return out


def score_log_probs(logp: torch.Tensor, y: torch.Tensor) -> Score:
    acc = (logp.argmax(1) == y).float().mean().item()
    nll = torch.nn.functional.nll_loss(logp, y).item()
    return Score(acc, nll)


def evaluate(model: nn.Module, split: Split) -> Score:
    if len(split) == 0:
        return Score.empty()
    return score_log_probs(log_probs(model, split), split.y)


def ensemble_log_probs(members: Sequence[torch.Tensor]) -> torch.Tensor:
    """Log of the mean predicted probability of the members (an output ensemble)."""
    stacked = torch.stack(list(members))
    return torch.logsumexp(stacked, dim=0) - math.log(len(members))


def evaluate_ensemble(member_log_probs: Sequence[torch.Tensor], split: Split) -> Score:
    if len(split) == 0:
        return Score.empty()
    return score_log_probs(ensemble_log_probs(member_log_probs), split.y)


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
