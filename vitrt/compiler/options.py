"""Typed options, defined once: frozen dataclasses whose fields carry their CLI flag and help text.

A config class is a frozen dataclass. Each field is either

* an option (:func:`option`): a value with help text and, optionally, ``flag`` ("--prune" or "-o/--out"),
  ``positional``, ``choices``, ``type``, ``metavar``; or
* a section (:func:`section`): a nested config class whose options become flags of the same command.

Every option has one *name* — the argparse ``dest`` and the keyword the Python API accepts — taken from its
flag (``--prune-plan`` → ``prune_plan``) or, without one, from the field name. Names are unique across a
config and its sections (checked when the parser is built). ``None`` always means "the default".

:func:`add_arguments` turns a config class into argparse arguments, :func:`from_args` builds the config back
from the parsed namespace and :func:`from_options` from keyword arguments (unknown names are refused with the
valid ones listed).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from vitrt.compiler.errors import OptionError, OutputError, VitrtError


def option(default, help: str, **meta):
    """A dataclass field with CLI metadata (``flag``, ``positional``, ``choices``, ``type``, ``metavar``, and
    ``writes`` for a result path written at the end of the run: "file" for the path itself, a suffix such as
    ".json" for an OUT prefix whose OUT.json, OUT.md, ... are written — :func:`from_args` checks it up front)."""
    return field(default=default, metadata={"help": help, **meta})


def section(config_cls):
    """A nested config: its options are flags of the enclosing command, its value an instance of ``config_cls``."""
    return field(default_factory=config_cls, metadata={"section": config_cls})


@dataclass(frozen=True)
class Leaf:
    """One option of a (possibly nested) config: where it lives and how it is spelled on the command line."""

    name: str  # argparse dest and Python API keyword
    path: tuple[str, ...]  # attribute path from the root config, e.g. ("prune", "fraction")
    field: dataclasses.Field
    annotation: typing.Any

    @property
    def flags(self) -> list[str]:
        flag = self.field.metadata.get("flag")
        return flag.split("/") if flag else ["--" + self.name.replace("_", "-")]

    @property
    def flag(self) -> str:
        """The long flag, for messages (``--prune-plan``)."""
        return self.flags[-1] if not self.field.metadata.get("positional") else self.name.upper()


def _name(f: dataclasses.Field) -> str:
    flag = f.metadata.get("flag")
    if not flag:
        return f.name
    return flag.split("/")[-1].lstrip("-").replace("-", "_")


def leaves(config_cls, _path: tuple[str, ...] = ()) -> list[Leaf]:
    """Every option of ``config_cls`` and its sections, in declaration order."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        nested = f.metadata.get("section")
        if nested is not None:
            out += leaves(nested, _path + (f.name,))
        elif "help" in f.metadata:
            out.append(Leaf(_name(f), _path + (f.name,), f, hints[f.name]))
    names = [leaf.name for leaf in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TypeError(f"{config_cls.__name__}: option name(s) {duplicates} are defined twice")
    return out


def leaf(config_cls, name: str) -> Leaf:
    for candidate in leaves(config_cls):
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def add_arguments(parser: argparse.ArgumentParser, config_cls, skip=(), helps=None) -> None:
    """Add one argparse argument per option of ``config_cls`` (booleans become store_true flags); ``helps``: option
    name -> the help a command that reuses the config words its own way (prune-plan's --force replaces a file)."""
    for leaf_ in leaves(config_cls):
        if leaf_.name in skip:
            continue
        meta = leaf_.field.metadata
        kwargs = {"help": (helps or {}).get(leaf_.name, meta["help"])}
        if leaf_.annotation is bool:
            parser.add_argument(*leaf_.flags, dest=leaf_.name, action="store_true", default=None, **kwargs)
            continue
        for key in ("choices", "type", "metavar", "nargs"):
            if key in meta:
                kwargs[key] = meta[key]
        if meta.get("positional"):
            parser.add_argument(leaf_.name, **kwargs)
        else:
            parser.add_argument(*leaf_.flags, dest=leaf_.name, default=None, **kwargs)


def build(config_cls, values: dict):
    """``config_cls`` with the options in ``values`` (name -> value) set; the others keep their defaults."""
    nested: dict = {}
    for leaf_ in leaves(config_cls):
        if leaf_.name in values:
            target = nested
            for part in leaf_.path[:-1]:
                target = target.setdefault(part, {})
            target[leaf_.path[-1]] = values[leaf_.name]
    return _construct(config_cls, nested)


def _construct(config_cls, values: dict):
    kwargs = {}
    for f in dataclasses.fields(config_cls):
        if f.name not in values:
            continue
        nested = f.metadata.get("section")
        kwargs[f.name] = _construct(nested, values[f.name]) if nested is not None else values[f.name]
    return config_cls(**kwargs)


def from_args(config_cls, args: argparse.Namespace, **overrides):
    """Build ``config_cls`` from parsed args; options left unset (None) keep the dataclass defaults. The result
    paths it names (options with ``writes``) are checked writable now, before the command's work: a bad path
    found when the results are written would lose the run."""
    values = {leaf_.name: getattr(args, leaf_.name) for leaf_ in leaves(config_cls)
              if getattr(args, leaf_.name, None) is not None}
    values.update(overrides)
    config = build(config_cls, values)
    check_result_paths(config)
    return config


def check_result_paths(config) -> None:
    """Every ``writes`` option of ``config`` that is set names files this process can create and that are not the
    command's inputs: an input file (by path or hard link), what vitrt wrote into an input directory or a vitrt
    output nested in it (``bench OUT --json OUT/manifest.json`` would replace the compile's manifest, ``--json
    OUT/compare/compare.md`` a report; ``OUT/bench.json`` is a new file, rewritten on a rerun) or, in a directory
    vitrt did not write, a file already there — and never what vitrt wrote into any output, an input or not
    (``lint-trt OUT/model.onnx --json OUT/manifest.json``, ``bench A --json B/manifest.json``): a one-line
    OutputError otherwise."""
    import os

    from vitrt.compiler.output import check_not_written_entry, check_output_file, result_file

    results, inputs = [], []
    for leaf_ in leaves(type(config)):
        writes, value = leaf_.field.metadata.get("writes"), get(config, leaf_)
        if writes and value is not None:
            path = Path(value)
            if writes != "file" and path.name in ("", ".."):  # ".", "/", "..": no name to put .json / .md after
                raise OutputError(f"{leaf_.flag} '{path}' names no file: it is the prefix of the result files "
                                  f"(OUT{writes}, OUT.md); choose e.g. '{path / 'results'}'")
            files = [path] if writes == "file" else [result_file(path, writes), result_file(path, ".md")]
            for file in files:
                check_output_file(file, leaf_.flag)
            results += [(leaf_.flag, file) for file in files]
        elif not writes:  # an option naming an existing file or directory is read by the command
            values = value if isinstance(value, (list, tuple)) else [value]
            inputs += [Path(v).resolve() for v in values if isinstance(v, (str, Path)) and v and Path(v).exists()]
    for flag, file in results:
        target = file.resolve()
        for source in inputs:
            if target == source or (source.is_file() and target.exists() and os.path.samefile(target, source)):
                raise OutputError(f"{flag} '{file}' is the input '{source}'; write the result elsewhere")
            if source.is_dir() and target.is_relative_to(source):
                entry = written_entry(source, target)
                if entry is not None:
                    raise OutputError(f"{flag} '{file}' would overwrite {entry} of the input '{source}'; write the "
                                      "result elsewhere")
        check_not_written_entry(file, flag)


def written_entry(source: Path, target: Path) -> str | None:
    """What ``target`` (inside the input directory ``source``) would overwrite, or None where it is a new file: an
    entry vitrt wrote into ``source`` or into a vitrt output nested in it (their markers list them, the marker
    itself included), or, where no marker covers it, a file already there."""
    from vitrt.compiler.output import marked_owner, overwrites_entry

    shown = str(target.relative_to(source))
    owner = marked_owner(target, stop=source)
    if owner is None:
        return shown if target.exists() else None
    return shown if overwrites_entry(owner, target) else None


def from_options(config_cls, options: dict, *, what: str = "option"):
    """Build ``config_cls`` from Python keyword options, refusing unknown names with the valid ones listed."""
    names = [leaf_.name for leaf_ in leaves(config_cls)]
    unknown = [k for k in options if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise OptionError(f"unknown {what} '{unknown[0]}'{hint}; valid {what}s: {', '.join(sorted(names))}")
    values = {}
    for leaf_ in leaves(config_cls):  # argparse checks types and choices on the command line; here alike
        if options.get(leaf_.name) is None:
            continue
        values[leaf_.name] = _checked(leaf_, options[leaf_.name], what)
    return build(config_cls, values)


def _checked(leaf_, value, what: str):
    """``value`` typed (:func:`_typed`) and within the option's choices."""
    value = _typed(leaf_, value, what)
    choices = leaf_.field.metadata.get("choices")
    if choices is not None and value not in choices:
        raise OptionError(f"{what} {leaf_.name}={value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def _typed(leaf_, value, what: str):
    """``value`` checked against the option's annotation: a bool is a bool (``force="no"`` is not False), an int
    an int, a float any real number, a path a str or path-like; a path-like given for a str option (a data
    directory) reads as its string."""
    import numbers
    import os

    if typing.get_origin(leaf_.annotation) in (list, tuple, dict):  # a container (nargs): its items not checked
        return value
    kinds = [k for k in (typing.get_args(leaf_.annotation) or (leaf_.annotation,)) if k is not type(None)]
    if isinstance(value, os.PathLike) and str in kinds:
        value = os.fspath(value)
    checks = {bool: lambda v: isinstance(v, bool),
              int: lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
              float: lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
              str: lambda v: isinstance(v, str), "path": lambda v: isinstance(v, (str, os.PathLike))}
    known = [("path" if getattr(k, "__name__", "") in ("Path", "PurePath") else k) for k in kinds]
    known = [k for k in known if k in checks]
    if known and not any(checks[k](value) for k in known):
        article = {bool: "a bool", int: "an int", float: "a number", str: "a str", "path": "a path"}
        names = " or ".join(article[k] for k in known)
        raise OptionError(f"{what} {leaf_.name} takes {names}, got {value!r} ({type(value).__name__})")
    if int in known and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)  # numpy's integers too: what is written to JSON and ONNX is a Python int
    if float in known and isinstance(value, numbers.Real) and not isinstance(value, (bool, int)):
        return float(value)
    return value


def replace_options(config, **options):
    """A copy of ``config`` with the named options (flat names, as :func:`from_options`) changed, each checked as
    :func:`from_options` checks it; ``None`` clears an option."""
    cls = type(config)
    by_name = {leaf_.name: leaf_ for leaf_ in leaves(cls)}
    unknown = [k for k in options if k not in by_name]
    if unknown:
        raise OptionError(f"unknown option '{unknown[0]}'; valid options: {', '.join(sorted(by_name))}")
    values = {name: get(config, leaf_) for name, leaf_ in by_name.items()}
    values.update({k: None if v is None else _checked(by_name[k], v, "option") for k, v in options.items()})
    return build(cls, values)


def get(config, leaf_: Leaf):
    value = config
    for part in leaf_.path:
        value = getattr(value, part)
    return value


def as_dict(config) -> dict:
    """Options by name with their values (for manifests and recipes); paths become strings."""
    out = {}
    for leaf_ in leaves(type(config)):
        value = get(config, leaf_)
        out[leaf_.name] = str(value) if hasattr(value, "__fspath__") else value
    return out


def add_command(sub, name: str, config_cls, func, help: str, description: str | None = None, skip=()):
    """A subcommand whose flags are ``config_cls``'s options; ``func(config)`` runs it and returns an exit code."""
    parser = sub.add_parser(name, help=help, description=description or help)
    add_arguments(parser, config_cls, skip=skip)
    parser.set_defaults(func=lambda args: func(from_args(config_cls, args)))
    return parser


def module_main(config_cls, func, argv=None, description: str = "") -> int:
    """``python -m vitrt.benchmarks.X``: parse ``argv`` into ``config_cls`` and run ``func(config)`` with the
    CLI's error handling (one line and exit 2 for a VitrtError)."""
    import sys

    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser, config_cls)
    args = parser.parse_args(argv)
    try:  # from_args checks the result paths: a bad one is a VitrtError too
        return func(from_args(config_cls, args)) or 0
    except VitrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def command_line(prog: str = "vitrt") -> str:
    """The command this process runs, quoted so that it can be pasted again (recorded beside results)."""
    import shlex
    import sys

    return " ".join([prog] + [shlex.quote(a) for a in sys.argv[1:]])


def api_wording(message: str, config_cls) -> str:
    """A message written for the command line, reworded for the Python API: ``--force`` becomes ``force=True``,
    ``--lut LUT`` becomes ``lut=LUT``, ``--batch`` becomes ``batch`` (the keyword that sets it). A ``vitrt ...``
    command quoted in the message (a command to run in a shell) keeps its flags."""
    import re

    names = {flag: leaf_ for leaf_ in leaves(config_cls) for flag in leaf_.flags}

    def keyword(match):
        flag, value = match.group(1), match.group(2)
        leaf_ = names.get(flag)
        if leaf_ is None:
            return match.group(0)
        if leaf_.annotation is bool:
            return f"{leaf_.name}=True" + (value or "")
        token = (value or "").strip()
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", token):  # a metavar: lut=LUT
            return f"{leaf_.name}={token}"
        if token and token in (leaf_.field.metadata.get("choices") or ()):  # a choice: precision='fp16'
            return f"{leaf_.name}={token!r}"
        if re.fullmatch(r"-?\d+(\.\d+)?", token):  # a number: threads=1
            return f"{leaf_.name}={token}"
        return leaf_.name + (value or "")

    parts = re.split(r"(vitrt [a-z][a-z-]*[^);]*)", message)
    return "".join(part if part.startswith("vitrt ") else
                   re.sub(r"(?<![\w-])(--?[a-z][a-z0-9-]*)( [\w.:/-]+)?", keyword, part) for part in parts)
