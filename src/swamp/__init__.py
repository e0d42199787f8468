"""swamp: SWAMP (Sparse Weight Averaging with Multiple Particles) and the IMP family of
iterative magnitude pruning methods, on PyTorch.

    import swamp
    result = swamp.run(swamp.Settings())            # SWAMP on MNIST-1D
    result = swamp.run(settings, model=my_module, data=swamp.from_tensors(train, test))
    events = swamp.Events(); events.subscribe(print); swamp.run(settings, events=events)
    fast = swamp.sparsify(model, mask)              # pruned Linear layers on sparse kernels
"""

from swamp.config import Settings
from swamp.errors import SwampError

__version__ = "0.1.0"
__all__ = ["Settings", "SwampError", "Events", "run", "from_tensors", "load_exported", "sparsify",
           "__version__"]


def __getattr__(name: str):
    # Lazy imports keep `import swamp` (and `swamp --help`) fast.
    if name == "run":
        from swamp.loop import run

        return run
    if name == "Events":
        from swamp.events import Events

        return Events
    if name == "from_tensors":
        from swamp.data import from_tensors

        return from_tensors
    if name == "load_exported":
        from swamp.export import load_exported

        return load_exported
    if name == "sparsify":
        from swamp.sparse import sparsify

        return sparsify
    raise AttributeError(f"module 'swamp' has no attribute {name!r}")
