"""gunicorn settings for pushdeploy's web tier in production, behind nginx (deploy/nginx/).

Used by deploy/systemd/pushdeploy-web.service as /etc/pushdeploy/gunicorn.conf.py:

    gunicorn --config /etc/pushdeploy/gunicorn.conf.py 'webhook.app:create_app()'

with PUSHDEPLOY_CONFIG naming the TOML file. Command-line flags override what is set here.

Environment variables read here or by the app:

- PUSHDEPLOY_CONFIG: the TOML configuration (read by create_app in each worker).
- WEB_CONCURRENCY: the number of gunicorn workers (default below).
- FORWARDED_ALLOW_IPS: the proxies whose X-Forwarded-* headers are trusted (default: loopback,
  where nginx runs). Behind a load balancer on another host, set its address here.
- PROMETHEUS_MULTIPROC_DIR: a directory private to this gunicorn, for prometheus_client's
  multiprocess mode: each worker writes its counters to files there and /metrics adds them up, so
  every scrape sees all workers. It must be empty when gunicorn starts (the systemd unit points it at
  its RuntimeDirectory, which systemd empties; ``on_starting`` below also removes stale files) and
  writable by the service user. Leave it unset to run without multiprocess mode.
"""

from __future__ import annotations

import glob
import os
from typing import Any

# Where nginx proxies to. Only nginx should reach gunicorn: never bind it to a public address.
bind = "127.0.0.1:8000"

# Sync workers: a delivery takes milliseconds of CPU and a few Redis round trips. nginx buffers
# whole requests and responses (proxy_request_buffering, proxy_buffering), so a slow client never
# holds a worker; without such a proxy in front, gunicorn's sync workers are open to slowloris.
worker_class = "sync"
workers = int(os.environ.get("WEB_CONCURRENCY", min(2 * (os.cpu_count() or 1) + 1, 9)))

# A request that takes longer than this is stuck: gunicorn kills and replaces its worker.
timeout = 30
# On SIGTERM or HUP, in-flight requests get this long to finish.
graceful_timeout = 20

# Each worker opens its own Redis connections after the fork: do not preload the app.
preload_app = False

# The same limits nginx enforces (large_client_header_buffers 4 8k), in case gunicorn is ever
# reached without nginx: request line and header sizes, and the number of headers.
limit_request_line = 4094
limit_request_field_size = 8190
limit_request_fields = 100

# X-Forwarded-Proto (and the other secure_scheme_headers) are believed only from these addresses.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Logs to stdout/stderr: journald (or the container runtime) collects them.
accesslog = "-"
errorlog = "-"
loglevel = "info"
proc_name = "pushdeploy-web"


def on_starting(server: Any) -> None:
    """Before any worker starts: make the multiprocess directory and remove stale files from it."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    os.makedirs(directory, mode=0o750, exist_ok=True)
    for stale in glob.glob(os.path.join(directory, "*.db")):
        os.remove(stale)


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited: drop its live gauges from prometheus_client's multiprocess files."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        from prometheus_client import multiprocess
    except ImportError:  # prometheus_client not installed: there are no metrics to tidy
        return
    multiprocess.mark_process_dead(worker.pid)
