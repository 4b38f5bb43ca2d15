"""zbridge's latency benchmark: ``zbridge bench [--quick] [--json PATH] [--plot PATH]``.

Installed with zbridge as ``zbridge_bench`` (``python -m zbridge_bench``; the peers it compares
need ``pip install 'zbridge[bench]'``); in a clone, ``python -m bench`` runs the same code.

One file per concept: ``profiles`` (how much to measure), ``cases`` (what a case is),
``timing`` (the one timing loop), ``stats`` (percentiles across repeats), ``procs`` (child
processes that always get cleaned up), ``cases_zbridge`` / ``cases_floor`` / ``cases_peers``
(the targets), ``runner`` (interleaved repeats and progress), ``report`` (table, targets,
JSON), ``plot`` (latency CDFs), ``meta`` (versions, CPUs, date). See ``bench/README.md``.
"""
