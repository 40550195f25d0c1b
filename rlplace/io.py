"""File IO shared by every command: output checks, all-or-nothing writes, bounded JSON reads,
and the one JSON document a ``--json`` command prints.

Output files follow the process umask (like ``open``), never the 0600 of a bare temp file.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import secrets
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from rlplace.errors import RlplaceError
from rlplace.limits import MAX_INPUT_BYTES


def check_output_paths(paths: Sequence[str | Path | None]) -> None:
    """Fail before any work if one of ``paths`` (None: not asked for) could not be written later.

    Each path must not be a folder, its folder must exist and be writable, and no two outputs
    of one command may share a path.
    """
    seen: dict[Path, str] = {}
    for path in paths:
        if path is None:
            continue
        target = Path(path)
        if str(path) == "" or target.is_dir():
            raise RlplaceError(f"cannot write {path}: it is a folder; give a file path")
        folder = target.resolve().parent
        if not folder.is_dir():
            raise RlplaceError(f"cannot write {path}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise RlplaceError(f"cannot write {path}: folder {folder} is not writable")
        if target.exists() and not os.access(target, os.W_OK):
            raise RlplaceError(f"cannot write {path}: the file exists and is not writable")
        key = target.resolve()
        if key in seen:
            raise RlplaceError(f"cannot write {path}: the same file is given for two outputs ({seen[key]} and {path})")
        seen[key] = str(path)


def check_output_path(path: str | Path | None) -> None:
    """`check_output_paths` for one path."""
    check_output_paths([path])


def write_outputs(files: Mapping[str | Path, bytes | str]) -> None:
    """Write every file of one command, or none: each goes to a temporary file in its own folder
    first, and only when all of them are written are they renamed into place. Should a rename
    fail midway, the files already renamed are put back as they were: old contents restored
    from a hard link kept until the end, files that did not exist removed (where the file
    system refuses hard links, a replaced file keeps its new contents)."""
    staged: list[tuple[str, Path]] = []
    replaced: list[tuple[Path, bool, str | None]] = []  # (target, it existed, hard link to its old contents)
    try:
        for path, data in files.items():
            target = Path(path)
            staged.append((_stage(target, data.encode("utf-8") if isinstance(data, str) else data), target))
        for temporary, target in staged:
            existed = target.is_file()
            backup = _link_old(target) if existed else None
            try:
                os.replace(temporary, target)
            except OSError:
                if backup is not None:
                    Path(backup).unlink(missing_ok=True)
                raise
            replaced.append((target, existed, backup))
    except OSError as exc:
        _roll_back(replaced)
        raise RlplaceError(f"cannot write {exc.filename or 'an output file'}: {exc.strerror}") from None
    finally:
        for temporary, _ in staged:
            Path(temporary).unlink(missing_ok=True)
        for _, _, backup in replaced:
            if backup is not None:
                Path(backup).unlink(missing_ok=True)


def _link_old(target: Path) -> str | None:
    """A hard link to ``target``'s current contents beside it, None where links are refused."""
    backup = target.with_name(f".{target.name}.old.{secrets.token_hex(6)}")
    try:
        os.link(target, backup)
    except OSError:
        return None
    return str(backup)


def _roll_back(replaced: Sequence[tuple[Path, bool, str | None]]) -> None:
    """Undo the renames of ``replaced``, last first (best effort: the error being raised is the
    one to report)."""
    for target, existed, backup in reversed(replaced):
        try:
            if not existed:
                target.unlink(missing_ok=True)
            elif backup is not None:
                os.replace(backup, target)
        except OSError:
            continue


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename.

    A crash or an error midway leaves either the old file or none, never half a file.
    """
    write_outputs({path: text})


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Like `write_text_atomic`, for bytes."""
    write_outputs({path: data})


def _stage(target: Path, data: bytes) -> str:
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise RlplaceError(f"cannot write {target}: folder {folder} does not exist")
    if target.is_dir():
        raise RlplaceError(f"cannot write {target}: it is a folder; give a file path")
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return temporary


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_bytes_limited(path: str | Path, what: str = "input file") -> bytes:
    """The bytes of ``path``, at most `MAX_INPUT_BYTES` of them (``/dev/zero`` and other endless
    or huge files are an `RlplaceError`, not an out-of-memory)."""
    source = Path(path)
    if source.is_dir():
        raise RlplaceError(f"{source}: is a folder, not a {what}")
    too_large = RlplaceError(f"{source}: larger than the limit MAX_INPUT_BYTES = {MAX_INPUT_BYTES:,} bytes of an {what}")
    try:
        with source.open("rb") as stream:
            if os.fstat(stream.fileno()).st_size > MAX_INPUT_BYTES:  # a regular file: refuse without reading it
                raise too_large
            data = stream.read(MAX_INPUT_BYTES + 1)  # devices and pipes (/dev/zero) report no size
    except FileNotFoundError:
        raise RlplaceError(f"{source}: no such file") from None
    except OSError as exc:
        raise RlplaceError(f"{source}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_INPUT_BYTES:
        raise too_large
    return data


def read_text_limited(path: str | Path, what: str = "input file") -> str:
    """`read_bytes_limited` decoded as UTF-8 (invalid UTF-8 is an `RlplaceError`)."""
    data = read_bytes_limited(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RlplaceError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing, huge, non-UTF-8 or too deeply nested file or bad JSON is an
    `RlplaceError` naming the file. ``NaN`` and ``Infinity`` literals are rejected."""
    source = Path(path)
    return parse_json(read_text_limited(source, "input file"), str(source))


def parse_json(text: str, where: str) -> Any:
    """`json.loads` with the errors of `read_json` (``where`` names the source in messages)."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise RlplaceError(f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except ValueError as exc:  # _reject_constant, or an integer of too many digits
        raise RlplaceError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:  # the decoder recurses per bracket: about 1,000 levels at most
        raise RlplaceError(f"{where}: JSON nested too deeply (more than Python's recursion limit of {sys.getrecursionlimit()} levels)") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def print_json(payload: Any) -> None:
    """Print ``payload`` as exactly one JSON document on stdout, or nothing and an `RlplaceError`
    when it holds a non-finite number (never ``Infinity`` or ``NaN``)."""
    write_stdout(dumps_finite(payload, "the result") + "\n")


def write_stdout(text: str) -> None:
    """Write the command's own output: to the stdout `reserved_stdout` kept aside, else to ``sys.stdout``."""
    stream = _reserved[-1] if _reserved else sys.stdout
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:  # a full disk or a closed terminal: say so in one line
        raise RlplaceError(f"cannot write to stdout ({exc.strerror})") from None


#: Streams `reserved_stdout` keeps for the command's own output (innermost last).
_reserved: list[TextIO] = []


@contextlib.contextmanager
def c_stdout_to_stderr() -> Iterator[int | None]:
    """Inside the block, whatever is written to file descriptor 1 goes to stderr. Yields a
    duplicate of the original fd 1 (None when there is none)."""
    with _c_stdout_onto(2) as saved:
        yield saved


@contextlib.contextmanager
def c_stdout_discarded() -> Iterator[None]:
    """Inside the block, whatever C libraries write to file descriptor 1 is dropped (METIS
    prints "***Cannot bisect a graph with 0 vertices!" while splitting small graphs many ways,
    and still returns its partition: nothing a user can act on)."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        with _c_stdout_onto(null):
            yield
    finally:
        os.close(null)


@contextlib.contextmanager
def _c_stdout_onto(target: int) -> Iterator[int | None]:
    """File descriptor 1 pointed at ``target`` inside the block; yields a duplicate of the
    original fd 1 (None when there is none)."""
    try:
        saved = os.dup(1)
    except OSError:
        yield None
        return
    _flush_c_stdio()
    os.dup2(target, 1)
    try:
        yield saved
    finally:
        _flush_c_stdio()  # C stdio buffers what it printed; flush it to the target before fd 1 comes back
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def reserved_stdout() -> Iterator[None]:
    """Keep stdout for the command's one document: inside the block, Python ``print`` calls and
    writes to fd 1 go to stderr, and only `write_stdout` reaches the real stdout."""
    original = sys.stdout
    with c_stdout_to_stderr() as saved:
        own: TextIO | None = None
        if saved is not None and _is_fd1(original):
            own = os.fdopen(os.dup(saved), "w", encoding="utf-8", closefd=True)
        _reserved.append(own or original)
        sys.stdout = sys.stderr
        try:
            yield
        finally:
            sys.stdout = original
            _reserved.pop()
            if own is not None:
                with contextlib.suppress(OSError):  # already reported by write_stdout
                    own.close()


def _is_fd1(stream: Any) -> bool:
    try:
        return stream.fileno() == 1
    except (AttributeError, OSError, ValueError):
        return False


def _flush_c_stdio() -> None:
    with contextlib.suppress(OSError, AttributeError):
        sys.stdout.flush()
        ctypes.CDLL(None).fflush(None)


def dumps_finite(payload: Any, what: str, **options: Any) -> str:
    """``json.dumps`` for an output file; a non-finite number is an `RlplaceError` naming ``what``."""
    try:
        return json.dumps(payload, allow_nan=False, **options)
    except ValueError:
        raise RlplaceError(f"{what} holds a non-finite number ({_first_non_finite(payload)}); nothing written") from None


def _first_non_finite(payload: Any, path: str = "") -> str:
    if isinstance(payload, float) and not math.isfinite(payload):
        return f"{path or 'value'} = {payload}"
    if isinstance(payload, Mapping):
        for key, value in payload.items():
            found = _first_non_finite(value, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(payload, list | tuple):
        for index, value in enumerate(payload):
            found = _first_non_finite(value, f"{path}[{index}]")
            if found:
                return found
    return ""
