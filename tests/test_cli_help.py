"""``search.py --help`` names every choice the registries offer, so a new one cannot hide from users."""

from __future__ import annotations

import re

import pytest

from envs.tasks import TASK_NAMES
from methods.learned import LEARNED
from methods.objective import METRICS
from search.cli import build_parser
from search.searchers import SEARCHERS


def _flag_help(flag: str) -> str:
    action = next(a for a in build_parser()._actions if flag in a.option_strings)
    return action.help or ""


@pytest.mark.parametrize(
    ("flag", "names"),
    [
        ("--task", TASK_NAMES),
        ("--learned", tuple(LEARNED.names())),
        ("--metric", tuple(METRICS.names())),
        ("--searcher", tuple(SEARCHERS.names())),
    ],
)
def test_help_names_every_registered_choice(flag: str, names: tuple[str, ...]) -> None:
    text = _flag_help(flag)
    missing = [name for name in names if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)]
    assert not missing, f"{flag} --help does not name {missing}"
