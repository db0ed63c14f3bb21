"""Click options made from the settings dataclasses: one option per field, its help in the field's metadata,
and the command receives the dataclass built once (`@settings(DataSpec, "data")` passes `data=DataSpec(...)`)."""

from __future__ import annotations

import dataclasses
import functools
import typing

import click

from evalmem.settings import check_out


def _click_type(hint, meta: dict):
    if "type" in meta:
        return meta["type"]
    if "choices" in meta:
        return click.Choice(list(meta["choices"]))
    if meta.get("path") == "dir":
        return click.Path(file_okay=False)
    if meta.get("path") == "file":
        return click.Path(dir_okay=False)
    base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
    if base in (int, float) and ("min" in meta or "max" in meta):
        ranged = click.IntRange if base is int else click.FloatRange
        return ranged(min=meta.get("min"), max=meta.get("max"), **({} if base is int else {
            "min_open": meta.get("min_open", False), "max_open": meta.get("max_open", False)}))
    return base


def _check_out(ctx, param, value):
    return value if value is None else check_out(value, param.opts[0])


def out_option(help: str, directory: bool = True):
    """`--out`, required; an empty value (an unset shell variable) is refused before anything is written."""
    return click.option("--out", required=True, type=click.Path(file_okay=not directory, dir_okay=directory),
                        callback=_check_out, help=help)


def _option(group: str, f: dataclasses.Field, hint) -> click.Option:
    meta = f.metadata
    flag = meta.get("flag", "--" + f.name.replace("_", "-"))
    default = None if f.default is dataclasses.MISSING else f.default
    kwargs = {"help": meta["help"], "metavar": meta.get("metavar"), "envvar": meta.get("envvar"),
              "show_envvar": "envvar" in meta, "multiple": meta.get("multiple", False),
              "callback": _check_out if "path" in meta else None}
    if hint is bool:
        return click.option(flag, f"{group}__{f.name}", is_flag=True, **kwargs)
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default is not None
    return click.option(flag, f"{group}__{f.name}", type=_click_type(hint, meta), default=default,
                        required=f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                        show_default=shown and not meta.get("multiple"), **kwargs)


def settings(cls, group: str, **fixed):
    """Add one option per field of `cls` (fields without help, and those in `fixed`, are not options) and call
    the command with `group=cls(**options, **fixed)`."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if "help" in f.metadata and f.name not in fixed]
    prefix = f"{group}__"

    def decorate(command):
        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {k.removeprefix(prefix): kwargs.pop(k) for k in list(kwargs) if k.startswith(prefix)}
            values = {k: tuple(v) if isinstance(v, tuple) else v for k, v in values.items()}
            return command(**kwargs, **{group: cls(**values, **fixed)})

        for f in reversed(fields):
            wrapper = _option(group, f, hints[f.name])(wrapper)
        return wrapper

    return decorate
