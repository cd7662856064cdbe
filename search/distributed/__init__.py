"""Distributed sweeps on Ray Tune (``--searcher ray``), run by the driver in :mod:`search.drivers.ray_tune`.

Only :mod:`search.distributed.options` is imported outside a ``ray`` run; every other module here
imports Ray and is loaded only when the ``ray`` searcher runs. Nothing here imports the run's
configuration or runner: the driver passes what a sweep needs (:class:`sweep.SweepJob`).

- ``options``: the searcher's settings (``searcher_options``).
- ``session``: joins a cluster (``--ray-address``) or starts a loopback-only local one.
- ``latency``: an evaluator that times models on the device's node (an actor pinned by its custom resource).
- ``optuna_adapter``: the shared search space as an Optuna define-by-run function, and
  Ray's ``OptunaSearch`` with the budget as Optuna constraints.
- ``trial``: the trainable that runs one candidate (with ASHA fidelity rungs).
- ``recorder``: the Tune callback that writes ``trials.csv`` from the driver, once per trial.
- ``sweep``: builds or restores the ``Tuner`` and runs it.
"""
