"""Reading the files a user names and writing the files a user asks for, with every OS failure
turned into one :class:`SpecError` line that names the flag and the file.

Every reader of a user path (scenario, ledger, trace, config.json, profile, routing trace) goes
through :func:`read_user_text`; every writer (``--out``, ``--trace-out``, ``--requests-out``)
checks its target with :func:`check_output_path` before the work starts, and writes with
:func:`write_atomic`, so a bad target costs nothing and a failed write leaves no partial file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from sextant.errors import SpecError

#: libyaml's safe loader where PyYAML was built with it (the wheels are): the same objects as the
#: pure-Python one (every packaged file compared), about 8x faster; `predict train` reads nine.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: Largest user file read whole (a trace of ~10M requests is about 300 MB).
MAX_USER_FILE_BYTES = 1 << 30


def read_user_text(path: str | Path, *, field: str, kind: str, error: type[SpecError] = SpecError) -> str:
    """The UTF-8 text of the ``kind`` file (``"trace"``, ``"ledger"``...) the user named with
    ``field``. Missing, a directory, unreadable, not UTF-8 or larger than 1 GiB: one ``error``
    line."""
    p = Path(path)

    def fail(message: str) -> SpecError:
        return error(message, field=field)

    try:
        if p.is_dir():
            raise fail(f"{p} is a directory, not a {kind} file")
        if not p.exists():
            raise FileNotFoundError
        size = p.stat().st_size
        if size > MAX_USER_FILE_BYTES:
            raise fail(f"{p} is {size / 2**30:.1f} GiB; a {kind} file is read whole, at most 1 GiB")
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail(f"no such file {p}") from None
    except PermissionError:
        raise fail(f"cannot read {p}: permission denied") from None
    except UnicodeDecodeError:
        raise fail(f"{p} is not UTF-8 text (a {kind} file is)") from None
    except (OSError, ValueError) as err:
        raise fail(f"cannot read {str(p)[:200]}: {getattr(err, 'strerror', None) or err}") from None


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, through libyaml where available. Raises ``yaml.YAMLError`` (with
    its ``problem_mark``) on text that is not YAML."""
    return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 (a safe loader)


def write_trace_events(path: str | Path, events: list[dict], meta: dict) -> None:
    """Write a Chrome trace-event file (the JSON object format that ui.perfetto.dev and
    chrome://tracing open: ``traceEvents``, times in microseconds) for ``--trace-out``."""
    write_atomic(path, json.dumps({"traceEvents": events, "displayTimeUnit": "ms", "otherData": meta}),
                 field="--trace-out")


def check_output_path(path: str | Path, *, field: str) -> Path:
    """Check, before any work, that ``path`` can be written: not a directory, in a folder that
    exists and is writable. Returns the path; raises one :class:`SpecError` line otherwise."""
    try:
        return _check_output_path(Path(path), str(path), field)
    except (OSError, ValueError) as err:  # a name the OS refuses: too long, a NUL byte
        raise SpecError(f"cannot write {str(path)[:200]!r}: {getattr(err, 'strerror', None) or err}",
                        field=field) from None


def _check_output_path(p: Path, path: str, field: str) -> Path:
    if str(path) == "" or p.name in ("", ".", ".."):
        raise SpecError(f"{str(path)!r} is not a file name", field=field)
    if p.is_dir():
        raise SpecError(f"{p} is a directory; give a file name inside it", field=field)
    parent = p.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise SpecError(f"cannot write {p}: {ancestor} is a file, not a folder", field=field)
            break
    if not parent.is_dir():
        raise SpecError(f"cannot write {p}: folder {parent} does not exist", field=field)
    if p.exists() and not os.access(p, os.W_OK):
        raise SpecError(f"cannot write {p}: the file is read-only", field=field)
    try:  # the one test that holds for read-only mounts, /proc and root alike: make a file there
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{p.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise SpecError(f"cannot write {p}: folder {parent} is not writable ({err.strerror or err})",
                        field=field) from None
    return p


def write_atomic(path: str | Path, text: str, *, field: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, renamed into place,
    so that readers never see half a file and a failure leaves none behind."""
    p = check_output_path(path, field=field)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, p)
        tmp = None
    except OSError as err:
        raise SpecError(f"cannot write {p}: {err.strerror or err}", field=field) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
