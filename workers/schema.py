"""The Redis layout: every key pushdeploy writes, and the fields of its hashes, in one place.

The layout is a contract between releases (web nodes and workers of two versions meet during an
upgrade), so it has a version (:data:`VERSION`, kept under :data:`VERSION_KEY`) and changes only
with a migration in :mod:`workers.migrations`. Owners hold their keys (a store its records, a lane
its lock), but build them only from here; pruning deletes a deployment's keys from
:func:`deployment_keys`, so a key added to a deployment can never be left behind.

Version 1 (no version key) is the layout before versions. Version 2 keeps delivery ids in one
hash and one sorted set per project instead of a key per delivery, and counts each environment's
kept deployments by state as they change.
"""

from __future__ import annotations

from collections.abc import Callable

PREFIX = "pd"
VERSION = 2
VERSION_KEY = f"{PREFIX}:schema"
"""The layout's version; absent before version 2 (that layout is version 1)."""
MIGRATION_LOCK = f"{PREFIX}:schema:lock"


# -- one deployment ---------------------------------------------------------------------------


def record(deployment_id: str) -> str:
    """Hash: the deployment's fields (:class:`workers.deployments.Deployment`, :data:`RUNTIME_FIELDS`).

    ``requested_by`` and ``canceled_by`` (who asked for a manual deploy or rollback, who canceled)
    and :data:`ENDING_FIELD` are optional fields added without a version change: older releases
    ignore fields they do not know, and a record without them reads as empty."""
    return f"{PREFIX}:dep:{deployment_id}"


def steps(deployment_id: str) -> str:
    """List: one JSON step result per build, deploy or rollback command."""
    return f"{PREFIX}:dep:{deployment_id}:steps"


def log(deployment_id: str) -> str:
    """Stream: the deployment's log lines."""
    return f"{PREFIX}:dep:{deployment_id}:log"


def statuses(deployment_id: str) -> str:
    """List: the deployment's status outbox, in the order GitLab must receive them."""
    return f"{PREFIX}:dep:{deployment_id}:statuses"


def cancel(deployment_id: str) -> str:
    """String: who asked a running deployment to stop."""
    return f"{PREFIX}:dep:{deployment_id}:cancel"


def hosts(deployment_id: str) -> str:
    """Hash: target name → JSON ``{i, state, detail}``, each host's progress in a rollout."""
    return f"{PREFIX}:dep:{deployment_id}:hosts"


def remote_steps(deployment_id: str) -> str:
    """Set: ``<target index>:<pid file>`` of each step running on a target now (for recovery)."""
    return f"{PREFIX}:dep:{deployment_id}:remote"


def notices(deployment_id: str) -> str:
    """Hash: event → JSON notification (title, body, type, URLs delivered to, tries, outcome).

    One field per event, so each event of a deployment is queued once (the idempotency key)."""
    return f"{PREFIX}:dep:{deployment_id}:notices"


DEPLOYMENT_KEYS: tuple[Callable[[str], str], ...] = (
    record,
    steps,
    log,
    statuses,
    cancel,
    hosts,
    remote_steps,
    notices,
)
"""Every key of one deployment: pruning deletes exactly these."""


def deployment_keys(deployment_id: str) -> list[str]:
    return [make(deployment_id) for make in DEPLOYMENT_KEYS]


RUNTIME_FIELDS = ("host", "step_pgid", "lane_token")
"""Record fields that are not part of the Deployment dataclass: written while it runs."""

# Record fields the status outbox keeps (``status_problem`` is also a Deployment field: shown).
SENT_FIELD = "statuses_sent"
"""How many entries of the status outbox GitLab has."""
ATTEMPT_FIELD = "status_attempts"
"""Failed tries of the entry being delivered (its backoff)."""
ENDING_FIELD = "ending"
"""Set (a time) by :func:`workers.lifecycle.end` in the transaction that ends a deployment, removed
once the ending has put its log line, final status and notification in place. History pruning
leaves the record alone meanwhile, or those writes would bring back keys of a deployment just
deleted (a ghost record, beyond ``keep_deployments``)."""
PROBLEM_FIELD = "status_problem"
"""Why the last try failed, for the deployment's page."""
PIPELINE_FIELD = "gitlab_pipeline_id"
"""The GitLab pipeline the deployment's first accepted status joined; later ones are sent to it."""
FORBIDDEN_FIELD = "statuses_forbidden"
"""Set once GitLab answered 403: the rest of the deployment's statuses are skipped."""
FORGE_DEPLOYMENT_FIELD = "gitlab_deployment_id"
"""The GitLab deployment created for this one (``gitlab_environments``)."""
FORGE_DEPLOYMENT_MARK_FIELD = "gitlab_deployment_after"
"""The environment's newest GitLab deployment id before ours was created: where to look for it."""

OUTBOX_FIELDS = (
    SENT_FIELD,
    ATTEMPT_FIELD,
    PIPELINE_FIELD,
    FORBIDDEN_FIELD,
    FORGE_DEPLOYMENT_FIELD,
    FORGE_DEPLOYMENT_MARK_FIELD,
)
"""Record fields that are not part of the Deployment dataclass: written by the status courier."""


# -- one environment --------------------------------------------------------------------------


def _env(project: str, environment: str, what: str) -> str:
    return f"{PREFIX}:env:{project}:{environment}:{what}"


def history(project: str, environment: str) -> str:
    """Sorted set: deployment ids by creation time."""
    return _env(project, environment, "history")


def live(project: str, environment: str) -> str:
    """Hash: sha, deployment and release of what serves now."""
    return _env(project, environment, "live")


def kept(project: str, environment: str) -> str:
    """Hash: state → number of deployments of that state in the history (kept as they change)."""
    return _env(project, environment, "kept")


def lock(project: str, environment: str) -> str:
    """String: the lane's holder, ``<deployment id>:<token>``, with an expiry the holder renews."""
    return _env(project, environment, "lock")


def waiting(project: str, environment: str) -> str:
    """String: the one deployment waiting for the lane."""
    return _env(project, environment, "waiting")


def reconciled(project: str, environment: str) -> str:
    """String with an expiry: the reconciler looked at this environment recently."""
    return _env(project, environment, "reconciled")


def drift(project: str, environment: str) -> str:
    """String: since when the branch head differs from the deployed commit."""
    return _env(project, environment, "drift")


def last_outcome(project: str, environment: str) -> str:
    """String: ``succeeded`` or ``failed``, how the last finished deployment ended (for ``recovered``)."""
    return _env(project, environment, "outcome")


ENVIRONMENT_KEYS: tuple[Callable[[str, str], str], ...] = (
    history,
    live,
    kept,
    lock,
    waiting,
    reconciled,
    drift,
    last_outcome,
)


# -- one project ------------------------------------------------------------------------------


def seen(project: str) -> str:
    """Hash: delivery id → the deployment it created."""
    return f"{PREFIX}:seen:{project}"


def seen_at(project: str) -> str:
    """Sorted set: delivery id → when it was first seen; ids older than the window are dropped."""
    return f"{PREFIX}:seen:{project}:at"


def seen_v1(project: str, delivery_key: str) -> str:
    """Version 1's string key per delivery (with a 48 h expiry); migrated into :func:`seen`."""
    return f"{PREFIX}:seen:{project}:{delivery_key}"


def project_id(path: str) -> str:
    """String: the numeric GitLab id of the project at ``path`` (paths compare ignoring case)."""
    return f"{PREFIX}:gitlab:project-id:{path.lower()}"


def project_id_asking(path: str) -> str:
    """String with an expiry: a process is asking GitLab for that id (at most one per interval)."""
    return f"{PREFIX}:gitlab:project-id:{path.lower()}:asking"


# -- people -----------------------------------------------------------------------------------

RIGHTS_TTL = 300
"""Seconds a person's access levels are kept before GitLab is asked again (at most 5 minutes)."""


def rights(user_id: int) -> str:
    """Hash with an expiry (:data:`RIGHTS_TTL`): project name → the GitLab user's access level."""
    return f"{PREFIX}:person:{user_id}:rights"


def person_tokens(user_id: int) -> str:
    """Sorted set: the GitLab user's personal API token ids by expiry; expires with the last one."""
    return f"{PREFIX}:person:{user_id}:tokens"


def api_token(token_id: str) -> str:
    """Hash: one personal API token (owner, name, SHA-256 of the token, times); expires with it."""
    return f"{PREFIX}:token:{token_id}"


# -- review apps ------------------------------------------------------------------------------

def reviews(project: str) -> str:
    """Sorted set: merge request iid → when its review app was last deployed (live or stopped).

    Bounded: an iid is removed when its :func:`review` hash is gone (a stopped app's expires)."""
    return f"{PREFIX}:reviews:{project}"


def review(project: str, iid: int) -> str:
    """Hash: one merge request's review app (:data:`REVIEW_FIELDS`); expires once the app stopped."""
    return f"{PREFIX}:review:{project}:{iid}"


def reviews_checked(project: str) -> str:
    """String with an expiry: a worker looked for idle review apps recently (one look per interval)."""
    return f"{PREFIX}:reviews:{project}:checked"


REVIEW_FIELDS = (
    "base",  # the environment of the target branch, whose settings the app is deployed with
    "branch",  # the source branch (statuses' ref)
    "title",  # the merge request's title, for pages (at most 200 characters)
    "sha",  # the newest commit asked for
    "deployment",  # the newest deployment's id (its outbox carries the note and environment stop)
    "state",  # live | stopping | stopped
    "reason",  # why it stopped
    "updated_at",  # when a deployment was last queued
    "note_id",  # the GitLab note on the merge request, edited in place
)


# -- the whole engine -------------------------------------------------------------------------

OUTBOX_DUE = f"{PREFIX}:outbox"
"""Sorted set: deployments with statuses still to deliver, by when they are due."""
OUTBOX_WAKE = f"{PREFIX}:outbox:wake"
"""List: a nudge for couriers blocked waiting for work."""


def outbox_lock(deployment_id: str) -> str:
    """String with an expiry: the courier delivering this deployment's outbox."""
    return f"{PREFIX}:outbox:lock:{deployment_id}"


NOTIFY_DUE = f"{PREFIX}:notify"
"""Sorted set: ``<deployment id>:<event>`` of notifications still to send, by when they are due.

A member leaves when every URL has the message or when its tries run out
(:data:`workers.defaults.NOTIFY_RETRY_DELAYS`), so the set holds only what is in flight."""
NOTIFY_WAKE = f"{PREFIX}:notify:wake"
"""List: a nudge for notifiers blocked waiting for work (trimmed to one entry)."""


def notify_lock(member: str) -> str:
    """String with an expiry: the notifier sending this ``<deployment id>:<event>`` now."""
    return f"{PREFIX}:notify:lock:{member}"


METRICS = f"{PREFIX}:metrics"


def histogram(name: str, label: str) -> str:
    """Hash: cumulative bucket counts, count and sum of one engine histogram."""
    return f"{METRICS}:hist:{name}:{label}"


def counter(name: str) -> str:
    """Hash: label → count of one engine counter."""
    return f"{METRICS}:count:{name}"


# -- people -----------------------------------------------------------------------------------

AUDIT = f"{PREFIX}:audit"
"""Stream: the audit log, one entry per action (:mod:`webhook.audit`), trimmed on every write to
``server.audit_days`` (MINID) and to :data:`workers.defaults.AUDIT_MAX_ENTRIES` entries."""
AUDIT_CONFIG = f"{PREFIX}:audit:config"
"""String: digest of the configuration last loaded, so a reload is logged once, not per process."""


def audit_admin_use(address: str) -> str:
    """String with an expiry: a read with the admin token from this address was logged recently."""
    return f"{PREFIX}:audit:admin-read:{address}"


def sign_in_attempts(kind: str, subject: str) -> str:
    """Counter with a one-minute expiry: sign-in attempts by ``kind`` (address or account)."""
    return f"{PREFIX}:sign-in:{kind}:{subject}"
