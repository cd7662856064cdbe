"""Tasks, devices and the evaluator: what a candidate is measured on.

The ``Compress-v0`` gymnasium environment lives with the RL searcher (``search/searchers/rl/``) and is
registered on ``import search.searchers.rl``.
"""
