"""The OpenAPI 3.0 description of ``/api/v1``, served at ``/api/v1/openapi.json``.

Kept next to the endpoints and checked against the real server by the tests (schemathesis), so the
document and the behaviour cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from workers.audit import Action
from workers.config import NotifyEvent, Settings
from workers.notifications import Delivery
from workers.targets import HostState

NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"}
NAME_FILTER = {"type": "string", "pattern": "^([A-Za-z0-9][A-Za-z0-9._-]{0,62})?$"}
ENVIRONMENT_FILTER = {
    "type": "string",
    "pattern": "^([A-Za-z0-9][A-Za-z0-9._-]{0,62}|review/[1-9][0-9]{0,11})?$",
}
"""An environment's name, or a merge request's review app: ``review/<iid>``."""
IID = {"type": "string", "pattern": "^[1-9][0-9]{0,11}$"}
DEPLOYMENT_ID = {"type": "string", "minLength": 1, "maxLength": 64}
STATES = ["queued", "running", "succeeded", "failed", "canceled"]
HOST_STATES = [str(state) for state in HostState]
NOTIFY_EVENTS = [str(event) for event in NotifyEvent]
NOTIFY_DELIVERIES = [str(delivery) for delivery in Delivery]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


UNAUTHORIZED = _error("missing or wrong bearer token")
ACTIONS = [str(action) for action in Action]
NOT_FOUND = _error("no such deployment, project or environment, or one the caller may not see")
FORBIDDEN = _error(
    "the caller's GitLab role does not allow this here (Developer, or Maintainer when protected)"
)
UNAVAILABLE = _error("GitLab cannot say what the caller may do now: refused, never guessed")
NOT_A_PERSON = _error("tokens belong to GitLab users: the admin token has none, and a token cannot make one")


def document(settings: Settings) -> dict[str, Any]:
    """The description of this server's API: project and environment names are its own."""
    projects = sorted(settings.projects)
    environments = sorted({e for p in settings.projects.values() for e in p.environments})
    deployment_path = [_path_param("deployment_id", DEPLOYMENT_ID)]
    environment_path = [
        _path_param("project", {**NAME, "enum": projects}),
        _path_param("environment", {**NAME, "enum": environments}),
    ]
    queued = _json("queued", "Queued")
    queued["links"] = {
        name: {"operationId": operation, "parameters": {"deployment_id": "$response.body#/deployment"}}
        for name, operation in (
            ("show", "showDeployment"),
            ("log", "deploymentLog"),
            ("cancel", "cancelDeployment"),
            ("rollback", "rollbackTo"),
        )
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "pushdeploy API",
            "version": "1",
            "description": (
                "Deployments of pushdeploy: list, show, log, deploy, roll back, cancel; personal tokens; "
                "the audit log. "
                "Callers are the admin token, a personal token, or a browser session (with its CSRF "
                "token in X-CSRF-Token for unsafe methods); what they may do follows their GitLab role."
            ),
        },
        "servers": [{"url": settings.server.public_url}],
        "security": [{"bearer": []}, {"session": [], "csrf": []}],
        "paths": {
            "/api/v1/deployments": {
                "get": {
                    "operationId": "listDeployments",
                    "summary": "Deployments, newest first",
                    "parameters": [
                        {"name": "project", "in": "query", "schema": NAME_FILTER},
                        {"name": "environment", "in": "query", "schema": ENVIRONMENT_FILTER},
                        {"name": "state", "in": "query", "schema": {"type": "string", "enum": STATES}},
                        {
                            "name": "sha",
                            "in": "query",
                            "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{0,64}$"},
                        },
                        {"name": "since", "in": "query", "schema": {"type": "number", "minimum": 0}},
                        {"name": "until", "in": "query", "schema": {"type": "number", "minimum": 0}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                    ],
                    "responses": {
                        "200": _json("deployments", "DeploymentList"),
                        "400": _error("a filter is malformed"),
                        "401": UNAUTHORIZED,
                        "503": UNAVAILABLE,
                        "404": _error("no such project"),
                    },
                }
            },
            "/api/v1/audit": {
                "get": {
                    "operationId": "auditLog",
                    "summary": "Audit entries, newest first; send a page's `next` as `cursor` for more",
                    "parameters": [
                        {"name": "project", "in": "query", "schema": NAME_FILTER},
                        {"name": "environment", "in": "query", "schema": NAME_FILTER},
                        {"name": "action", "in": "query", "schema": {"type": "string", "enum": ACTIONS}},
                        {"name": "who", "in": "query", "schema": {"type": "string", "maxLength": 255}},
                        {"name": "since", "in": "query", "schema": {"type": "number", "minimum": 0}},
                        {"name": "until", "in": "query", "schema": {"type": "number", "minimum": 0}},
                        {
                            "name": "cursor",
                            "in": "query",
                            "schema": {"type": "string", "pattern": "^([0-9]{1,19}-[0-9]{1,19})?$"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                    ],
                    "responses": {
                        "200": _json("a page of entries", "AuditPage"),
                        "400": _error("a filter or the cursor is malformed"),
                        "401": UNAUTHORIZED,
                        "403": _error("reading the audit log needs Maintainer rights or the admin token"),
                    },
                }
            },
            "/api/v1/deployments/{deployment_id}": {
                "get": {
                    "operationId": "showDeployment",
                    "parameters": deployment_path,
                    "responses": {
                        "200": _json("the deployment with its steps", "Deployment"),
                        "401": UNAUTHORIZED,
                        "503": UNAVAILABLE,
                        "404": NOT_FOUND,
                    },
                }
            },
            "/api/v1/deployments/{deployment_id}/log": {
                "get": {
                    "operationId": "deploymentLog",
                    "summary": "Log lines after `after`; `follow=1` streams NDJSON until the deployment ends",
                    "parameters": [
                        *deployment_path,
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "string", "pattern": "^[0-9]{1,19}-[0-9]{1,19}$"},
                        },
                        {"name": "follow", "in": "query", "schema": {"type": "string", "enum": ["0", "1"]}},
                    ],
                    "responses": {
                        "200": {
                            "description": "log lines (JSON), or an NDJSON stream with follow=1",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Log"}},
                                "application/x-ndjson": {"schema": {"type": "string"}},
                            },
                        },
                        "400": _error("after is malformed"),
                        "401": UNAUTHORIZED,
                        "503": UNAVAILABLE,
                        "404": NOT_FOUND,
                    },
                }
            },
            "/api/v1/deployments/{deployment_id}/cancel": {
                "post": {
                    "operationId": "cancelDeployment",
                    "parameters": deployment_path,
                    "responses": {
                        "200": _json("a queued deployment was canceled", "Canceled"),
                        "202": _json("a running deployment was asked to stop", "Canceled"),
                        "401": UNAUTHORIZED,
                        "403": FORBIDDEN,
                        "503": UNAVAILABLE,
                        "404": NOT_FOUND,
                        "409": _error("the deployment already ended"),
                    },
                }
            },
            "/api/v1/projects/{project}/reviews": {
                "get": {
                    "operationId": "listReviews",
                    "summary": "Review apps, live and recently stopped, most recently deployed first",
                    "parameters": [_path_param("project", {**NAME, "enum": projects})],
                    "responses": {
                        "200": _json("the review apps", "Reviews"),
                        "401": UNAUTHORIZED,
                        "404": NOT_FOUND,
                    },
                }
            },
            "/api/v1/projects/{project}/reviews/{iid}/stop": {
                "post": {
                    "operationId": "stopReview",
                    "summary": "Stop a review app: a worker runs review.stop and removes its directories",
                    "parameters": [
                        _path_param("project", {**NAME, "enum": projects}),
                        _path_param("iid", IID),
                    ],
                    "responses": {
                        "202": _json("the app is stopping", "Stopping"),
                        "401": UNAUTHORIZED,
                        "404": _error("no such project, or no live review app for that merge request"),
                    },
                }
            },
            "/api/v1/deployments/{deployment_id}/rollback": {
                "post": {
                    "operationId": "rollbackTo",
                    "summary": "Deploy this earlier successful deployment again, reusing its release if kept",
                    "parameters": deployment_path,
                    "responses": {
                        "202": queued,
                        "400": _error("not possible"),
                        "401": UNAUTHORIZED,
                        "403": FORBIDDEN,
                        "503": UNAVAILABLE,
                        "404": NOT_FOUND,
                        "409": _error("the deployment did not succeed"),
                    },
                }
            },
            "/api/v1/projects/{project}/environments/{environment}/deployments": {
                "post": {
                    "operationId": "deploy",
                    "summary": "Deploy a sha, or a branch or tag (default: the environment's branch)",
                    "parameters": environment_path,
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/DeployRequest"}}
                        },
                    },
                    "responses": {
                        "202": queued,
                        "400": _error("bad ref or sha"),
                        "401": UNAUTHORIZED,
                        "403": FORBIDDEN,
                        "503": UNAVAILABLE,
                        "404": NOT_FOUND,
                    },
                }
            },
            "/api/v1/tokens": {
                "get": {
                    "operationId": "listTokens",
                    "summary": "The caller's personal API tokens (never the tokens themselves)",
                    "responses": {
                        "200": _json("the caller's live tokens, newest first", "TokenList"),
                        "401": UNAUTHORIZED,
                        "403": NOT_A_PERSON,
                    },
                },
                "post": {
                    "operationId": "createToken",
                    "summary": "A new personal token with the caller's rights, shown in this answer only",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/TokenRequest"}}
                        },
                    },
                    "responses": {
                        "201": _json("the token, shown once", "NewToken"),
                        "400": _error("bad name or expires_at, or too many tokens"),
                        "401": UNAUTHORIZED,
                        "403": NOT_A_PERSON,
                    },
                },
            },
            "/api/v1/tokens/{token_id}": {
                "delete": {
                    "operationId": "revokeToken",
                    "parameters": [_path_param("token_id", {"type": "string", "pattern": "^[0-9a-f]{16}$"})],
                    "responses": {
                        "204": {"description": "revoked: it no longer works"},
                        "401": UNAUTHORIZED,
                        "403": NOT_A_PERSON,
                        "404": _error("the caller has no such token"),
                    },
                }
            },
            "/api/v1/projects/{project}/environments/{environment}/rollback": {
                "post": {
                    "operationId": "rollbackPrevious",
                    "summary": "Roll back to the newest successful deployment before the live one",
                    "parameters": environment_path,
                    "responses": {
                        "202": queued,
                        "401": UNAUTHORIZED,
                        "403": FORBIDDEN,
                        "503": UNAVAILABLE,
                        "404": NOT_FOUND,
                        "409": _error("nothing earlier to roll back to"),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the admin token, or a personal token (pdt_…)",
                },
                "session": {"type": "apiKey", "in": "cookie", "name": "pushdeploy_session"},
                "csrf": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-CSRF-Token",
                    "description": "the session's CSRF token, for POST and DELETE with the session",
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "Deployment": {
                    "type": "object",
                    "required": ["id", "project", "environment", "ref", "sha", "state", "created_at", "url"],
                    "properties": {
                        "id": {"type": "string"},
                        "project": {"type": "string"},
                        "environment": {"type": "string"},
                        "ref": {"type": "string"},
                        "sha": {"type": "string"},
                        "previous_sha": {"type": "string"},
                        "pusher": {"type": "string", "description": "the GitLab user who pushed"},
                        "trigger": {"type": "string"},
                        "requested_by": {
                            "type": "string",
                            "description": "who asked for a manual deploy or a rollback",
                        },
                        "canceled_by": {"type": "string", "description": "who canceled it"},
                        "triggered_by": {
                            "type": "string",
                            "description": "how and by whom: `push by X`, `deploy by Y`, `rollback by Z`",
                        },
                        "commit_title": {
                            "type": "string",
                            "description": "the commit's title (first line), from the push or from git; "
                            "empty until known",
                        },
                        "commit_author": {"type": "string", "description": "the commit author's name"},
                        "state": {"type": "string", "enum": STATES},
                        "reason": {"type": "string"},
                        "created_at": {"type": "number"},
                        "started_at": {"type": "number"},
                        "finished_at": {"type": "number"},
                        "release": {"type": "string"},
                        "recipe": {
                            "type": "string",
                            "description": (
                                'where the steps came from: "repo@<short sha>" (the commit\'s '
                                '.pushdeploy.toml) or "server"; "" until the run has read it'
                            ),
                        },
                        "effective_steps": {"$ref": "#/components/schemas/EffectiveSteps"},
                        "url": {"type": "string"},
                        "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
                        "hosts": {
                            "type": "array",
                            "description": "each target host in targets order (empty without targets)",
                            "items": {"$ref": "#/components/schemas/Host"},
                        },
                        "notifications": {
                            "type": "array",
                            "description": "the notifications this deployment queued (one deployment only)",
                            "items": {"$ref": "#/components/schemas/Notification"},
                        },
                    },
                },
                "Notification": {
                    "type": "object",
                    "required": ["event", "type", "title", "delivery", "tries", "problem"],
                    "properties": {
                        "event": {"type": "string", "enum": NOTIFY_EVENTS},
                        "type": {"type": "string", "enum": ["info", "success", "warning", "failure"]},
                        "title": {"type": "string"},
                        "delivery": {"type": "string", "enum": NOTIFY_DELIVERIES},
                        "tries": {"type": "integer", "description": "failed tries so far"},
                        "problem": {"type": "string", "description": "why the last try failed; URLs masked"},
                    },
                },
                "EffectiveSteps": {
                    "type": "object",
                    "nullable": True,
                    "description": "the steps a deployment runs; null before they are read, or when refused",
                    "required": ["build", "deploy", "health_check", "timeout", "env", "review"],
                    "properties": {
                        "build": {"type": "array", "items": {"type": "string"}},
                        "deploy": {"type": "array", "items": {"type": "string"}},
                        "health_check": {
                            "type": "object",
                            "nullable": True,
                            "properties": {"url": {"type": "string"}, "timeout": {"type": "number"}},
                        },
                        "timeout": {"type": "integer", "description": "seconds for the whole deployment"},
                        "env": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "names of the variables the steps get (values are not shown)",
                        },
                        "review": {
                            "type": "object",
                            "properties": {
                                "deploy": {"type": "array", "items": {"type": "string"}},
                                "stop": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                    },
                },
                "Host": {
                    "type": "object",
                    "required": ["host", "state", "detail"],
                    "properties": {
                        "host": {"type": "string", "description": "host, or host:port when not 22"},
                        "state": {"type": "string", "enum": HOST_STATES},
                        "detail": {"type": "string", "description": "what was shipped, or what failed"},
                    },
                },
                "Step": {
                    "type": "object",
                    "required": ["phase", "index", "command", "exit_code", "duration"],
                    "properties": {
                        "phase": {"type": "string"},
                        "index": {"type": "integer"},
                        "command": {"type": "string"},
                        "exit_code": {"type": "integer", "nullable": True},
                        "duration": {"type": "number"},
                        "truncated": {"type": "boolean"},
                        "timed_out": {"type": "boolean"},
                        "tail": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "DeploymentList": {
                    "type": "object",
                    "required": ["deployments"],
                    "properties": {
                        "deployments": {"type": "array", "items": {"$ref": "#/components/schemas/Deployment"}}
                    },
                },
                "Log": {
                    "type": "object",
                    "required": ["lines", "state"],
                    "properties": {
                        "state": {"type": "string", "enum": STATES},
                        "lines": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "at", "kind", "text"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "at": {"type": "number"},
                                    "kind": {"type": "string", "enum": ["step", "out", "info"]},
                                    "text": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "DeployRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "ref": {
                            "type": "string",
                            "description": "branch or tag",
                            "pattern": "^(?!.*[.][.])([A-Za-z0-9][A-Za-z0-9._/-]{0,254})?$",
                        },
                        "sha": {
                            "type": "string",
                            "description": "40 or 64 hex characters",
                            "pattern": "^([0-9a-fA-F]{40}|[0-9a-fA-F]{64})?$",
                        },
                        "by": {
                            "type": "string",
                            "description": (
                                "with the admin token only: who is using it, recorded as a claim next "
                                "to it (`admin (says alice)`); any other caller is recorded as itself"
                            ),
                            "maxLength": 255,
                        },
                    },
                },
                "Queued": {
                    "type": "object",
                    "required": ["deployment", "url"],
                    "properties": {
                        "deployment": {"type": "string"},
                        "url": {"type": "string"},
                        "to": {"type": "string"},
                    },
                },
                "AuditPage": {
                    "type": "object",
                    "required": ["entries", "next"],
                    "properties": {
                        "entries": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}},
                        "next": {
                            "type": "string",
                            "nullable": True,
                            "description": "the cursor of the next page; null after the last",
                        },
                    },
                },
                "AuditEntry": {
                    "type": "object",
                    "required": ["id", "at", "who", "action", "from"],
                    "properties": {
                        "id": {"type": "string"},
                        "at": {"type": "number", "description": "Unix time"},
                        "who": {"type": "string"},
                        "via": {"type": "string", "description": "admin_token, session or token"},
                        "action": {"type": "string", "enum": ACTIONS},
                        "project": {"type": "string"},
                        "environment": {"type": "string"},
                        "deployment": {"type": "string"},
                        "from": {"type": "string", "description": "the client, through trusted proxies"},
                        "detail": {"type": "string"},
                    },
                },
                "TokenRequest": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 100},
                        "expires_at": {
                            "type": "string",
                            "description": "a date (end of that day, UTC) or an ISO 8601 time; "
                            "default in 90 days, at most auth.token_max_days",
                        },
                    },
                },
                "Token": {
                    "type": "object",
                    "required": ["id", "name", "owner", "created_at", "expires_at", "last_used_at"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "owner": {"type": "string", "description": "the GitLab username"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "expires_at": {"type": "string", "format": "date-time"},
                        "last_used_at": {"type": "string", "format": "date-time", "nullable": True},
                    },
                },
                "NewToken": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Token"},
                        {
                            "type": "object",
                            "required": ["token"],
                            "properties": {"token": {"type": "string", "description": "pdt_…, shown once"}},
                        },
                    ]
                },
                "TokenList": {
                    "type": "object",
                    "required": ["tokens"],
                    "properties": {
                        "tokens": {"type": "array", "items": {"$ref": "#/components/schemas/Token"}}
                    },
                },
                "Reviews": {
                    "type": "object",
                    "required": ["reviews"],
                    "properties": {
                        "reviews": {"type": "array", "items": {"$ref": "#/components/schemas/Review"}}
                    },
                },
                "Review": {
                    "type": "object",
                    "required": ["iid", "environment", "branch", "sha", "state", "url", "updated_at"],
                    "properties": {
                        "iid": {"type": "integer"},
                        "environment": {"type": "string"},
                        "target_environment": {"type": "string"},
                        "branch": {"type": "string"},
                        "title": {"type": "string"},
                        "sha": {"type": "string"},
                        "deployment": {"type": "string"},
                        "state": {"type": "string", "enum": ["live", "stopping", "stopped"]},
                        "reason": {"type": "string"},
                        "updated_at": {"type": "number"},
                        "url": {"type": "string"},
                    },
                },
                "Stopping": {
                    "type": "object",
                    "required": ["stopping"],
                    "properties": {"stopping": {"type": "string"}},
                },
                "Canceled": {
                    "type": "object",
                    "required": ["deployment", "state"],
                    "properties": {
                        "deployment": {"type": "string"},
                        "state": {"type": "string", "enum": STATES},
                    },
                },
            },
        },
    }
