"""The one tool every case calls: a no-op that returns its argument.

Loaded by zbridge daemons (by file path), by the floor and zerorpc servers, and pickled by
reference (``zbridge_bench.tools.noop``, ``bench.tools.noop`` in a clone) for the process-pool peers, so every case runs the same code.
"""

import zbridge


@zbridge.tool
def noop(payload=None):
    return payload
