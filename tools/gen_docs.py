"""Regenerate the parts of docs/ that are read off the code, so they cannot drift from it.

- ``docs/configuration.md``: every section and key of the pipeline config, from the pydantic models in
  ``raygbm.config`` (name, type and bounds, default, description, the models' docstrings);
- ``docs/cli.md``: every ``raygbm`` command and subcommand, from the typer app in ``raygbm.cli`` (usage,
  help text, each option's help and default, as ``--help`` prints them).

Each file keeps its hand-written text; only the part between the ``BEGIN GENERATED`` and ``END GENERATED``
markers is rewritten. ``tests/unit/test_docs.py`` regenerates both in memory and fails when the committed
files differ.

    .venv/bin/python -m tools.gen_docs           # rewrite the generated parts
    .venv/bin/python -m tools.gen_docs --check   # exit 1, naming the stale files, if any differ

Importing this module does nothing; rendering imports ``raygbm.config`` and ``raygbm.cli`` only (neither
starts Ray nor imports it).
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ".venv/bin/python -m tools.gen_docs"
END = "<!-- END GENERATED -->"


def begin_marker(source: str) -> str:
    return f"<!-- BEGIN GENERATED from {source} by `{COMMAND}`: do not edit by hand -->"


# ---- markdown helpers


def _cell(text: str) -> str:
    """Text for one table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _flow(value: Any) -> str:
    """A value as YAML flow text, as it would be written in a config file."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        value = value.model_dump()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value)


# ---- configuration reference


def _is_model(tp: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " | ".join(parts + (["null"] if type(None) in args else []))
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if _is_model(tp):
        return tp.__name__
    return getattr(tp, "__name__", str(tp))


def _bounds(field: Any) -> str:
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    found = []
    for item in field.metadata:
        for attr, sign in signs.items():
            if getattr(item, attr, None) is not None:
                found.append(f"{sign} {getattr(item, attr)}")
    return ", ".join(found)


def _default(field: Any) -> Any:
    """The field's default value, or ``...`` when the key is required."""
    if field.is_required():
        return ...
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def _nested_models(tp: Any) -> list[tuple[str, type]]:
    """Models reachable from an annotation, with the suffix their keys take: ``""`` for a section,
    ``.<key>`` for a dict of them, ``[]`` for a list of them."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_model(tp):
        return [("", tp)]
    if origin in (typing.Union, types.UnionType):
        return [found for a in args for found in _nested_models(a)]
    if origin is dict and args and _is_model(args[1]):
        return [(".<name>", args[1])]
    if origin is list and args and _is_model(args[0]):
        return [("[]", args[0])]
    return []


def _doc(model: type) -> str:
    doc = model.__dict__.get("__doc__")
    return inspect.cleandoc(doc).replace("``", "`") if doc else ""


def _section(path: str, model: type, level: int) -> list[str]:
    import yaml

    lines = [f"{'#' * level} `{path}`", ""]
    if _doc(model):
        lines += [_doc(model), ""]
    lines += ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    long_defaults, nested = [], []
    for name, field in model.model_fields.items():
        kind = _type_name(field.annotation)
        if _bounds(field):
            kind += f" ({_bounds(field)})"
        default = _default(field)
        subs = _nested_models(field.annotation)
        if default is ...:
            shown = "required"
        elif subs and subs[0][0] == "" and default is not None and type(default) is subs[0][1]:
            shown = "(the section below)"
        else:
            shown = _code(_flow(default))
            if len(shown) > 60:
                long_defaults.append((name, default))
                shown = "(below the table)"
        lines.append(f"| `{name}` | {_code(_cell(kind))} | {_cell(shown)} | {_cell(field.description or '')} |")
        nested += [(f"{path}.{name}{suffix}", sub) for suffix, sub in subs]
    lines.append("")
    for name, default in long_defaults:
        block = yaml.safe_dump({name: default}, sort_keys=False, default_flow_style=None).rstrip()
        lines += [f"Default of `{path}.{name}`:", "", "```yaml", block, "```", ""]
    for sub_path, sub in nested:
        lines += _section(sub_path, sub, level + 1)
    return lines


def config_reference() -> str:
    from raygbm.config import PipelineConfig

    lines = [f"Every key, by section, as `raygbm.config` declares it (`{_type_name(int | None)}` means the key "
             "may be set to `null`). Unknown keys are errors.", ""]
    for name, field in PipelineConfig.model_fields.items():
        lines += _section(name, field.annotation, 3)
    return "\n".join(lines).rstrip() + "\n"


# ---- CLI reference


def _epilog(text: str) -> list[str]:
    """A command's epilog as markdown: a paragraph of one line as it is; one of several lines (the exit code
    table) as its first line and a list of the others."""
    out = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        head, *rows = paragraph.splitlines()
        out += [head, ""] + ([f"- {row}" for row in rows] + [""] if rows else [])
    return out


def _command_lines(command: Any, ctx: Any, path: list[str], level: int) -> list[str]:
    usage = " ".join(["raygbm", *path[1:], *command.collect_usage_pieces(ctx)])
    title = " ".join(path)
    lines = [f"{'#' * level} `{title}`", "", "```", usage, "```", ""]
    if command.help:
        lines += [inspect.cleandoc(command.help).replace("\b\n", ""), ""]
    rows = [p.get_help_record(ctx) for p in command.get_params(ctx)]
    rows = [r for r in rows if r is not None]
    if rows:
        lines += ["| Option | Help |", "|---|---|"]
        lines += [f"| `{_cell(names)}` | {_cell(text)} |" for names, text in rows]
        lines.append("")
    if command.epilog:
        lines += _epilog(command.epilog)
    for name, sub in getattr(command, "commands", {}).items():
        lines += _command_lines(sub, type(ctx)(sub, info_name=name, parent=ctx), [*path, name], level + 1)
    return lines


def cli_reference() -> str:
    import typer

    from raygbm.cli import app

    group = typer.main.get_command(app)
    root = typer.Context(group, info_name="raygbm")  # typer 0.29 carries its own click: its Context
    lines = ["Every command and subcommand with its options, as `raygbm <command> --help` prints them.", ""]
    lines += ["Commands: " + ", ".join(f"[`{n}`](#raygbm-{n})" for n in group.commands), ""]
    lines += _command_lines(group, root, ["raygbm"], 2)
    return "\n".join(lines).rstrip() + "\n"


# ---- the files

GENERATED: dict[str, tuple[str, Callable[[], str]]] = {
    "docs/configuration.md": ("src/raygbm/config.py", config_reference),
    "docs/cli.md": ("src/raygbm/cli.py", cli_reference),
}


def render(relative: str, current: str | None = None) -> str:
    """The file ``relative`` (to the repository root) with its generated part rewritten."""
    source, make = GENERATED[relative]
    text = (ROOT / relative).read_text() if current is None else current
    begin = begin_marker(source)
    head, found, rest = text.partition(begin)
    if not found or END not in rest:
        raise ValueError(f"{relative}: the markers {begin!r} ... {END!r} are missing")
    tail = rest.split(END, 1)[1]
    return f"{head}{begin}\n\n{make()}\n{END}{tail}"


def stale() -> list[str]:
    return [rel for rel in GENERATED if render(rel) != (ROOT / rel).read_text()]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--check"]:
        bad = stale()
        for rel in bad:
            print(f"{rel} is out of date: run {COMMAND}", file=sys.stderr)
        return 1 if bad else 0
    if args:
        print(f"usage: {COMMAND} [--check]", file=sys.stderr)
        return 2
    for rel in GENERATED:
        path = ROOT / rel
        new = render(rel)
        if new != path.read_text():
            path.write_text(new)
            print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
