"""Named defaults, each with the reason for its value."""

from __future__ import annotations

MAX_BODY_BYTES = 25 * 1024 * 1024
"""GitLab's own request limit: a push that changes many files has a payload of megabytes, not KB."""

SIGNATURE_TOLERANCE = 5 * 60
"""Standard Webhooks' replay window: ±5 minutes around the receiver's clock."""

SEEN_DELIVERY_TTL = 48 * 3600
"""Delivery ids are remembered 48 h (at least the 24 h promised) so a manual resend is a duplicate."""

KEEP_RELEASES = 5
"""Releases kept per environment: enough to roll back a few times, small enough for disk."""

DEPLOY_TIMEOUT = 1800
"""Seconds a whole deployment may take; its steps share this budget."""

JOB_TIMEOUT_MARGIN = 120
"""RQ's job timeout is the deployment timeout plus this, so our own timeout always fires first."""

STEP_OUTPUT_LIMIT = 4 * 1024 * 1024
"""Bytes of output kept per step, as GitLab Runner's default ``output_limit``; the step still runs on."""

LOG_TAIL_LINES = 20
"""Lines of a failing step's output quoted in the deployment's reason."""

GITLAB_TIMEOUT = 10.0
"""Seconds for one GitLab API call: python-gitlab has no timeout unless told."""

REDIS_WEB_TIMEOUT = 0.5
"""Seconds the web tier waits on Redis, so an outage answers 503 in well under 1 s."""

PUBLIC_URL = "http://127.0.0.1:8000"
REDIS_URL = "redis://127.0.0.1:6379/0"
DATA_DIR = "./.pushdeploy"

DEPLOY_QUEUE = "pushdeploy-deploy"
"""The RQ queue deployment jobs wait in."""

STATUS_RETRY_DELAYS = (1, 2, 5, 10, 30, 60)
"""Backoff in seconds between attempts to post a status; the last value repeats."""

KEEP_DEPLOYMENTS = 100
"""Deployment records kept per environment (with their logs); older ones are deleted."""

LINK_TTL_DAYS = 90
"""How long the signed link GitLab shows as a status's target_url opens its deployment's page."""

RECONCILE_INTERVAL = 300
"""Seconds between a worker's comparisons of each branch head with what was deployed (0: never)."""

RECONCILE_GRACE = 120
"""A branch head must differ this long before it counts as a missed webhook (pushes take a moment)."""

POLL_INTERVAL = 60
"""Seconds between looks at the branch head for projects with ``trigger = "poll"``."""

JOURNAL_DRAIN_INTERVAL = 2.0
"""Seconds between a web process's tries to move journaled deliveries into Redis."""

AUDIT_DAYS = 90
"""Days the audit log keeps its entries: a quarter, long enough to answer "who did this" after a review."""

AUDIT_MAX_ENTRIES = 1_000_000
"""A hard cap on audit entries whatever their age, so a flood of failed sign-ins stays bounded."""

TRUSTED_PROXIES = ("127.0.0.1", "::1")
"""The proxies believed about the client address: the nginx on this host, as in deploy/."""

SIGN_IN_LIMIT = 20
"""Sign-in attempts allowed per address (and per account) per minute before 429."""
TOKEN_DAYS = 90
"""Days a personal API token lives when its creator names no ``expires_at``."""

TOKEN_MAX_DAYS = 365
"""The longest life a personal API token may be given (``[auth] token_max_days``)."""

REVIEW_MAX = 10
"""Live review apps per project at most: opening one more stops the least recently deployed."""

REVIEW_TTL_DAYS = 7.0
"""A review app not deployed for this many days is stopped."""

REVIEW_KEEP_DAYS = 30
"""How long a stopped review app's record (and its note's id) is kept, for a reopened merge request."""
NOTIFY_RETRY_DELAYS = (1, 2, 5, 15, 30, 60, 120, 300, 600, 900, 1800)
"""Seconds between tries to send a notification; after the last one it is given up (about 1 h 5 min
in all): news of a deployment is not worth sending a day late."""
