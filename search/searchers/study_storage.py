"""Where an Optuna searcher keeps its study: an append-only journal file in the run folder.

Optuna's ``JournalStorage`` rebuilds a study by replaying a log of its operations. The backend here
appends every batch of log entries to ``study.journal`` (one JSON object a line, the format of Optuna's
own ``JournalFileBackend``) in one write, and keeps the entries in memory, so reading them back costs
nothing. A write that has returned is in the operating system's hands: a killed search loses nothing it
finished (as with ``trials.csv``, a power cut may lose the last entries). A line cut short by a crash is
dropped when the file is opened again.

Studies are kept this way because the SQLite storage cost about 70 ms per trial in database round trips
(B4), against 1-2 ms here. Run folders written before hold ``study.db`` (SQLite) and keep using it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import BaseJournalBackend

from core.errors import UsageError

JOURNAL_FILE = "study.journal"
"""The study's journal in the run folder."""
LEGACY_FILE = "study.db"
"""The SQLite study of run folders written before the journal."""


class AppendOnlyJournal(BaseJournalBackend):
    """A journal file that one process appends to; entries are held in memory once read or written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._logs: list[dict[str, Any]] = _read(self.path) if self.path.exists() else []

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        return self._logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        lines = [json.dumps(log, separators=(",", ":")) for log in logs]
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        with open(self.path, "ab", buffering=0) as handle:
            written = 0
            while written < len(data):
                written += handle.write(data[written:])
        # What a resumed process will read back, so both replay the same values.
        self._logs.extend(json.loads(line) for line in lines)


def _read(path: Path) -> list[dict[str, Any]]:
    """The complete entries of a journal file; a torn last line is cut off the file."""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(len(complete))
    logs = []
    for number, line in enumerate(complete.splitlines(), start=1):
        try:
            log = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            log = None
        if not isinstance(log, dict):
            raise UsageError(f"line {number} of {path} is not a study journal entry; the file is damaged "
                             "(remove the run folder's study.journal and trials.csv to start the search over)")
        logs.append(log)
    return logs


def _sqlite_storage(path: Path) -> optuna.storages.RDBStorage:
    """SQLite storage in write-ahead-log mode (run folders written before the journal)."""

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"creator": connect})


def study_storage(run_dir: Path) -> BaseStorage:
    """The storage of the study in ``run_dir``: its journal, or the SQLite file of an older run folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    journal, legacy = run_dir / JOURNAL_FILE, run_dir / LEGACY_FILE
    if legacy.exists() and not journal.exists():
        return _sqlite_storage(legacy)
    return JournalStorage(AppendOnlyJournal(journal))
