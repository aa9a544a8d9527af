"""Declaring provider settings: one helper over ``attrs.field``.

A provider's ``Config`` is an attrs class whose fields are made with :func:`setting`. The
metadata it attaches (label, help, secret, choices) is the single source for the web form, the
CLI help (``sbr plugins NAME``) and the docs.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Sequence
from typing import Any

import attrs

_KEY = "sbr"


@attrs.frozen
class SettingInfo:
    """What the UI and CLI need to know about one setting."""

    name: str
    label: str
    help: str
    type_name: str
    required: bool
    default: Any
    secret: bool
    choices: tuple[str, ...]


class Secret:
    """A secret string that does not show itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a secret must be a string")
        self._value = value
        from sbr_core.redaction import remember_secret

        remember_secret(value)

    def reveal(self) -> str:
        """The clear text, for handing to the platform client and nowhere else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class _FieldNote(str):
    """An exception note naming the setting whose validator refused a value.

    :mod:`sbr_core.config` reads ``name`` (as it reads cattrs' own notes), so a ConfigError
    names the field even when a validator's message does not.
    """

    name: str


def _naming(validators: list[Any]) -> Any:
    combined = attrs.validators.and_(*validators)

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        try:
            combined(instance, attribute, value)
        except (ValueError, TypeError) as exc:
            note = _FieldNote(f"setting {attribute.name!r} refused the value")
            note.name = attribute.name
            exc.add_note(note)
            raise

    return validate


def setting(
    *,
    label: str,
    help: str = "",
    secret: bool = False,
    choices: Sequence[str] = (),
    default: Any = attrs.NOTHING,
    validator: Any = None,
) -> Any:
    """An attrs field carrying SBR's setting metadata.

    ``secret=True`` hides the value from reprs, and the server stores it encrypted and never
    shows it back. ``choices`` limits a string to the listed values.
    """
    validators = []
    if choices:
        validators.append(attrs.validators.in_(tuple(choices)))
    if validator is not None:
        validators.append(validator)
    return attrs.field(
        default=default,
        validator=_naming(validators) if validators else None,
        repr=not secret,
        metadata={_KEY: {"label": label, "help": help, "secret": secret,
                         "choices": tuple(choices)}},
    )


def _type_name(tp: Any) -> str:
    if tp is None:
        return "str"
    if isinstance(tp, str):
        return tp
    origin = typing.get_origin(tp)
    if origin is not None:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(args[0]) if len(args) == 1 else str(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "choice"
    if tp is Secret:
        return "secret"
    return getattr(tp, "__name__", str(tp))


def settings_of(config_class: type) -> list[SettingInfo]:
    """Describe each setting of an attrs ``Config`` class, in declaration order."""
    hints = typing.get_type_hints(config_class)
    out = []
    for field in attrs.fields(config_class):
        meta = field.metadata.get(_KEY, {})
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        required = default is attrs.NOTHING
        tp = hints.get(field.name, field.type)
        secret = bool(meta.get("secret")) or tp is Secret
        out.append(
            SettingInfo(
                name=field.name,
                label=meta.get("label") or field.name.replace("_", " ").capitalize(),
                help=meta.get("help", ""),
                type_name=_type_name(tp),
                required=required,
                default=None if required or secret else default,
                secret=secret,
                choices=tuple(meta.get("choices", ())),
            )
        )
    return out


def secret_field_names(config_class: type) -> set[str]:
    """Names of the settings that are secrets."""
    return {info.name for info in settings_of(config_class) if info.secret}
