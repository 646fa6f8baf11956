"""Confining client-supplied paths to the spool.

The management port and the HTTP API both turn a name sent by someone else into a file to
read. Every such name goes through :func:`resolve_in_spool`, which refuses it unless it
names a regular file inside the spool: no NUL byte, no absolute path, no ``..`` component,
no percent-encoded or backslash variant of those, and no symlink leading out of the spool.
"""

from __future__ import annotations

import os
import stat
from urllib.parse import unquote


class PathRefused(Exception):
    """A path that may not be served; the message says why (safe to show the client)."""


def _check_form(relpath: str) -> None:
    if "\x00" in relpath:
        raise PathRefused("NUL byte in path")
    if "\\" in relpath:
        raise PathRefused("backslash in path")
    if relpath.startswith("/") or relpath.startswith("~"):
        raise PathRefused("absolute path")
    parts = relpath.split("/")
    if any(part == ".." for part in parts):
        raise PathRefused("'..' in path")


def check_relpath(relpath: str) -> None:
    """Refuse (PathRefused) a spool-relative name that is unsafe as written or once decoded.

    Names are never percent-decoded when served, but a name whose decoded form would be
    unsafe (``%2e%2e/``, ``%2fetc``, ``%00``) is an attack, not a file name, and is refused.
    """
    if not relpath:
        raise PathRefused("empty path")
    _check_form(relpath)
    decoded = relpath
    for _ in range(3):  # double and triple encodings too
        again = unquote(decoded, errors="surrogateescape") if "%" in decoded else decoded
        if again == decoded:
            break
        decoded = again
        try:
            _check_form(decoded)
        except PathRefused as exc:
            raise PathRefused(f"percent-encoded {exc}")


def resolve_in_spool(spooldir: str, relpath: str, *, must_exist: bool = True) -> str:
    """The real path of ``relpath`` under ``spooldir``, or PathRefused.

    Symlinks are resolved and the result must still lie inside the spool's real path, so a
    link pointing out of the spool is refused while the spool itself may be a symlink.
    """
    check_relpath(relpath)
    root = os.path.realpath(spooldir)
    real = os.path.realpath(os.path.join(root, relpath))
    if os.path.commonpath([root, real]) != root or real == root:
        raise PathRefused("path leads out of the spool")
    if must_exist:
        try:
            info = os.stat(real)
        except FileNotFoundError:
            raise FileNotFoundError(relpath)
        if not stat.S_ISREG(info.st_mode):
            raise PathRefused("not a regular file")
    return real


def open_in_spool(spooldir: str, relpath: str):
    """Open ``relpath`` for binary reading after :func:`resolve_in_spool`.

    The resolved path is opened with O_NOFOLLOW, so a link swapped in after the check is
    refused by the kernel rather than followed.
    """
    real = resolve_in_spool(spooldir, relpath)
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == getattr(os, "ELOOP", 40):
            raise PathRefused("path leads out of the spool")
        raise
    return os.fdopen(fd, "rb")
