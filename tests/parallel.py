"""Each pytest-xdist worker gets its own Redis databases, so parallel workers never flush each other's.

pytest-xdist names its workers gw0, gw1, … in ``PYTEST_XDIST_WORKER`` (and their number in
``PYTEST_XDIST_WORKER_COUNT``). Worker N uses the database N below the one a serial run uses (15 on
gw0, 14 on gw1, …); run without ``-n`` there is no worker and every database is what it always was.
Everything else a test starts (gunicorn, nginx, sshd, fake GitLab, redis-server) already binds a
free port and lives under the test's own temporary directory.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit


def worker_index() -> int:
    """0 when run serially and on gw0, N on gwN."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name.removeprefix("gw")) if name.startswith("gw") else 0


def worker_count() -> int:
    """How many workers share the machine's Redis: 1 when run serially."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)


def database(url: str) -> int:
    return int(urlsplit(url).path.lstrip("/") or 0)


def per_worker(url: str) -> str:
    """``url`` with its database number lowered by this worker's index; unchanged when serial."""
    parts = urlsplit(url)
    mine = database(url) - worker_index()
    if mine < 0:
        raise RuntimeError(f"{url}: too few Redis databases below it for {worker_count()} xdist workers")
    return urlunsplit(parts._replace(path=f"/{mine}"))


def check_disjoint(**urls: str) -> None:
    """Refuse to start when the workers' databases of two kinds would meet (too many workers)."""
    owner: dict[int, str] = {}
    for kind, url in urls.items():
        for db in range(database(url), database(url) - worker_count(), -1):
            if db < 0 or db in owner:
                shared = f"also the {owner[db]} database" if db in owner else "no database"
                raise RuntimeError(
                    f"{worker_count()} xdist workers: {kind} database {db} is {shared}; "
                    "use fewer workers or set the base URLs further apart"
                )
            owner[db] = kind
