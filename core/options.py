"""One way to configure every component: a frozen dataclass whose fields are flags.

Each field becomes ``--field-name`` on the command line and ``PROTOLM_FIELD_NAME`` in the
environment (flag wins over environment, environment over the dataclass default). The help
text lives in the field's metadata, so the dataclass is the single place an option is
documented. Only the standard library is used here, so the serving package can share it
without importing torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from typing import Any, TypeVar

ENV_PREFIX = "PROTOLM_"

T = TypeVar("T")


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field carrying its own help text (and optional ``choices``, or an ``env``
    name where the default ``PROTOLM_FIELD_NAME`` would be ambiguous)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(scalar type, optional?) of a field annotation such as ``int | None``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _converter(scalar: type, optional: bool):
    parse = _parse_bool if scalar is bool else scalar

    def convert(text: str):
        if optional and text.strip().lower() in ("", "none"):
            return None
        return parse(text)

    convert.__name__ = scalar.__name__
    return convert


def add_options(parser: argparse.ArgumentParser, config_cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``config_cls``; defaults come from ``PROTOLM_*`` variables."""
    hints = typing.get_type_hints(config_cls)
    group = parser.add_argument_group(config_cls.__name__)
    for field in dataclasses.fields(config_cls):
        if field.name in skip:
            continue
        scalar, optional = _base_type(hints[field.name])
        convert = _converter(scalar, optional)
        env = field.metadata.get("env") or env_name(field.name)
        default = field.default
        if env in os.environ:
            try:
                default = convert(os.environ[env])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{env}={os.environ[env]!r}: {exc}")
        help_text = f"{field.metadata.get('help', '')} [env {env}; default {default!r}]"
        kwargs: dict[str, Any] = {"dest": field.name, "default": default, "help": help_text, "type": convert}
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        if scalar is bool:
            kwargs["metavar"] = "{true,false}"
            kwargs["nargs"] = "?"
            kwargs["const"] = True
        group.add_argument(flag_name(field.name), **kwargs)


def from_namespace(config_cls: type[T], namespace: argparse.Namespace, **overrides: Any) -> T:
    """Build the frozen config from parsed flags (fields not on the parser keep their default)."""
    values = {
        field.name: getattr(namespace, field.name)
        for field in dataclasses.fields(config_cls)
        if hasattr(namespace, field.name)
    }
    values.update(overrides)
    return config_cls(**values)
