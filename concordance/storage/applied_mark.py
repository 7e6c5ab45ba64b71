"""How far storage had applied, kept past a crash of its process (PROTOCOL.md §3.8).

Why: storage commits state.db when it acknowledges to consensus, not when it
publishes a write's result, so a crash of its process loses what it applied
since its last COMMIT (consensus resends it). A read on the node must still
see every write the node answered (API.md §3.1), whichever of its roles
crashed with storage -- the front that knew how far results had gone, or
consensus that knew the commit index, or the whole node. So before a batch's
results go out, storage writes its applied index to ``applied.mark`` beside
state.db (16 bytes, one ``pwrite``, no fsync: the page cache outlives the
process), and a storage that starts below its mark holds local reads until
consensus has resent that far (``StorageService`` raises their
``min_index``). A power cut may lose the mark, as it may lose state.db's
newest commits (``synchronous=NORMAL``): that node then recovers from its
log like any other.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Final

__all__ = ["AppliedMark"]

log = logging.getLogger(__name__)

_FORMAT: Final = struct.Struct("<QQ")  # index, index ^ _CHECK: a torn or foreign file reads 0
_CHECK: Final = 0x636F6E636F726461


class AppliedMark:
    """The index storage applied last, in a small file; 0 when missing or unreadable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Not O_APPEND (Linux's pwrite would append); wrapped in a file object so that
        # one dropped by a crashed service (a simulation) is closed when collected.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._file = open(fd, "r+b", buffering=0)  # noqa: SIM115 - held for the service's life
        self._failed = False

    def read(self) -> int:
        try:
            data = os.pread(self._file.fileno(), _FORMAT.size, 0)
        except OSError as e:
            log.warning("storage: cannot read %s (%s); taken as 0", self.path, e)
            return 0
        if len(data) != _FORMAT.size:
            return 0
        index, check = _FORMAT.unpack(data)
        return int(index) if check == index ^ _CHECK else 0

    def note(self, index: int) -> None:
        """Record ``index`` (before results up to it are published)."""
        try:
            os.pwrite(self._file.fileno(), _FORMAT.pack(index, index ^ _CHECK), 0)
        except OSError as e:  # a crash may then read older; said once, the rest goes on
            if not self._failed:
                log.error("storage: cannot write %s (%s)", self.path, e)
            self._failed = True
        else:
            self._failed = False

    def close(self) -> None:
        self._file.close()
