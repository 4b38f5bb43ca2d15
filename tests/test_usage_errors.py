"""Usage mistakes raise ValueError/TypeError naming the argument, before any socket exists."""

from __future__ import annotations

import warnings

import pytest

import zbridge
from zbridge import config
from zbridge.config import load_settings
from zbridge.endpoints import check_endpoint


@pytest.mark.parametrize("endpoint", ["localhost:5555", "tcp://localhost", "tcp://127.0.0.1:http",
                                      "tcp://:5555", "udp://127.0.0.1:5555", "ipc://", "tcp://h:70000"])
def test_client_refuses_a_malformed_endpoint_before_zmq(endpoint):
    with pytest.raises(ValueError, match="invalid endpoint") as info:
        zbridge.Client(endpoint)
    assert repr(endpoint) in str(info.value) and "tcp://HOST:PORT" in str(info.value)


def test_async_client_too():
    with pytest.raises(ValueError, match="invalid endpoint 'localhost:5555'"):
        zbridge.AsyncClient("localhost:5555")


@pytest.mark.parametrize("endpoint", ["ipc:///tmp/x.sock", "tcp://127.0.0.1:5555", "tcp://[::1]:5555",
                                      "tcp://*:5555", "inproc://hub", None])
def test_good_endpoints_pass(endpoint):
    check_endpoint(endpoint)


@pytest.mark.parametrize("name,value,expected", [
    ("workers", "2", "an int"), ("workers", 2.0, "an int"), ("timeout", "5", "a number"),
    ("prewarm", "yes", "a bool"), ("max_queue", True, "an int"), ("python", 3, "a str"),
])
def test_settings_of_the_wrong_type_name_the_setting(name, value, expected):
    with pytest.raises(TypeError, match=f"setting '{name}' must be {expected}"):
        load_settings(env={}, **{name: value})


def test_bridge_with_a_string_worker_count():
    with pytest.raises(TypeError, match="setting 'workers' must be an int, not str '2'"):
        zbridge.Bridge(tools="json", workers="2")


def test_environment_values_are_parsed_not_type_checked():
    assert load_settings(env={"ZBRIDGE_WORKERS": "3", "ZBRIDGE_TIMEOUT": "2"}).timeout == 2.0
    assert load_settings(env={"ZBRIDGE_WORKERS": "3"}).workers == 3


def test_unknown_variables_are_warned_about_once(monkeypatch):
    monkeypatch.setattr(config, "_warned", False)
    monkeypatch.setenv("ZBRIDGE_WROKERS", "2")
    monkeypatch.setenv("ZBRIDGE_TOOLS", "x")          # CLI-only: known
    monkeypatch.setenv("ZBRIDGE_TEST_ANYTHING", "1")  # the suite's own
    with pytest.warns(UserWarning, match="ZBRIDGE_WROKERS") as record:
        load_settings()
    assert "ZBRIDGE_TOOLS" not in str(record[0].message)
    assert record[0].filename == __file__  # points at the caller, not into zbridge
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_settings()  # once per process


def test_every_variable_the_code_reads_is_known():
    import pathlib
    import re
    root = pathlib.Path(zbridge.__file__).parent.parent
    names = set()
    for folder in ("zbridge", "daemon", "tests", "bench"):
        for path in (root / folder).rglob("*.py"):
            if path.name not in ("config.py", "test_usage_errors.py"):  # the lists themselves
                names |= set(re.findall(r"ZBRIDGE_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    names.discard("ZBRIDGE_NAME")  # a placeholder in --help text
    assert config.unknown_variables(dict.fromkeys(names)) == []


def test_remote_daemons_hide_tracebacks_unless_asked(monkeypatch):
    from zbridge_daemon.main import _env_expose, expose_default
    assert expose_default("tcp://hub.example:5556") is False
    assert expose_default("ipc:///run/zbridge/backend") is True
    assert expose_default(None) is True  # --stdio: the reader is the local parent
    monkeypatch.delenv("ZBRIDGE_EXPOSE_TRACEBACKS", raising=False)
    assert _env_expose() is None
    for raw, expected in (("auto", None), ("true", True), ("off", False)):
        monkeypatch.setenv("ZBRIDGE_EXPOSE_TRACEBACKS", raw)
        assert _env_expose() is expected
