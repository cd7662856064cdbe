"""The shared vocabulary of the project: the types every layer speaks.

``core`` is the ground floor. ``methods/`` (compression), ``envs/`` (evaluation) and ``search/``
(searchers, drivers, outputs) all import it; it imports none of them, nor torch, optuna or gymnasium.
"""
