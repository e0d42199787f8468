"""Training one ticket: one step loop for every engine.

    schedule.py    iteration counts, learning rate, SWA points, seeded batch orders
    objective.py   the loss the loop calls (classification cross-entropy by default)
    lm.py          the causal language-model objective (next-token cross-entropy)
    replicas.py    what the loop trains: one module, or N stacked copies (torch.func + vmap)
    precision.py   fp32 | bf16 | fp16 (autocast; a gradient scaler for fp16)
    callbacks.py   side effects of the loop: re-masking, loss check, SWA, progress, checkpoints
    gradual.py     gradual pruning inside a run: the sparsity ramps and their re-masking callback
    checkpoint.py  the file a particle's training state is saved to and resumed from
    state.py       what callbacks see of the loop, and how it is checkpointed
    fit.py         the step loop itself
    stop.py        SIGINT/SIGTERM become a checkpoint and a clean stop

Nothing here knows about levels, methods or the run directory's layout.
"""

from swamp.train.fit import ParticleResult, TrainPlan, fit, make_optimizer, train_steps
from swamp.train.objective import CrossEntropy, Objective, Outputs
from swamp.train.replicas import SingleReplica, StackedReplicas
from swamp.train.schedule import BatchOrder, Schedule

__all__ = ["BatchOrder", "CrossEntropy", "Objective", "Outputs", "ParticleResult", "Schedule",
           "SingleReplica", "StackedReplicas", "TrainPlan", "fit", "make_optimizer",
           "train_steps"]
