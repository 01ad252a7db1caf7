"""Publishing a file or a directory whole: written under a hidden sibling name, flushed, then
renamed into place, so a reader (or a crash) sees the old content or the whole new one, never a
half-written one. The one way checkpoints, caches and the local results store publish files.

Temporaries start with '.' (pyarrow, pandas and the caches' own globs skip them) and carry a
random part, so concurrent writers never share one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _sync_directory(directory: Path) -> None:
    """The rename itself on disk (where the platform allows opening a directory)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def publish_file(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """`write(temporary)` then rename over `path`: the temporary is flushed to disk before it
    takes the name, and removed if writing fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    temporary = Path(name)
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _default_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask  # as `mkdir` would make it (mkdtemp makes 0700)


@contextlib.contextmanager
def publishing_dir(target: str | os.PathLike, done: Callable[[Path], bool] = Path.is_dir, replace: bool = False) -> Iterator[Path]:
    """`with publishing_dir(target) as staging:` fill `staging`, a hidden sibling of `target`;
    when the block ends it is renamed to `target` (removed if the block raises). A cache filled
    by two processes at once: when the rename fails because `done(target)` already holds (the
    other one got there first), its copy stands and this one is dropped. replace: an existing
    `target` is removed first (a pointer such as `best/` that moves to newer content)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, _default_mode())
        if replace and target.exists():
            shutil.rmtree(target)
        try:
            os.rename(staging, target)
        except OSError:
            if not done(target):
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _sync_directory(target.parent)
