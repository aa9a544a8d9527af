"""Provider settings: declaring them (settings.py), structuring what an admin typed (config.py),
and keeping secrets out of reprs, logs and public views."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from sbr_core.config import public_view, split_secrets, structure_config, unstructure_config
from sbr_core.errors import ConfigError
from sbr_core.redaction import RedactingFilter
from sbr_core.settings import Secret, setting, settings_of

PASSWORD = "pw-Zq7-never-shown"
TOKEN = "tok-Hx2-never-shown"


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    # Deliberately does not name the field: the error must still point at it.
    if value <= 0:
        raise ValueError("must be greater than zero")


@attrs.frozen
class ExampleConfig:
    """A provider Config with one field of every kind the settings helper supports."""

    host: str = setting(label="Host name", help="DNS name or address of the server.")
    password: Secret = setting(label="Password", help="Account password.", secret=True)
    port: int = setting(label="Port", default=443, validator=_positive)
    verify_tls: bool = setting(label="Verify TLS", default=True)
    root: Path = setting(label="Root", help="Base directory.", default=Path("/srv/sbr"))
    mode: str = setting(label="Mode", choices=("fast", "safe"), default="safe")
    token: Secret | None = setting(label="API token", secret=True, default=None)


VALID = {"host": "vc1.example.org", "password": PASSWORD}


def _structure(**changes: Any) -> ExampleConfig:
    return structure_config(ExampleConfig, {**VALID, **changes}, subject="destination 'nas1'")


def _problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        structure_config(ExampleConfig, data, subject="destination 'nas1'")
    assert info.value.subject == "destination 'nas1'"
    assert str(info.value).startswith("destination 'nas1': ")
    return info.value.problems


# --- structuring from strings ------------------------------------------------------------


def test_structure_parses_numbers_booleans_paths_and_secrets_from_text() -> None:
    config = _structure(port="8080", verify_tls="no", root="/mnt/backup", mode="fast",
                        token=TOKEN)

    assert config.port == 8080
    assert config.verify_tls is False
    assert config.root == Path("/mnt/backup")
    assert config.mode == "fast"
    assert isinstance(config.password, Secret)
    assert config.password.reveal() == PASSWORD
    assert config.token == Secret(TOKEN)


def test_structure_fills_defaults_for_settings_not_given() -> None:
    config = _structure()

    assert (config.port, config.verify_tls, config.root, config.mode, config.token) == (
        443, True, Path("/srv/sbr"), "safe", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("yes", True), ("true", True), ("On", True), ("1", True), (" YES ", True),
     ("no", False), ("false", False), ("off", False), ("0", False), (True, True), (0, False)],
)
def test_structure_reads_booleans_the_way_admins_write_them(text: Any, expected: bool) -> None:
    assert _structure(verify_tls=text).verify_tls is expected


def test_structure_accepts_native_values_too() -> None:
    config = _structure(port=22, root=Path("/x"), password=Secret(PASSWORD))

    assert (config.port, config.root, config.password.reveal()) == (22, Path("/x"), PASSWORD)


# --- errors name each bad field ----------------------------------------------------------


def test_wrong_types_are_reported_for_every_field_at_once() -> None:
    problems = _problems({**VALID, "port": "eighty", "verify_tls": "maybe", "host": ["a"]})

    assert set(problems) == {"port", "verify_tls", "host"}
    assert "whole number" in problems["port"]
    assert "'eighty'" in problems["port"]
    assert "yes/no" in problems["verify_tls"]
    assert "text" in problems["host"]


def test_boolean_is_not_taken_for_a_number() -> None:
    assert "whole number" in _problems({**VALID, "port": True})["port"]


def test_unknown_key_is_an_unknown_setting() -> None:
    problems = _problems({**VALID, "hostname": "typo.example.org"})

    assert problems == {"hostname": "unknown setting"}


def test_missing_required_settings_are_each_named() -> None:
    problems = _problems({"port": "22"})

    assert problems == {"host": "required, but not given", "password": "required, but not given"}


def test_choice_not_allowed_names_the_field_and_the_choices() -> None:
    problems = _problems({**VALID, "mode": "reckless"})

    assert list(problems) == ["mode"]
    assert "'fast'" in problems["mode"]
    assert "'safe'" in problems["mode"]
    assert "reckless" in problems["mode"]
    assert "Attribute(" not in problems["mode"]  # no attrs internals in an admin's message


def test_validator_failure_names_the_field_even_when_its_message_does_not() -> None:
    problems = _problems({**VALID, "port": "-5"})

    assert problems == {"port": "must be greater than zero"}


def test_empty_path_is_refused() -> None:
    assert "path" in _problems({**VALID, "root": "  "})["root"]


def test_non_mapping_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        structure_config(ExampleConfig, ["host"], subject="destination 'nas1'")  # type: ignore[arg-type]
    assert "(settings)" in info.value.problems


def test_config_error_message_never_carries_a_secret() -> None:
    with pytest.raises(ConfigError) as info:
        structure_config(ExampleConfig, {**VALID, "token": TOKEN, "port": "x", "extra": "1"},
                         subject="destination 'nas1'")

    assert PASSWORD not in str(info.value)
    assert TOKEN not in str(info.value)


# --- secrets stay hidden -----------------------------------------------------------------


def test_secret_never_appears_in_repr_or_str_of_the_config() -> None:
    config = _structure(token=TOKEN)

    for text in (repr(config), str(config), repr(config.password), str(config.token)):
        assert PASSWORD not in text
        assert TOKEN not in text
    assert "password" not in repr(config)  # secret fields are left out altogether
    assert repr(config.password) == "Secret('********')"


def test_secret_refuses_anything_but_a_string() -> None:
    with pytest.raises(TypeError):
        Secret(1234)  # type: ignore[arg-type]
    assert "secret" in _problems({**VALID, "password": 1234})["password"]


@pytest.fixture
def redacted_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger whose one handler carries the redaction filter, as install() sets up."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("sbr.test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def test_secret_never_appears_in_a_log_record(
    redacted_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = redacted_log
    config = _structure(token=TOKEN)

    logger.info("connecting with password %s", config.password.reveal())
    logger.info(f"token is {config.token.reveal()}")  # type: ignore[union-attr]
    logger.info("config %r", config)
    try:
        raise RuntimeError(f"login refused for {config.password.reveal()}")
    except RuntimeError:
        logger.exception("login failed")
    logger.info("stack", stack_info=True)

    output = stream.getvalue()
    assert PASSWORD not in output
    assert TOKEN not in output
    assert "connecting with password ********" in output
    assert "login refused for ********" in output  # the traceback, too


# --- describing settings -----------------------------------------------------------------


def test_settings_of_describes_each_field_in_declaration_order() -> None:
    infos = {info.name: info for info in settings_of(ExampleConfig)}

    assert list(infos) == ["host", "password", "port", "verify_tls", "root", "mode", "token"]
    host, password, port = infos["host"], infos["password"], infos["port"]
    assert (host.label, host.help, host.required, host.secret, host.default) == (
        "Host name", "DNS name or address of the server.", True, False, None)
    assert (password.label, password.secret, password.required, password.type_name) == (
        "Password", True, True, "secret")
    assert (port.required, port.default, port.type_name) == (False, 443, "int")
    assert (infos["verify_tls"].type_name, infos["verify_tls"].default) == ("bool", True)
    assert (infos["root"].type_name, infos["root"].default) == ("Path", Path("/srv/sbr"))
    assert infos["mode"].choices == ("fast", "safe")
    assert infos["token"].secret
    assert not infos["token"].required
    assert infos["token"].default is None  # a secret's default is never shown


def test_settings_of_labels_a_plain_attrs_field_from_its_name() -> None:
    @attrs.frozen
    class Plain:
        retry_count: int = 3

    (info,) = settings_of(Plain)
    assert (info.label, info.help, info.secret, info.default) == ("Retry count", "", False, 3)


# --- storing and showing -----------------------------------------------------------------


def test_split_secrets_keeps_secret_values_out_of_the_plain_part() -> None:
    config = _structure(token=TOKEN, port="8443")

    plain, secret = split_secrets(config)

    assert plain == {"host": "vc1.example.org", "port": 8443, "verify_tls": True,
                     "root": "/srv/sbr", "mode": "safe"}
    assert secret == {"password": PASSWORD, "token": TOKEN}
    assert PASSWORD not in repr(plain)
    assert TOKEN not in repr(plain)


def test_split_secrets_round_trips_through_structure_config() -> None:
    config = _structure(token=TOKEN, mode="fast")
    plain, secret = split_secrets(config)

    again = structure_config(ExampleConfig, {**plain, **secret}, subject="destination 'nas1'")

    assert again == config
    assert unstructure_config(again) == {**plain, **secret}


def test_public_view_says_only_whether_a_secret_is_set() -> None:
    view = public_view(_structure())

    assert view["password"] == "(set)"
    assert view["token"] == "(not set)"
    assert view["host"] == "vc1.example.org"
    assert PASSWORD not in repr(view)
