"""Turning what an admin typed into a provider's ``Config``, and back.

One private cattrs converter, extra keys forbidden. Input comes from web forms and
``--set key=value`` as strings, so numbers and booleans are parsed from text too. Every
problem becomes a :class:`ConfigError` that names the field.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from sbr_core.errors import ConfigError
from sbr_core.settings import Secret, secret_field_names

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _to_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected yes/no (true/false), got {value!r}")


def _to_int(value: Any, _: type) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a whole number, got {value!r}")


def _to_float(value: Any, _: type) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a number, got {value!r}")


def _to_str(value: Any, _: type) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"expected text, got {type(value).__name__}")


def _to_secret(value: Any, _: type) -> Secret:
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret(value)
    raise ValueError("expected a secret string")


def _to_path(value: Any, _: type) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str) and value.strip():
        return Path(value.strip())
    raise ValueError(f"expected a path, got {value!r}")


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(bool, _to_bool)
    conv.register_structure_hook(int, _to_int)
    conv.register_structure_hook(float, _to_float)
    conv.register_structure_hook(str, _to_str)
    conv.register_structure_hook(Secret, _to_secret)
    conv.register_structure_hook(Path, _to_path)
    conv.register_unstructure_hook(Secret, lambda s: s.reveal())
    conv.register_unstructure_hook(Path, str)
    return conv


_converter = _make_converter()


def _leaf_messages(
    exc: BaseException, path: str, out: dict[str, str], config_class: type | None = None
) -> None:
    """Walk a cattrs exception group, collecting one message per field path."""
    if isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            out[f"{path}{key}" if path else key] = "unknown setting"
        return
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        for sub in exc.exceptions:
            note = _field_note(sub)
            if isinstance(note, int):
                sub_path = f"{path.rstrip('.')}[{note}]."
            elif note:
                sub_path = f"{path}{note}."
            else:
                sub_path = path
            _leaf_messages(sub, sub_path, out)
        return
    field = path.rstrip(".")
    if not field:
        # An attrs validator failed in __init__, after cattrs had structured every field.
        field = _attribute_of(exc, config_class) if config_class else "(settings)"
    if isinstance(exc, KeyError):
        out[field] = "required, but not given"
    else:
        out[field] = _plain(exc)


def _field_note(exc: BaseException) -> str | int | None:
    for note in getattr(exc, "__notes__", []):
        name = getattr(note, "name", None)
        if name is not None:
            return name  # type: ignore[no-any-return]
        index = getattr(note, "index", None)
        if index is not None:
            return index  # type: ignore[no-any-return]
    return None


def _plain(exc: BaseException) -> str:
    # attrs' validators raise ValueError(message, attribute, ...): keep only the message.
    has_attribute = len(exc.args) > 1 and isinstance(exc.args[1], attrs.Attribute)
    text = str(exc.args[0]) if has_attribute else str(exc)
    if isinstance(exc, TypeError) and "required positional argument" in text:
        return "required, but not given"
    # attrs' in_() validator names the accepted values; keep its message readable.
    if "must be in" in text:
        return text.split("'", 2)[-1].strip(" ,") if text.startswith("'") else text
    return text


def structure_config(config_class: type[T], data: dict[str, Any], *, subject: str) -> T:
    """Validate ``data`` into ``config_class``; raise ConfigError naming each bad field."""
    if not isinstance(data, dict):
        raise ConfigError(subject, {"(settings)": "expected a mapping of setting names to values"})
    try:
        return _converter.structure(data, config_class)
    except (ClassValidationError, ForbiddenExtraKeysError) as exc:
        problems: dict[str, str] = {}
        _leaf_messages(exc, "", problems, config_class)
        raise ConfigError(subject, problems) from None
    except (ValueError, TypeError) as exc:
        # attrs validators run in __init__ after structuring; they name the attribute.
        raise ConfigError(subject, {_attribute_of(exc, config_class): _plain(exc)}) from None


def _attribute_of(exc: BaseException, config_class: type) -> str:
    note = _field_note(exc)
    if isinstance(note, str):
        return note
    attribute = exc.args[1] if len(exc.args) > 1 else None
    name = getattr(attribute, "name", None)
    if isinstance(name, str):
        return name
    for field in attrs.fields(config_class):
        if f"'{field.name}'" in str(exc):
            return str(field.name)
    return "(settings)"


def unstructure_config(config: Any) -> dict[str, Any]:
    """All settings as plain values, secrets included in clear: for storage encryption only."""
    return typing.cast(dict[str, Any], _converter.unstructure(config))


def split_secrets(config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a config into (plain settings, secret settings) for storing them apart."""
    values = unstructure_config(config)
    secret_names = secret_field_names(type(config))
    plain = {k: v for k, v in values.items() if k not in secret_names}
    secret = {k: v for k, v in values.items() if k in secret_names and v is not None}
    return plain, secret


def public_view(config: Any) -> dict[str, Any]:
    """Settings safe to show an admin: secrets reduced to whether they are set."""
    plain, secret = split_secrets(config)
    for name in secret_field_names(type(config)):
        plain[name] = "(set)" if secret.get(name) else "(not set)"
    return plain
