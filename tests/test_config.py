"""rpcd.config: defaults, the TOML file, the command line on top, and one-line errors."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from rpcd import config
from rpcd.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[1]

DEFAULTS = {
    "listen": ("tcp:5354:interface=127.0.0.1",),
    "methods": (),
    "max_connections": 1024,
    "max_connections_per_peer": 0,
    "max_frame_bytes": 4 * 1024 * 1024,
    "idle_timeout": 300.0,
    "call_timeout": 30.0,
    "queue_size": 10000,
    "workers": 1000,
    "max_inflight": 128,
    "max_batch": 100,
    "shutdown_grace": 10.0,
    "byteorder": "big",
    "monkey_patch": True,
}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rpcd.toml"
    path.write_text(text)
    return str(path)


def test_defaults_are_the_documented_ones():
    settings = config.build()
    for key, value in DEFAULTS.items():
        assert getattr(settings, key) == value, key


def test_example_file_holds_every_key_at_its_default():
    values = config.load_file(str(ROOT / "conf" / "rpcd.toml"))
    assert values == {f.name: f.default for f in fields(Settings)}


def test_readme_documents_every_option():
    readme = (ROOT / "README.md").read_text()
    for f in fields(Settings):
        option = f.metadata["flag"] or f.name.replace("_", "-")
        assert f"`--{option}" in readme, option


def test_file_values(tmp_path):
    path = write(
        tmp_path,
        'listen = ["tcp:1:interface=127.0.0.1", "unix:/tmp/r.sock"]\n'
        'methods = "pkg.mod"\nmax_connections = 3\nidle_timeout = 0.5\nbyteorder = "little"\n'
        "no_monkey_patch = true\n",
    )
    settings = config.build(path)
    assert settings.listen == ("tcp:1:interface=127.0.0.1", "unix:/tmp/r.sock")
    assert settings.methods == ("pkg.mod",)
    assert settings.max_connections == 3 and settings.idle_timeout == 0.5
    assert settings.byteorder == "little" and settings.monkey_patch is False
    assert settings.workers == 1000


def test_file_with_an_rpcd_table_and_dashed_keys(tmp_path):
    path = write(tmp_path, '[rpcd]\nmax-inflight = 7\n"call-timeout" = 2\n')
    settings = config.build(path)
    assert settings.max_inflight == 7 and settings.call_timeout == 2.0


def test_command_line_wins_over_the_file(tmp_path):
    path = write(
        tmp_path, 'max_connections = 3\nqueue_size = 9\nlisten = ["tcp:1:interface=::1"]\n'
    )
    listen = ["tcp:2:interface=127.0.0.1", "unix:/tmp/rpcd.sock"]
    settings = config.build(path, {"max_connections": "5", "listen": listen, "monkey_patch": False})
    assert settings.max_connections == 5 and settings.queue_size == 9
    assert settings.listen == tuple(listen) and settings.monkey_patch is False


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("max_connections", "abc", "an integer >= 1"),
        ("max_connections", "0", "an integer >= 1"),
        ("max_connections", "1.5", "an integer >= 1"),
        ("max_connections_per_peer", "-1", "an integer >= 0"),
        ("max_frame_bytes", str(2**32), "an integer from 16 to 4294967295"),
        ("idle_timeout", "-1", "a number of seconds >= 0"),
        ("idle_timeout", "nan", "a number of seconds >= 0"),
        ("call_timeout", "0", "a number of seconds > 0"),
        ("call_timeout", "inf", "a number of seconds > 0"),
        ("byteorder", "middle", "one of big, little"),
        ("monkey_patch", "maybe", "true or false"),
        ("listen", [], "a non-empty list of Twisted endpoint strings"),
    ],
)
def test_bad_value_names_key_value_and_what_is_allowed(key, value, allowed):
    with pytest.raises(ConfigError) as raised:
        config.build(overrides={key: value})
    message = str(raised.value)
    assert "\n" not in message
    assert key in message and repr(value) in message and allowed in message


@pytest.mark.parametrize(
    ("text", "key", "value", "allowed"),
    [
        ("workers = true\n", "workers", "True", "an integer >= 1"),
        ("max_frame_bytes = 1.5\n", "max_frame_bytes", "1.5", "an integer from 16"),
        ('byteorder = "BIG"\n', "byteorder", "'BIG'", "one of big, little"),
        ("methods = [1]\n", "methods", "[1]", "a list of module names"),
    ],
)
def test_bad_value_in_the_file(tmp_path, text, key, value, allowed):
    with pytest.raises(ConfigError) as raised:
        config.build(write(tmp_path, text))
    message = str(raised.value)
    assert "\n" not in message and key in message and value in message and allowed in message


def test_unknown_key_in_the_file_lists_the_keys(tmp_path):
    with pytest.raises(ConfigError) as raised:
        config.build(write(tmp_path, "max_conections = 5\n"))
    message = str(raised.value)
    assert "\n" not in message and "'max_conections'" in message
    assert "max_connections" in message and "allowed" in message


def test_unreadable_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.build(str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="is not valid TOML") as raised:
        config.build(write(tmp_path, "max_connections = \n"))
    assert "\n" not in str(raised.value)


def test_settings_are_checked_when_built_directly():
    with pytest.raises(ConfigError):
        Settings(queue_size=-1)
    assert Settings(queue_size="0").queue_size == 0


def test_workers_prestart_above_workers_is_refused():
    with pytest.raises(config.ConfigError, match="at most workers"):
        config.build(None, {"workers": 5, "workers_prestart": 6})
