"""Writing an output file without following symbolic links.

An output path is checked when a job is submitted (``shared.jobspec.output_under``), but a link
can be planted between that check and the write. So the writer itself never follows one: the
folder must be the path it claims to be (no link on the way), the new content goes to a fresh
file beside the target (created with ``O_NOFOLLOW | O_EXCL``) and is renamed over it inside
that folder, which replaces a name and never writes through it. A reader sees the old file or
the whole new one; a crash leaves the old one in place.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Iterator


class LinkedOutput(OSError):
    """The output file, or a folder on its way, is a symbolic link."""


@contextlib.contextmanager
def replace_file(path: str | os.PathLike, *, binary: bool = False, encoding: str = "utf-8") -> Iterator[IO]:
    """A handle to write the new content of ``path``; it replaces the file when the block ends
    without an exception. Raises LinkedOutput when ``path`` is or passes through a link."""
    target = Path(os.path.abspath(path))
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    if os.path.realpath(folder) != str(folder):
        raise LinkedOutput(f"{target}: the folder passes through a symbolic link "
                           f"(it resolves to {os.path.realpath(folder)})")
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _refuse_link(dir_fd, target)
        partial = f"{target.name}.{secrets.token_hex(4)}.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
        try:
            with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding=encoding)) as handle:
                yield handle
            _refuse_link(dir_fd, target)
            os.rename(partial, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)


def _refuse_link(dir_fd: int, target: Path) -> None:
    try:
        info = os.stat(target.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise LinkedOutput(f"{target} is a symbolic link; refusing to write through it")
