"""Atomic output directories: everything is written to a hidden sibling and renamed into place at the end.

A run that fails (or is interrupted) leaves neither a half-written OUT nor a changed old one, and removes the
parent directories it had to create. Replacing an existing OUT (``--force``) is two renames — OUT aside, the
staging directory in — and a failure of the second puts the old OUT back. Whether OUT may be written is checked
before any work and again just before the renames, so a directory another process filled in the meantime is
never replaced without ``--force``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from vitrt.compiler.errors import OutputError, VitrtError


# Written into every directory vitrt writes atomically, listing what it wrote there: --force replaces only a
# directory that holds it, never one vitrt did not make (a home directory, the current directory, a folder of the
# user's own files), and a result file never overwrites what a vitrt output it reads holds.
OUTPUT_MARKER = ".vitrt-output"
MARKER_HEADER = "# written by vitrt: --force may replace this directory; the entries it wrote:"


def written_by_vitrt(directory: Path) -> bool:
    """``directory`` holds :data:`OUTPUT_MARKER`, or is a compile OUT of a vitrt older than the marker (its
    manifest records ``vitrt_version``)."""
    directory = Path(directory)
    if (directory / OUTPUT_MARKER).is_file():
        return True
    try:
        return "vitrt_version" in json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def entries_written(directory: Path) -> set[str] | None:
    """The top-level entries vitrt wrote into ``directory`` (its marker's list), or None where it holds no marker."""
    marker = Path(directory) / OUTPUT_MARKER
    if not marker.is_file():
        return None
    return {line for line in marker.read_text().splitlines() if line and not line.startswith("#")}


def marked_owner(target: Path, stop: Path | None = None) -> Path | None:
    """The deepest directory above ``target`` (``stop`` included, nothing above it) that holds a vitrt output
    marker, or None: that output's marker decides whether ``target`` is one of its entries."""
    def marked(directory: Path) -> bool:
        try:
            return entries_written(directory) is not None
        except OSError:  # a directory this process may not look into (the walk goes up to /) holds no marker of ours
            return False

    directory = target.parent
    while not marked(directory):
        if directory == stop or directory == directory.parent:
            return None
        directory = directory.parent
    return directory


def overwrites_entry(owner: Path, target: Path) -> bool:
    """``target`` is (or lies inside) an entry the marker of the vitrt output ``owner`` lists, or is the marker."""
    return target.relative_to(owner).parts[0] in entries_written(owner) | {OUTPUT_MARKER}


def check_not_written_entry(path: Path, flag: str) -> None:
    """A result file ``path`` never replaces what vitrt wrote into an output — an input's, another compile's or a
    nested report's (``lint-trt OUT/model.onnx --json OUT/manifest.json``, ``prune-plan -o B/manifest.json``)."""
    target = Path(path).resolve()
    owner = marked_owner(target)
    if owner is not None and overwrites_entry(owner, target):
        raise OutputError(f"{flag} '{path}' would overwrite {target.relative_to(owner)}, which vitrt wrote into "
                          f"'{owner}'; write the result elsewhere")


def check_not_link(out: Path, flag: str = "-o") -> None:
    """``out`` is not a symbolic link: replacing it would swap the link for a directory and leave what it points to
    as it was (and deleting it is refused by the file system)."""
    out = Path(out).absolute()
    if out.is_symlink():
        raise OutputError(f"{flag} '{out}' is a symbolic link; pass the directory it points to ('{out.resolve()}') or "
                          f"choose another {flag}")


def check_not_cwd(out: Path, flag: str = "-o") -> None:
    """``out`` is not the current directory or one above it: replacing or deleting it would pull the directory out
    from under the shell (and, with ``--force``, delete what it holds)."""
    out = Path(out).absolute()
    if out.exists() and Path.cwd().resolve().is_relative_to(out.resolve()):
        raise OutputError(f"{flag} '{out}' holds the current directory, which would be replaced; choose another "
                          f"{flag} (a new directory below this one)")


def start_over(out: Path, flag: str = "-o") -> None:
    """Delete ``out`` for ``--force`` — a directory the caller has checked it made — never the current directory or
    one above it."""
    check_not_link(out, flag)
    check_not_cwd(out, flag)
    shutil.rmtree(out)


def check_output_dir(out: Path, force: bool) -> None:
    """OUT can be written (:func:`check_writable_dir`) and replaced: it is missing or an empty directory (or, with
    ``force``, a directory vitrt wrote, :func:`written_by_vitrt`); never the current directory or one above it."""
    out = Path(out).absolute()
    check_writable_dir(out)
    check_not_link(out)
    check_not_cwd(out)
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise OutputError(f"output directory '{out}' is not empty; pass --force to replace it or choose another -o")
        if not written_by_vitrt(out):
            # no "vitrt <word>" in the message: the Python API keeps the flags of a quoted vitrt command
            raise OutputError(f"output directory '{out}' holds no {OUTPUT_MARKER}, the mark of a directory written by "
                              "vitrt, so --force does not replace it: choose another -o (if it was written by an older "
                              f"vitrt, touch {out / OUTPUT_MARKER})")


def nearest_existing(path: Path) -> Path:
    """``path`` (absolute) or its nearest ancestor that exists ("/" at the latest)."""
    path = Path(path).absolute()
    return next(p for p in (path, *path.parents) if p.exists())


def check_writable_dir(out: Path) -> None:
    """``out`` is a directory or can be made one: not a file, and its nearest existing ancestor is a directory this
    process may write into (so its missing parents can be created). What ``out`` holds is not looked at."""
    out = Path(out).absolute()
    ancestor = nearest_existing(out.parent)
    if not ancestor.is_dir():
        raise OutputError(f"cannot create the output's parent directory '{out.parent}': '{ancestor}' is not a "
                          "directory")
    if not out.exists() and not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create the output directory '{out}': '{ancestor}' is not writable")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output '{out}' exists and is not a directory; choose another -o")


def check_outside_out(flag: str, value, out: Path, *, shown=None) -> None:
    """The input ``flag`` names (a file or directory, ``shown`` as ``shown``; None: not given) does not lie inside
    ``out``, which ``--force`` replaces."""
    if value is None:
        return
    path = Path(value)
    if path.exists() and path.resolve().is_relative_to(Path(out).resolve()):
        raise OutputError(f"{flag} '{shown or value}' lies inside '{out}', which --force would replace; move it or "
                          "choose another -o")


def refuse_foreign_dir(out: Path, own: bool, *, command: str, what: str, flag: str = "-o") -> None:
    """A non-empty ``out`` that ``vitrt command`` did not make (``own`` false: it holds no ``what``) is refused
    whatever the flags: --force only ever starts over a directory the command made itself."""
    out = Path(out)
    if not own and out.is_dir() and any(out.iterdir()):
        raise OutputError(f"{flag} '{out}' is not empty and holds no {what} (it was not made by vitrt {command}); "
                          f"choose another {flag} (--force only starts over a directory made by vitrt {command})")


def check_output_file(path: Path, flag: str) -> None:
    """``path`` (a result file written at the end of a long run) can be written: its directory exists and is
    writable and the path is not a directory — checked before the run, not after it."""
    path = Path(path).absolute()
    if path.is_dir():
        raise OutputError(f"{flag} '{path}' is a directory; name a file")
    if not path.parent.is_dir():
        raise OutputError(f"{flag} '{path}': its directory '{path.parent}' does not exist; create it or choose another "
                          "path")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{flag} '{path}' cannot be written; choose another path")
    try:  # os.access answers yes to root on a read-only file system (or /proc): a real file answers truly
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{flag} '{path}' cannot be written ({exc.strerror}); choose another path") from None
    os.close(fd)
    os.unlink(probe)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_parents(parent: Path) -> list[Path]:
    """Create ``parent`` and its missing ancestors; return the ones created (deepest last)."""
    missing = []
    for directory in [parent, *parent.parents]:
        if directory.exists():
            break
        missing.append(directory)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_empty(missing)
        raise OutputError(f"cannot create the output's parent directory '{parent}': {exc.strerror}") from None
    return list(reversed(missing))


def _remove_empty(directories: list[Path]) -> None:
    for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()


def _swap_in(staging: Path, out: Path, force: bool) -> None:
    """Rename ``staging`` to ``out``, moving an existing ``out`` aside first and back if that fails."""
    check_output_dir(out, force)  # again: another process may have filled OUT while we worked
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:  # an interrupt between the two renames too: the old OUT goes back
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(out: Path, force: bool):
    """Yield a staging directory that becomes ``out`` only if the block finishes without an exception.

    Under ``torchrun`` only rank 0 writes ``out``; the other ranks get a scratch directory that is discarded."""
    from vitrt.compiler.distributed import is_writer

    out = Path(out).absolute()
    check_output_dir(out, force)
    if not is_writer():
        with tempfile.TemporaryDirectory(prefix="vitrt-rank-scratch-") as scratch:
            yield Path(scratch)
        return
    created = _make_parents(out.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    except OSError as exc:
        _remove_empty(created)
        raise OutputError(f"cannot write into '{out.parent}': {exc.strerror}") from None
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; OUT gets the user's usual permissions
    try:
        yield staging
        entries = sorted(p.name for p in staging.iterdir() if p.name != OUTPUT_MARKER)
        (staging / OUTPUT_MARKER).write_text("\n".join([MARKER_HEADER, *entries]) + "\n")
        _swap_in(staging, out, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise


def result_file(out: Path, suffix: str) -> Path:
    """The file with ``suffix`` of a ``-o OUT`` result (OUT.json, OUT.md, OUT.png): a suffix vitrt writes is
    replaced, any other dot stays part of the name (``-o results/dcvit_0.7`` writes dcvit_0.7.json, not
    dcvit_0.json; ``-o t.md`` writes t.md and t.json)."""
    out = Path(out)
    if out.suffix in (".md", ".json", ".png"):
        out = out.with_suffix("")
    return out.with_name(out.name + suffix)


def write_json(path: Path, data) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def artifact_in(out: Path, manifest: dict) -> Path:
    """The backend artifact of the compile output ``out`` (its ``manifest``); a one-line VitrtError when the compile
    built none (``--no-build``) or the file is gone."""
    if manifest.get("artifact") is None:
        command = (manifest.get("engine_build") or {}).get("command", "trtexec --onnx=model.onnx --stronglyTyped")
        raise VitrtError(f"'{out}' holds no engine: it was compiled with --no-build; build it on the GPU machine "
                         f"({command}) or compile again without --no-build")
    path = Path(out) / str(manifest["artifact"])
    if not path.is_file():
        raise VitrtError(f"'{path}' is missing: compile OUT again")
    return path
