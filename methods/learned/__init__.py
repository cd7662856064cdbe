"""Learned-sparsity methods, by name: penalised (re)training that decides what to remove.

* ``variational_dropout``: sparse variational dropout (Molchanov et al. 2017),
  :mod:`methods.learned.variational_dropout`;
* ``group_lasso``: group lasso over channels (Wen et al. 2016), :mod:`methods.learned.group_lasso`;
* ``l0_gates``: hard-concrete L0 gates on channels (Louizos et al. 2017), :mod:`methods.learned.l0_gates`;
* ``soft_sharing``: soft weight-sharing with a learned mixture prior (Ullrich et al. 2017),
  :mod:`methods.learned.soft_sharing`;
* ``bayesian``: Bayesian compression with the group normal-Jeffreys prior (Louizos, Ullrich and Welling 2017),
  :mod:`methods.learned.bayesian`;
* ``early_bird``: early-bird tickets (You et al. 2020), network slimming until the channel mask converges, then the
  ticket trained alone, :mod:`methods.learned.early_bird`;
* ``lassonet``: LassoNet input-feature selection (Lemhadri et al. 2021), the inputs a hierarchical lasso path keeps,
  for models whose first layer is a Linear over the flattened input, :mod:`methods.learned.lassonet`;
* ``ofa``: a once-for-all supernet (Cai et al. 2020) whose first channels of every group form working sub-networks,
  by progressive shrinking with distillation; it removes nothing (``elastic``), :mod:`methods.learned.ofa`.

A policy names one in its ``learned`` field; the evaluator trains the task's model with it once per run
(:meth:`envs.evaluator.Evaluator.learned_model`) and every candidate with that field starts from the result. A new
method is one module with a :class:`LearnedMethod` subclass plus one ``LEARNED.register`` line below;
``tests/test_learned_conformance.py`` checks every entry.
"""

from __future__ import annotations

import copy

from torch import nn

from core.registry import Registry
from methods.coupled_channels import silence_dead_channels
from methods.learned.base import Learned, LearnedMethod, LearnedSettings, Target
from methods.learned.bayesian import BayesianCompression
from methods.learned.early_bird import EarlyBird
from methods.learned.group_lasso import GroupLasso
from methods.learned.l0_gates import L0Gates
from methods.learned.lassonet import LassoNet
from methods.learned.ofa import OnceForAll
from methods.learned.soft_sharing import SoftWeightSharing
from methods.learned.variational_dropout import VariationalDropout

LEARNED: Registry[LearnedMethod] = Registry("learned method")
"""Learned-sparsity methods by name (a policy's ``learned``)."""
LEARNED.register("variational_dropout", VariationalDropout())
LEARNED.register("group_lasso", GroupLasso())
LEARNED.register("l0_gates", L0Gates())
LEARNED.register("soft_sharing", SoftWeightSharing())
LEARNED.register("bayesian", BayesianCompression())
LEARNED.register("early_bird", EarlyBird())
LEARNED.register("ofa", OnceForAll())
LEARNED.register("lassonet", LassoNet())


def check_learned(name: str) -> LearnedMethod:
    """The method called ``name``.

    Raises:
        core.registry.UnknownEntryError: (a ``ValueError``) naming the registered methods.
    """
    return LEARNED.get(name)


def learn(model: nn.Module, name: str, target: Target, settings: LearnedSettings) -> tuple[nn.Module, Learned]:
    """A copy of ``model`` trained with the method ``name``, its dead channels silenced (their input columns
    zeroed too, see :func:`methods.coupled_channels.silence_dead_channels`), in eval mode on the CPU."""
    method = check_learned(name)
    trained = copy.deepcopy(model)
    outcome = method.fit(trained, target, settings)
    silence_dead_channels(trained, target.groups)
    return trained.eval(), outcome


__all__ = ["LEARNED", "Learned", "LearnedMethod", "LearnedSettings", "Target", "check_learned", "learn"]
