"""The audit log: one row per finished turn, append-only, in SQLite (WAL).

What a row holds: session id, turn id, when the turn started and ended (wall clock), the
client's address, the engine that answered, the status, the error codes of the turn (each
failed engine's, then the turn's own), and the stage timings. The transcript and the reply
text only with ``audit.text = true``. Never audio.

Durability: every row is its own committed transaction in WAL mode. A commit in WAL mode
is in the WAL file (the kernel's page cache) when ``commit()`` returns, so it survives the
process being killed with SIGKILL; that alone would need only ``synchronous=NORMAL``. We
use ``synchronous=FULL`` so that a row also survives the machine losing power (a kiosk
unplugged, a car switched off): one fsync per turn, in the writer thread, costs a turn
nothing a person can notice.

Writes never run on the event loop: :meth:`AuditLog.record` puts the row on a bounded
queue that one dedicated thread drains, and returns a future that is done once the row is
committed. The server waits for it (briefly) before sending ``turn_done``, so a turn whose
end a client saw is in the log even if the process is killed right after. A full queue
(the disk far behind) drops the row with an error in the log, rather than stalling
conversations.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from voice_agent.config import AuditConfig
from voice_agent.server.protocol import TurnDone

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  TEXT NOT NULL,
    turn_id     INTEGER NOT NULL,
    started_at  REAL NOT NULL,   -- Unix time, seconds
    ended_at    REAL NOT NULL,
    client      TEXT NOT NULL,   -- client address (no port)
    engine      TEXT NOT NULL,   -- LLM engine that answered ('' when none did)
    status      TEXT NOT NULL,   -- ok | empty | cancelled | error
    error_codes TEXT NOT NULL,   -- JSON list
    timings_ms  TEXT NOT NULL,   -- JSON object, TurnDone.timings_ms
    transcript  TEXT,            -- NULL unless audit.text
    reply_text  TEXT             -- NULL unless audit.text
);
CREATE INDEX IF NOT EXISTS turns_session ON turns (session_id, turn_id);
"""

PRUNE_EVERY = 100
"""Rows between two retention passes (``audit.max_rows``)."""


@dataclass(frozen=True)
class AuditRecord:
    session_id: str
    turn_id: int
    started_at: float
    ended_at: float
    client: str
    engine: str
    status: str
    error_codes: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    transcript: str = ""
    reply_text: str = ""


def turn_record(done: TurnDone, *, session_id: str, client: str, error_codes: list[str],
                ended_at: float) -> AuditRecord:
    """The row for a turn that ended at ``ended_at`` (Unix time). It started when its end
    of speech was decided: ``total_ms`` earlier."""
    total_s = float(done.timings_ms.get("total_ms", 0.0)) / 1000
    return AuditRecord(
        session_id=session_id, turn_id=done.turn_id, started_at=ended_at - total_s,
        ended_at=ended_at, client=client, engine=done.engine, status=done.status,
        error_codes=list(dict.fromkeys([*done.fallbacks.values(), *error_codes])),
        timings_ms=dict(done.timings_ms),
        transcript=done.transcript, reply_text=done.reply_text)


def audit_path(config: AuditConfig, environ: dict[str, str] | None = None) -> Path | None:
    """Where the log goes, or ``None`` for no audit log (see ``AuditConfig.path``)."""
    if not config.enabled:
        return None
    if config.path:
        return Path(config.path)
    env = os.environ if environ is None else environ
    # systemd's StateDirectory= may list several directories, colon-separated.
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) / "audit.sqlite3" if state else None


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (creating if needed) an audit database with the durability settings above."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    return db


class AuditLog:
    """``open()``, then ``record()`` from the event loop, then ``close()`` (flushes)."""

    def __init__(self, path: str | os.PathLike[str], *, text: bool = False,
                 max_rows: int = 100_000, queue_size: int = 1000,
                 commit_wait_s: float = 2.0) -> None:
        self.path = Path(path)
        self.commit_wait_s = commit_wait_s
        self.text = text
        self.max_rows = max_rows
        self.dropped = 0
        self._queue: queue.Queue[tuple[AuditRecord, Future[bool]] | None] = queue.Queue(
            maxsize=queue_size)
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: AuditConfig) -> AuditLog | None:
        path = audit_path(config)
        if path is None:
            return None
        return cls(path, text=config.text, max_rows=config.max_rows,
                   queue_size=config.queue_size, commit_wait_s=config.commit_wait_s)

    def open(self) -> AuditLog:
        """Create the file and its table now, so a bad path fails at start, not mid-turn."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = connect(self.path)
        self._thread = threading.Thread(target=self._write_forever, args=(db,),
                                        name="audit", daemon=True)
        self._thread.start()
        log.info("audit log: %s (text %s)", self.path, "on" if self.text else "off")
        return self

    def record(self, record: AuditRecord) -> Future[bool]:
        """Queue one finished turn; never blocks. The future says whether it was written."""
        written: Future[bool] = Future()
        try:
            self._queue.put_nowait((record, written))
        except queue.Full:
            self.dropped += 1
            log.error("audit log: queue full, turn %d of session %s NOT recorded (%d dropped)",
                      record.turn_id, record.session_id, self.dropped)
            written.set_result(False)
        return written

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the writer."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.error("audit log: writer stuck; %d turns may be lost", self._queue.qsize())
        self._thread.join(timeout_s)
        self._thread = None

    def _write_forever(self, db: sqlite3.Connection) -> None:
        written = 0
        try:
            while (item := self._queue.get()) is not None:
                record, done = item
                try:
                    self._insert(db, record)
                except (sqlite3.Error, TypeError, ValueError) as exc:  # disk full, bad value
                    # Say so and keep going: one bad row must not stop the log.
                    log.error("audit log: turn %d of session %s NOT recorded: %s",
                              record.turn_id, record.session_id, exc)
                    done.set_result(False)
                    continue
                done.set_result(True)
                written += 1
                if self.max_rows and written % min(PRUNE_EVERY, self.max_rows) == 0:
                    self._prune(db)
        finally:
            db.close()

    def _insert(self, db: sqlite3.Connection, r: AuditRecord) -> None:
        db.execute(
            "INSERT INTO turns (session_id, turn_id, started_at, ended_at, client, engine,"
            " status, error_codes, timings_ms, transcript, reply_text)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.session_id, r.turn_id, r.started_at, r.ended_at, r.client, r.engine, r.status,
             json.dumps(r.error_codes), json.dumps(r.timings_ms, sort_keys=True),
             r.transcript if self.text else None, r.reply_text if self.text else None),
        )

    def _prune(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("DELETE FROM turns WHERE id <= (SELECT MAX(id) FROM turns) - ?",
                       (self.max_rows,))
        except sqlite3.Error as exc:
            log.warning("audit log: pruning old rows failed: %s", exc)
