"""The client core's plans, driven by hand: no sockets, no processes."""

from __future__ import annotations

import pytest

from zbridge import errors, plans
from zbridge.calls import ClientCore
from zbridge.protocol import decode_request


def core(tools=("t.py",), **settings) -> ClientCore:
    c = ClientCore()
    c._init_core("inproc://plans", list(tools), None, 5.0, settings)
    return c


def run(plan, outcomes):
    """Drive a plan: each op gets the next outcome (an exception is thrown in)."""
    ops, outcome = [], None
    try:
        op = plan.send(None)
        for outcome in outcomes:
            ops.append(op)
            op = plan.throw(outcome) if isinstance(outcome, BaseException) else plan.send(outcome)
        ops.append(op)
    except StopIteration as done:
        return ops, done.value
    return ops, None


def test_a_call_is_one_roundtrip():
    ops, result = run(plans.call(core(), "add", [1, 2], 5.0, False), [3])
    assert result == 3 and isinstance(ops[0], plans.Roundtrip)
    assert decode_request(ops[0].frame).params == [1, 2]


def test_idempotent_calls_are_retried_after_worker_lost_then_raise():
    lost = errors.WorkerLost("gone")
    ops, result = run(plans.call(core(retries=2), "t", None, 5.0, True), [lost, lost, "ok"])
    assert result == "ok" and len(ops) == 3
    with pytest.raises(errors.WorkerLost):
        run(plans.call(core(retries=1), "t", None, 5.0, True), [lost, lost])
    with pytest.raises(errors.WorkerLost):
        run(plans.call(core(), "t", None, 5.0, False), [lost])


@pytest.mark.parametrize("cause, falls_back", [("unreachable", True), ("start_failed", True),
                                               ("load_failed", False), ("closing", False)])
def test_fallback_only_where_a_one_shot_could_serve(cause, falls_back):
    unavailable = errors.PoolUnavailable("no", {"cause": cause})
    plan = plans.call(core(), "t", None, 5.0, False)
    if falls_back:
        ops, result = run(plan, [unavailable, "piped"])
        assert isinstance(ops[1], plans.OneShot) and result == "piped"
    else:
        with pytest.raises(errors.PoolUnavailable):
            run(plan, [unavailable])


def test_a_client_without_tools_never_falls_back():
    with pytest.raises(errors.PoolUnavailable):
        run(plans.call(core(tools=()), "t", None, 5.0, False),
            [errors.PoolUnavailable("no", {"cause": "unreachable"})])


def test_a_stream_returns_credit_every_half_window_and_ends():
    items = [("item", i) for i in range(4)] + [("end", None)]
    plan = plans.stream(core(), "count", [4], 5.0, 4)
    ops, outcome = [], None
    try:
        op = next(plan)
        while True:
            ops.append(op)
            outcome = items.pop(0) if isinstance(op, plans.Receive) else None
            op = plan.send(outcome)
    except StopIteration:
        pass
    kinds = [type(o).__name__ for o in ops]
    assert kinds[0] == "Open" and kinds.count("Item") == 4 and kinds.count("Credit") == 2


def test_a_stream_falls_back_only_before_its_first_item():
    unavailable = errors.PoolUnavailable("no", {"cause": "unreachable"})
    plan = plans.stream(core(), "count", [4], 5.0, 4)
    assert isinstance(next(plan), plans.Open)
    assert isinstance(plan.send(None), plans.Receive)
    assert isinstance(plan.send(("error", unavailable)), plans.OneShotItems)


def test_settle_raises_the_first_error_in_call_order_unless_asked_not_to():
    first, second = errors.ToolError("a"), errors.WorkerLost("b")
    assert plans.settle([1, first, second], True) == [1, first, second]
    with pytest.raises(errors.ToolError):
        plans.settle([1, first, second], False)
