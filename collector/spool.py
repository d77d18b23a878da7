"""Bounded, append-only disk spool for documents the writer could not store in MongoDB.

Layout: ``<spool_dir>/<seq:016d>.bson`` segment files, each a plain concatenation of BSON
documents ``{"c": collection, "d": document}`` (BSON keeps datetimes, ints and ObjectIds exact;
the same encoding MongoDB stores, so nothing changes on the way through). Records are appended
to the newest segment; a segment is closed at ``segment_bytes``. ``sync()`` fsyncs the open
segment (the writer calls it once per spooled flush, not per record).

Replay (``drain``) reads segments oldest first and hands each collection's consecutive run of
documents to the writer in the order they were spooled; a segment file is deleted only after all
its documents were written. Every spooled document carries an ``_id`` (assigned before spooling),
and records with natural keys have unique indexes, so replaying a segment twice (crash during a
drain) inserts nothing twice.

Size limit: ``max_bytes`` over all segments. When an append would exceed it, ``policy`` decides:

- ``drop_oldest`` (default): delete the oldest closed segments until the new data fits; their
  record count is added to ``dropped`` (the newest data is usually the most valuable and the
  collector keeps running at full speed).
- ``reject``: refuse the append (``append`` returns False); the writer then keeps the documents
  in memory up to ``queue_max`` and counts anything beyond as dropped.

A torn last record (power loss / SIGKILL in the middle of a write) is detected on read and
skipped with a log line; everything before it is replayed.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from datetime import timezone
from pathlib import Path
from typing import Any, Awaitable, BinaryIO, Callable, Iterator

import bson
from bson.codec_options import CodecOptions
from bson.errors import InvalidBSON

from common.status import SpoolStatus

log = logging.getLogger(__name__)

CODEC: CodecOptions = CodecOptions(tz_aware=True, tzinfo=timezone.utc)
POLICIES = ("drop_oldest", "reject")


class Spool:
    def __init__(self, directory: str | os.PathLike, *, max_bytes: int = 512 * 2 ** 20,
                 segment_bytes: int = 4 * 2 ** 20, policy: str = "drop_oldest") -> None:
        if policy not in POLICIES:
            raise ValueError(f"spool policy must be one of {POLICIES}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max(1024, max_bytes // 4))
        self.policy = policy
        self.dropped = 0            # records lost to the size limit (drop_oldest)
        self.dropped_by: Counter[str] = Counter()   # the same, per collection
        self.rejected = 0           # records refused (reject policy)
        self.spooled = 0            # records ever appended
        self.replayed = 0           # records handed back to the writer
        # seq -> [bytes, records] for every segment on disk, oldest first.
        self._segments: dict[int, list[int]] = {}
        self._types: dict[int, Counter[str]] = {}   # seq -> records per collection
        self._file: BinaryIO | None = None
        self._file_seq: int | None = None
        self._head_offset = 0       # records of the oldest segment already replayed (this run)
        self._head_types: Counter[str] = Counter()  # the same, per collection
        for path in sorted(self.dir.glob("*.bson")):
            try:
                seq = int(path.stem)
            except ValueError:
                continue
            types = self._types[seq] = Counter(coll for coll, _ in self._read(seq))
            self._segments[seq] = [path.stat().st_size, sum(types.values())]
        if self._segments:
            log.warning("spool: %d records in %d segments left from a previous run; replaying "
                        "when MongoDB is reachable", self.records, len(self._segments))

    # ---- state -------------------------------------------------------------------------------
    @property
    def records(self) -> int:
        return sum(r for _, r in self._segments.values()) - self._head_offset

    @property
    def bytes(self) -> int:
        return sum(b for b, _ in self._segments.values())

    def __bool__(self) -> bool:
        return self.records > 0

    def status(self) -> SpoolStatus:
        return {"records": self.records, "bytes": self.bytes, "segments": len(self._segments),
                "max_bytes": self.max_bytes, "policy": self.policy, "dropped": self.dropped,
                "rejected": self.rejected, "spooled": self.spooled, "replayed": self.replayed}

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:016d}.bson"

    # ---- writing -----------------------------------------------------------------------------
    def append(self, collection: str, docs: list[dict[str, Any]]) -> bool:
        """Append documents (in order). False if refused by the ``reject`` policy."""
        if not docs:
            return True
        blobs = [bson.encode({"c": collection, "d": d}, codec_options=CODEC) for d in docs]
        size = sum(len(b) for b in blobs)
        if self.bytes + size > self.max_bytes and not self._make_room(size):
            self.rejected += len(docs)
            return False
        if self._file is None or self._file_seq is None or \
                self._segments[self._file_seq][0] >= self.segment_bytes:
            self._open_new()
        assert self._file is not None and self._file_seq is not None
        self._file.write(b"".join(blobs))
        seg = self._segments[self._file_seq]
        seg[0] += size
        seg[1] += len(docs)
        self._types[self._file_seq][collection] += len(docs)
        self.spooled += len(docs)
        return True

    def sync(self) -> None:
        """Make everything appended so far durable (flush + fsync of the open segment)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def _open_new(self) -> None:
        self._close_file()
        seq = (max(self._segments) + 1) if self._segments else 1
        self._file = open(self._path(seq), "ab")
        self._file_seq = seq
        self._segments[seq] = [0, 0]
        self._types[seq] = Counter()

    def _close_file(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None
            self._file_seq = None

    def _make_room(self, size: int) -> bool:
        if self.policy == "reject":
            return False
        while self._segments and self.bytes + size > self.max_bytes:
            oldest = min(self._segments)
            if oldest == self._file_seq:
                self._close_file()
            nbytes, nrecords = self._segments.pop(oldest)
            lost = nrecords - self._head_offset
            types = self._types.pop(oldest, Counter())
            types.subtract(self._head_types)
            self.dropped_by.update({c: n for c, n in types.items() if n > 0})
            self._head_offset = 0
            self._head_types = Counter()
            self._path(oldest).unlink(missing_ok=True)
            self.dropped += lost
            log.error("spool full (%d bytes): dropped oldest segment, %d records lost",
                      self.max_bytes, lost)
        return True

    def close(self) -> None:
        self._close_file()

    # ---- replay ------------------------------------------------------------------------------
    def _read(self, seq: int) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            with open(self._path(seq), "rb") as fh:
                for item in bson.decode_file_iter(fh, codec_options=CODEC):
                    yield item["c"], item["d"]
        except InvalidBSON as exc:
            log.error("spool segment %d: torn/corrupt record skipped: %r", seq, exc)
        except FileNotFoundError:
            return

    async def drain(self, write: Callable[[str, list[dict[str, Any]]], Awaitable[None]],
                    chunk: int = 2000) -> int:
        """Replay everything spooled, oldest first. ``write`` raising stops the drain where it
        failed (the rest stays spooled). Returns the number of records replayed."""
        self._close_file()      # never read a segment that is still being appended to
        done = 0
        while self._segments:
            seq = min(self._segments)
            run_coll = ""
            run: list[dict[str, Any]] = []
            index = 0
            for coll, doc in self._read(seq):
                index += 1
                if index <= self._head_offset:
                    continue
                if run and (coll != run_coll or len(run) >= chunk):
                    await write(run_coll, run)
                    self._head_offset += len(run)
                    self._head_types[run_coll] += len(run)
                    done += len(run)
                    self.replayed += len(run)
                    run = []
                run_coll = coll
                run.append(doc)
            if run:
                await write(run_coll, run)
                done += len(run)
                self.replayed += len(run)
            if seq in self._segments:       # not dropped meanwhile
                del self._segments[seq]
                self._types.pop(seq, None)
                self._path(seq).unlink(missing_ok=True)
            self._head_offset = 0
            self._head_types = Counter()
        return done
