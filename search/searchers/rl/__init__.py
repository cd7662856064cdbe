"""The reinforcement-learning searcher (AMC / HAQ), one folder as stable-baselines3 keeps one per algorithm.

* ``agent.py``: :class:`RLSearcher` and its :class:`RLOptions`, driving an SB3 agent through ask/tell;
* ``environment.py``: :class:`CompressEnv`, the gymnasium environment ``Compress-v0`` (registered on
  import of this package);
* ``budget_wall.py``: AMC's action wall and its cost model; ``calibration.py``: the cost model
  calibrated against an evaluator;
* ``rewards.py``: the terminal rewards, by name.
"""

from __future__ import annotations

import gymnasium

from search.searchers.rl.agent import RLOptions, RLSearcher
from search.searchers.rl.environment import CompressEnv, EnvSettings

ENV_ID = "Compress-v0"
"""The gymnasium id of :class:`CompressEnv`."""

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="search.searchers.rl.environment:CompressEnv")

__all__ = ["ENV_ID", "CompressEnv", "EnvSettings", "RLOptions", "RLSearcher"]
