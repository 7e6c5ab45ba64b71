"""Where a node's role sockets live, and the lock that keeps a second binder out.

Why (issue 20): the role sockets used to be Linux abstract names, which have no
file permissions, so another local user could bind a role's name first (before
the node started, or while a role restarted) and receive the front's requests,
or connect to a role. Now every endpoint is a filesystem socket in the node's
**run directory**, which only the node's user can enter; docs/PROTOCOL.md §1.

Rules:

* :func:`run_dir` is the one place that names, creates and checks the
  directory: ``{realpath(data)}/run/ipc`` when that is short enough for the
  socket paths (``sun_path`` holds 107 bytes), else ``/tmp/cc-{uid}-{h}``, ``h``
  the first 12 hex digits of sha256(realpath(data)). It depends on nothing but
  the data dir and the uid, so every role of a node (and a second node started
  on the same data dir by mistake) finds the same directory. It must be a real
  directory (not a symlink), owned by us, mode ``0700``; anything else raises
  :class:`UnsafeRunDir` and the role or ``concordance node`` refuses to start.
* A binder holds ``flock`` on ``{socket}.lock`` beside the socket for as long as
  the socket is bound. A second bind on a filesystem path would otherwise
  succeed and silently take the first binder's connections (libzmq unlinks the
  old file); with the lock it fails with ``EADDRINUSE`` instead. The lock dies
  with its process, so a crashed role never blocks its successor, which then
  replaces the stale socket file.
* libzmq (4.3.5) never unlinks a socket file itself, not on close nor on
  unbind: a closing binder unlinks it, while it still holds the lock, then
  releases the lock. The ``.lock`` files stay (empty, 0600): removing one
  while another process waits to lock it would let two binders hold "the" lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
from pathlib import Path
from typing import Final

from concordance.errors import IpcError

__all__ = ["BindLock", "UnsafeRunDir", "endpoint_path", "run_dir"]

MAX_DIR_BYTES: Final = 70  # + "/" + a 32-byte name stays inside sun_path's 107 bytes


class UnsafeRunDir(IpcError):
    """The run directory is not private to this user (owner, mode, or a symlink)."""


def run_dir(data_dir: str | os.PathLike[str]) -> Path:
    """The node's private run directory (created, then checked); see the module docstring.

    Raises:
        UnsafeRunDir: it is a symlink or not a directory, belongs to another user, or
            others may enter it (mode other than 0700).
    """
    real = os.path.realpath(data_dir)
    inside = os.path.join(real, "run", "ipc")
    if len(os.fsencode(inside)) <= MAX_DIR_BYTES:
        os.makedirs(os.path.dirname(inside), mode=0o700, exist_ok=True)
        path = inside
    else:
        digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:12]
        path = f"/tmp/cc-{os.getuid()}-{digest}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)  # the umask can only narrow it; the check below decides
    _check_private(path)
    return Path(path)


def _check_private(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeRunDir(f"run directory {path} is not a directory (a symlink?): refusing it")
    if st.st_uid != os.getuid():
        raise UnsafeRunDir(
            f"run directory {path} belongs to uid {st.st_uid}, not to us ({os.getuid()}):"
            " refusing it (remove it if it is stale)"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o700:
        raise UnsafeRunDir(
            f"run directory {path} has mode {mode:o}, not 700: refusing it (chmod 700 it"
            " after checking nobody else placed files there)"
        )


def endpoint_path(endpoint: str) -> str | None:
    """The socket file of an ``ipc://`` endpoint (None for anything else)."""
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        return endpoint.removeprefix("ipc://")
    return None


class BindLock:
    """An exclusive ``flock`` on ``{path}.lock``, held while ``path`` is bound."""

    def __init__(self, path: str) -> None:
        self.path = path
        lock = f"{path}.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise IpcError(f"cannot open the bind lock {lock}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                busy = IpcError(
                    f"cannot bind ipc://{path}: another process holds it (is this role"
                    " already running?)"
                )
                raise busy from _address_in_use()
            raise IpcError(f"cannot lock {lock}: {e.strerror}") from e
        self._fd: int | None = fd

    def release(self, unlink: bool = False) -> None:
        """Release the lock; with ``unlink``, first remove the (closed) socket's file."""
        if self._fd is None:
            return
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def _address_in_use() -> BaseException:
    import zmq  # here: this module is imported by processes that never open a socket

    return zmq.ZMQError(zmq.EADDRINUSE)
