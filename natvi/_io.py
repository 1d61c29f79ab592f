"""Writing files so that nothing is lost: atomic replacement and output paths checked up front.

Every file natvi writes (models, checkpoints, predictions, benchmark tables and plots, demo files)
goes through :func:`atomic_write`: the bytes go to a temporary file in the target's own directory,
are flushed to disk (``fsync``), and only then renamed over the target (``os.replace``, atomic on
POSIX and Windows). A failure at any point — a full disk, a quota, a killed process — leaves the
previous file exactly as it was and raises :class:`WriteError`, which names the file and says what
failed.

Output paths are checked before any work starts (:func:`check_output_file`,
:func:`check_output_dir`): the parent must exist, be a directory and be writable, so that a run
is never lost to a typo in ``--out``.

Example:
    >>> from natvi._io import atomic_write_text
    >>> atomic_write_text("preds.csv", "a,b\\n1,2\\n")
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "WriteError",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_csv",
    "atomic_torch_save",
    "atomic_savefig",
    "check_output_file",
    "check_output_dir",
    "load_torch_file",
]


class WriteError(OSError):
    """Writing a file failed; the previous file at that path (if any) is untouched."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kw: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (text; ``open_kw`` such as ``newline=""`` passed on). If the
    body raises, or flushing / renaming fails, the temporary file is removed, ``path`` keeps its
    old content, and :class:`WriteError` names ``path`` and the cause.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', got {mode!r}.")
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise WriteError(f"{path}: cannot create a file in {directory} ({_reason(err)}).") from err
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode, **open_kw) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            # keep the permissions the user gave the old file (mkstemp makes 0600 files)
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(
                f"{path}: writing failed ({_reason(err)}); the previous file, if any, is intact."
            ) from err
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w", encoding=encoding, newline="") as fh:
        fh.write(text)


def atomic_write_csv(
    path: str | os.PathLike, rows: Sequence[dict], fieldnames: Sequence[str] | None = None
) -> None:
    """Write ``rows`` (dicts sharing keys) as a CSV table with a header row, atomically."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames or rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically: a failure leaves the previous file intact."""
    import torch

    with atomic_write(path, "wb") as fh:
        _reraise_as_oserror(lambda: torch.save(obj, fh))


def atomic_savefig(fig: Any, path: str | os.PathLike, **savefig_kw: Any) -> None:
    """``fig.savefig(path)`` for a matplotlib figure, atomically (format from the suffix)."""
    fmt = savefig_kw.pop("format", None) or Path(path).suffix.lstrip(".") or None
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format=fmt, **savefig_kw)


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check, before any work and without writing, that ``path`` can be written as a file.

    Raises ``ValueError`` (one line: the path, what is wrong, what to do) if ``path`` is a
    directory, or if its parent is missing, is not a directory, or is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name.")
    _check_parent(path, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {path} exists and is read-only; choose another path.")
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check, before any work, that ``path`` is a writable directory or can be created as one
    (its parent exists, is a directory and is writable); raises ``ValueError`` otherwise."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{what} {path} exists and is not a directory; choose another path.")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{what} {path} is not writable; choose another path.")
        return path
    _check_parent(path, what)
    return path


def _check_parent(path: Path, what: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        # the nearest existing ancestor tells whether a file blocks the way
        blocker = next((p for p in parent.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ValueError(f"{what} {path}: {blocker} is a file, not a directory.")
        raise ValueError(f"{what} {path}: directory {parent} does not exist; create it first.")
    if not parent.is_dir():
        raise ValueError(f"{what} {path}: {parent} is a file, not a directory.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: directory {parent} is not writable.")


def _reraise_as_oserror(write: Callable[[], object]) -> None:
    """torch.save reports a failed write as ``RuntimeError`` whose last line says what failed;
    make it an ``OSError``."""
    try:
        write()
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise OSError(lines[-1] if lines else type(err).__name__) from err


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_torch_file(path: str | os.PathLike, what: str, advice: str) -> dict:
    """``torch.load(path, weights_only=True)`` of a file natvi wrote, as a ``dict``.

    Any problem — a missing, empty, truncated, garbage or foreign file, or one that needs
    unpickling arbitrary objects — is a ``ValueError`` naming the file, saying what is wrong with
    it (``what`` names the kind of file expected) and what to do (``advice``).
    """
    import pickle
    import warnings
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such {what}; {advice}")
    with path.open("rb") as fh:
        head = fh.read(4)
    if not head:
        raise ValueError(f"{path}: the file is empty, not a {what}; {advice}")
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: the {what} is truncated (its archive ends early); {advice}")
    if not head.startswith((b"PK", b"\x80")):
        raise ValueError(f"{path}: not a {what}: it is not a file written by torch.save; {advice}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: not a {what}: it holds pickled Python objects, which natvi does not load "
            f"(only tensors and plain data: {_first_sentence(err)}); {advice}"
        ) from None
    except Exception as err:  # noqa: BLE001 - a damaged archive fails in many ways
        raise ValueError(
            f"{path}: the {what} is truncated or corrupt ({type(err).__name__}: "
            f"{_first_sentence(err)}); {advice}"
        ) from None
    if not isinstance(blob, dict):
        raise ValueError(
            f"{path}: not a {what}: it holds a {type(blob).__name__}, not natvi's dictionary; "
            f"{advice}"
        )
    return blob


def _first_sentence(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split(". ")[0].rstrip(".")
