"""What one caller can learn about, or do to, the pool and other callers."""

from __future__ import annotations

import pytest

import zbridge
from helpers import TOOLSETS, free_port, raw_dealer, served
from zbridge import protocol
from zbridge.protocol import Kind

LEAKY = str(TOOLSETS / "leaky.py")


def tcp_hub(tmp_path, *args: str):
    return served(tmp_path, *args, "--allow-local-users", endpoint=f"tcp://127.0.0.1:{free_port()}")


def test_start_errors_over_tcp_carry_the_exception_only(tmp_path):
    with tcp_hub(tmp_path, "--tools", LEAKY, "--start-retries", "1") as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            with pytest.raises(zbridge.PoolUnavailable) as info:
                client.call("anything", timeout=20)
            status = client.status()
    err = info.value
    assert "RuntimeError: cannot reach the model server" in str(err)
    assert "hunter2" not in repr(err.to_wire()) and "stderr" not in (err.data or {})
    assert err.data["cause"] == "load_failed"
    assert "hunter2" not in repr(status)


def test_local_callers_still_see_the_start_traceback(bridge_factory):
    bridge = bridge_factory(LEAKY, fallback=False, start_retries=1)
    with pytest.raises(zbridge.PoolUnavailable) as info:
        bridge.call("anything", timeout=20)
    assert "Traceback" in info.value.data["stderr"] and "hunter2" in info.value.data["stderr"]


def test_status_over_tcp_shows_no_routing_ids(tmp_path, basic_tools):
    with tcp_hub(tmp_path, "--tools", basic_tools, "--prewarm") as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            status = client.wait_ready(timeout=20)
    (daemon,) = status["daemons"]
    assert daemon["id"] == "w1" and "routing_id" not in daemon


def test_only_the_connection_that_sent_a_call_can_cancel_it(tmp_path, basic_tools):
    with served(tmp_path, "--tools", basic_tools) as (endpoint, _):
        with raw_dealer(endpoint, identity=b"victim") as owner, raw_dealer(endpoint) as other:
            owner.send(protocol.encode_request(7, "span", [0.5]))
            other.send(protocol.encode_cancel(7))
            # the old protocol let any socket name another's routing id as the owner
            other.send(protocol.pack_header(Kind.CANCEL, 7) + protocol.packb({"owner": b"victim"}))
            reply = owner.recv()
            assert protocol.read_header(reply).kind is Kind.REPLY
            assert "result" in protocol.decode_reply_body(reply)  # not Cancelled
            owner.send(protocol.encode_request(8, "span", [5.0]))
            owner.send(protocol.encode_cancel(8))  # its own cancel works
            body = protocol.decode_reply_body(owner.recv())
            assert body["error"]["code"] == zbridge.Cancelled.code
