"""Distributed sweeps on Ray Tune (``--searcher ray``).

Only :mod:`search.distributed.options` is imported by the rest of the package; every other
module here imports Ray and is loaded only when the ``ray`` searcher runs.

- ``options``: the searcher's settings (``searcher_options``) and the searcher name.
- ``session``: joins a cluster (``--ray-address``) or starts a loopback-only local one.
- ``latency``: an evaluator that times models on the device's node (an actor pinned by its custom resource).
- ``optuna_adapter``: the shared search space as an Optuna define-by-run function, and
  Ray's ``OptunaSearch`` with the budget as Optuna constraints.
- ``trial``: the trainable that runs one candidate (with ASHA fidelity rungs).
- ``recorder``: the Tune callback that writes ``trials.csv`` from the driver, once per trial.
- ``sweep``: builds or restores the ``Tuner`` and runs it.
"""
