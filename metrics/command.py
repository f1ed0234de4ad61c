"""The command layer of ``llamo`` and ``python -m metrics``: sub-commands built from typed functions by jsonargparse.

A command is a plain function with type hints and a Google-style docstring. Its summary line is the command's
help, its ``Args:`` entries are the options' help, and its signature is the only source of option names and
defaults:

- parameters before ``/`` (positional-only) are positional arguments; a ``list[...]`` one takes one or more words;
- every other parameter is a ``--name`` option (required when it has no default); a ``list[...]`` one is given
  by repeating it, ``--config a.yaml --config b.yaml`` (as ``llamo fit`` takes its ``--config`` files), and is
  required (argparse would append to a default list rather than replace it);
- a ``bool`` option is a switch: ``--name`` sets it, ``--no_name`` clears it;
- a parameter whose type is a dataclass (e.g. ``settings: EvalSettings``) contributes each field as a top-level
  option, documented by the field's attribute docstring, so the dataclass stays the one source of those flags.

Options are spelled with underscores as ``--help`` shows them (``--mean_std``); the dashed spelling
(``--mean-std``) is accepted too. The function returns the exit status. A `ValueError` or `FileNotFoundError` it
raises (a user error: a bad flag value, a missing file) is printed as ``<prog>: error: <message>`` with exit
status 2; anything else propagates with its traceback.

This module imports nothing of ``llamo``, so ``metrics`` stays standalone; ``llamo.cli`` uses it too.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from docstring_parser import parse_from_object
from jsonargparse import ActionYesNo, ArgumentParser, set_parsing_settings

__all__ = ["Command", "build_parser", "call_command", "run_command", "run_commands", "write_json"]

# field docstrings of the settings dataclasses become option help
set_parsing_settings(docstring_parse_attribute_docstrings=True)

#: a command: the command words, its function as ``"module:function"`` (imported only when it runs)
Command = tuple[tuple[str, ...], str]


def _summary(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def _settings_params(fn: Callable[..., Any]) -> dict[str, type]:
    hints = typing.get_type_hints(fn)
    return {
        name: hints[name]
        for name in inspect.signature(fn).parameters
        if isinstance(hints.get(name), type) and dataclasses.is_dataclass(hints[name])
    }


def build_parser(fn: Callable[..., Any], prog: str) -> ArgumentParser:
    """The jsonargparse parser of one command function (rules in the module docstring)."""
    doc = parse_from_object(fn)
    description = "\n\n".join(t for t in (doc.short_description, doc.long_description) if t)
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=True)
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    docs = _param_docs(fn)
    positional = [p for p in signature.parameters.values() if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    for param in positional:
        hint = hints[param.name]
        is_list = typing.get_origin(hint) is list
        item = typing.get_args(hint)[0] if is_list else hint
        parser.add_argument(param.name, type=item, nargs="+" if is_list else None, help=docs.get(param.name))
    settings = _settings_params(fn)
    for cls in settings.values():
        flags = {f.name: f.default for f in dataclasses.fields(cls) if typing.get_type_hints(cls)[f.name] is bool}
        parser.add_class_arguments(cls, nested_key=None, skip=set(flags))
        _add_switches(parser, flags, _param_docs(cls))
    switches = {
        p.name: p.default
        for p in signature.parameters.values()
        if hints.get(p.name) is bool and p.kind is not inspect.Parameter.POSITIONAL_ONLY
    }
    repeated = [
        p
        for p in signature.parameters.values()
        if typing.get_origin(hints.get(p.name)) is list and p.kind is not inspect.Parameter.POSITIONAL_ONLY
    ]
    for param in repeated:
        # argparse's append would add to a default list instead of replacing it: such options are required
        assert param.default is inspect.Parameter.empty, f"repeated option {param.name} cannot have a default"
        parser.add_argument(
            f"--{param.name}",
            action="append",
            type=typing.get_args(hints[param.name])[0],
            required=True,
            help=f"{docs.get(param.name, '')} (repeat the option for several values)",
        )
    skip = {p.name for p in positional} | set(settings) | set(switches) | {p.name for p in repeated}
    parser.add_function_arguments(fn, skip=skip, fail_untyped=True)
    _add_switches(parser, switches, docs)
    return parser


def _add_switches(parser: ArgumentParser, flags: Mapping[str, Any], docs: Mapping[str, str]) -> None:
    """``--name`` / ``--no_name`` switches for plain booleans (``--name true`` would be clumsy for a flag)."""
    for name, default in flags.items():
        assert isinstance(default, bool), f"boolean option {name} needs a True/False default"
        parser.add_argument(f"--{name}", action=ActionYesNo, default=default, help=docs.get(name))


def _param_docs(obj: Any) -> dict[str, str]:
    """Documentation of each parameter: a function's ``Args:`` entries, a dataclass's attribute docstrings."""
    return {p.arg_name: p.description or "" for p in parse_from_object(obj).params}


def _underscored(args: Sequence[str]) -> list[str]:
    """``--mean-std=x`` -> ``--mean_std=x``: dashed option names are accepted as written before this layer."""
    out = []
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
        out.append(arg)
    return out


def call_command(fn: Callable[..., Any], args: Sequence[str], prog: str | None = None) -> int:
    """Parse ``args`` for ``fn`` and call it; its exceptions propagate (tests, Python callers)."""
    parser = build_parser(fn, prog or fn.__name__)
    config = parser.parse_args(_underscored(args)).as_dict()
    if "config" not in inspect.signature(fn).parameters:
        config.pop("config", None)  # jsonargparse's own config entry, unless the command has a `config` option
    kwargs: dict[str, Any] = {}
    for name, cls in _settings_params(fn).items():
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs[name] = cls(**{k: config.pop(k) for k in list(config) if k in names})
    params = inspect.signature(fn).parameters.values()
    positional = [config.pop(p.name) for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    kwargs.update(config)
    return int(fn(*positional, **kwargs) or 0)


def run_command(fn: Callable[..., Any], args: Sequence[str], prog: str) -> int:
    """`call_command`, with a user error (`ValueError`, `FileNotFoundError`) printed and returned as exit status 2."""
    try:
        return call_command(fn, args, prog)
    except (ValueError, FileNotFoundError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2


def _usage(prog: str, commands: Sequence[Command], extra: Mapping[str, str]) -> str:
    rows = [*extra.items(), *((" ".join(words), _summary(_resolve(target))) for words, target in commands)]
    width = max(len(words) for words, _ in rows) + 2
    lines = [f"usage: {prog} <command> [options]", "", "commands:"]
    lines += [f"  {words:<{width}}{text}" for words, text in rows]
    lines += ["", f"`{prog} <command> --help` documents each command's options."]
    return "\n".join(lines)


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_commands(
    commands: Sequence[Command], argv: Sequence[str], prog: str, extra: Mapping[str, str] | None = None
) -> int:
    """Dispatch ``argv`` to the command whose words it starts with (the longest match) and run it.

    ``extra`` lists commands handled elsewhere (``{word: help}``) for the usage text only.
    """
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage(prog, commands, extra or {}))
        return 0 if args else 2
    for words, target in sorted(commands, key=lambda c: -len(c[0])):
        if tuple(args[: len(words)]) == words:
            return run_command(_resolve(target), args[len(words) :], f"{prog} {' '.join(words)}")
    print(f"{prog}: unknown command {' '.join(args[:2])!r}\n\n{_usage(prog, commands, extra or {})}", file=sys.stderr)
    return 2


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON (finite numbers only) to ``path``, creating its folder; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path
