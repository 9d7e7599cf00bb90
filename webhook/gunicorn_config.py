"""gunicorn settings that ``pushdeploy web`` and ``up`` load (``-c python:webhook.gunicorn_config``).

Only what gunicorn's command line cannot say: a worker that exits is marked dead for
prometheus_client's multiprocess mode, so its gauges do not linger in ``/metrics``.
"""

from __future__ import annotations

from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
