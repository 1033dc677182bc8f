"""Audit logs people can keep: every step record and run summary as one JSON line.

`ConfSpecAuditHandler` is a LangChain callback handler. Attach it to a chain (or a model) and
it writes each `confspec_step` and `confspec_summary` event with the model run's id, its
parent run's id (the chain call that made it), tags and metadata. Lines are flushed as they
are written, so a crash loses at most the step in flight; files rotate by size; one lock
serialises the threads of a process (give each process its own file, or a directory).
`read_audit_log` loads the files back into typed entries.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Literal
from uuid import UUID, uuid4

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, ChatMessage, HumanMessage
from pydantic import BaseModel, Field, ValidationError

from langchain_confspec.chat_model.callbacks import STEP_EVENT, SUMMARY_EVENT
from langchain_confspec.records import RunSummary, StepRecord

logger = logging.getLogger(__name__)


class AuditEntry(BaseModel):
    """One line of an audit log: a step record or a run summary, and where it came from."""

    kind: Literal["step", "summary"]
    time: datetime
    run_id: str
    parent_run_id: str | None = None
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    step: StepRecord | None = None
    summary: RunSummary | None = None
    question: str | None = Field(default=None, description="On a summary: the text of the run's last human message.")


class RotatingJsonLines:
    """Appends JSON lines to a file, flushing each, and rotates it past `max_bytes`
    (`log.jsonl` becomes `log.jsonl.1`, the older `.1` becomes `.2`, up to `backups`)."""

    def __init__(self, path: Path, *, max_bytes: int | None = None, backups: int = 5, fsync: bool = False) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, default=str, ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            if self.max_bytes and self._file.tell() and self._file.tell() + len(line.encode()) > self.max_bytes:
                self._rotate()
            self._file.write(line)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.backups:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


@dataclass(frozen=True)
class _RunStart:
    """What a run's start tells its entries: the chain run that made it and what it was asked."""

    parent_run_id: UUID | None = None
    question: str | None = None


def _last_question(messages: list[BaseMessage]) -> str | None:
    asked = [m for m in messages if isinstance(m, HumanMessage) or (isinstance(m, ChatMessage) and m.role == "user")]
    return asked[-1].text if asked else None


class ConfSpecAuditHandler(BaseCallbackHandler):
    """Writes every ConfSpec step record and run summary that reaches it as JSON Lines.

    `path` is a file, or a directory (existing, or ending in `/`) in which each process
    writes `confspec-audit-<pid>.jsonl`. `max_bytes` turns on rotation, keeping `backups`
    older files. A failure to write is logged, never raised into the chain.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_bytes: int | None = None, backups: int = 5, fsync: bool = False
    ) -> None:
        target = Path(path)
        if target.is_dir() or str(path).endswith(("/", os.sep)):
            target = target / f"confspec-audit-{os.getpid()}.jsonl"
        self.path = target
        self._out = RotatingJsonLines(target, max_bytes=max_bytes, backups=backups, fsync=fsync)
        self._runs: dict[UUID, _RunStart] = {}
        self._runs_lock = threading.Lock()

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        with self._runs_lock:
            self._runs[run_id] = _RunStart(parent_run_id, _last_question(messages[0] if messages else []))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._runs_lock:
            self._runs.pop(run_id, None)

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if name not in (STEP_EVENT, SUMMARY_EVENT):
            return
        with self._runs_lock:
            start = (self._runs.pop(run_id, None) if name == SUMMARY_EVENT else self._runs.get(run_id)) or _RunStart()
        self._write(name, data, run_id, start, tags, metadata)

    def write_run(
        self, question: str, records: list[StepRecord], summary: RunSummary, *, metadata: dict[str, Any] | None = None
    ) -> UUID:
        """Log one answer made outside LangChain (the engine called directly, as the CLI does),
        in the same entries as a chat model's run; returns the run id it was logged under."""
        run_id = uuid4()
        start = _RunStart(None, question)
        for record in records:
            self._write(STEP_EVENT, record.model_dump(mode="json"), run_id, start, None, metadata)
        self._write(SUMMARY_EVENT, summary.model_dump(mode="json"), run_id, start, None, metadata)
        return run_id

    def _write(
        self, name: str, data: Any, run_id: UUID, start: _RunStart, tags: list[str] | None, metadata: dict[str, Any] | None
    ) -> None:
        entry = {
            "kind": "step" if name == STEP_EVENT else "summary",
            "time": datetime.now(timezone.utc).isoformat(),
            "run_id": str(run_id),
            "parent_run_id": str(start.parent_run_id) if start.parent_run_id else None,
            "tags": list(tags or []),
            "metadata": dict(metadata or {}),
            "step" if name == STEP_EVENT else "summary": data,
        }
        if name == SUMMARY_EVENT:
            entry["question"] = start.question
        try:
            self._out.write(entry)
        except OSError:
            logger.exception("could not write the audit log %s", self.path)

    def close(self) -> None:
        self._out.close()


def audit_files(path: str | os.PathLike[str]) -> list[Path]:
    """The log files at `path` (a file, or a directory of them), rotated ones oldest first."""
    root = Path(path)
    if root.is_dir():
        bases = sorted(p for p in root.iterdir() if p.name.endswith(".jsonl"))
    else:
        bases = [root]
    files: list[Path] = []
    for base in bases:
        rotated = sorted(base.parent.glob(base.name + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
        files += [p for p in rotated if p.suffix[1:].isdigit()] + ([base] if base.exists() else [])
    if not files:
        raise FileNotFoundError(f"No audit log at {root}.")
    return files


def read_audit_log(path: str | os.PathLike[str]) -> Iterator[AuditEntry]:
    """Every entry of the log at `path`, in write order; a torn last line (a crash mid-write)
    is skipped, any other unreadable line raises `ValueError` naming the file and line."""
    for file in audit_files(path):
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise ValueError(f"{file}: not an audit log: not UTF-8 text ({error.reason} at byte {error.start})") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield AuditEntry.model_validate_json(line)
            except ValidationError as error:
                if number == len(lines) and not line.endswith("}"):
                    logger.warning("skipping a torn last line in %s", file)
                    continue
                raise ValueError(
                    f"{file}:{number}: not an audit entry ({_problems(error)}); audit logs are the JSON lines "
                    "ConfSpecAuditHandler writes"
                ) from None


def _problems(error: ValidationError, shown: int = 3) -> str:
    """Pydantic's complaints in one short line: where and what, without its links."""
    problems = [
        (".".join(str(part) for part in e["loc"]) + ": " if e["loc"] else "") + e["msg"][0].lower() + e["msg"][1:]
        for e in error.errors(include_url=False)
    ]
    more = f" and {len(problems) - shown} more" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more
