"""The engine's exceptions share one root, so a caller can tell "pushdeploy said no" from a bug.

Each exception lives in the module whose job it describes; this is the tree they form::

    EngineError
    ├── ConfigError               workers.config      the configuration cannot be used (every problem)
    ├── SecretError (ValueError)  workers.secrets     a secret value or key is malformed or undecryptable
    │   └── NoKeys                                     fernet: values but no PUSHDEPLOY_SECRET_KEYS
    ├── SchemaError               workers.migrations  Redis holds a layout this release cannot use
    ├── RecordError
    │   ├── UnknownDeployment (KeyError)  workers.deployments  no record under that id
    │   └── InvalidTransition             workers.deployments  the state machine forbids the move
    ├── OperationError            workers.operations  an operator's request cannot be done
    │   ├── InvalidRequest                             a bad sha, ref or environment
    │   ├── NotRollbackable                            only a succeeded deployment can be rolled back to
    │   └── NotCancelable         workers.control      it already ended
    ├── SourceError               workers.source      git could not produce the commit
    │   └── InvalidSha                                 refused before any git command
    ├── TargetError (ValueError)  workers.targets     a ``targets`` entry cannot be used
    ├── RemoteError               workers.remote      a command on a target host did not succeed
    ├── ForgeError                workers.forge       GitLab's API did not do what was asked
    │   ├── TransientForgeError                        worth trying again later
    │   ├── ForgeRejected                              refused (4xx): trying again will not help
    │   │   └── PipelineGone                           the pinned pipeline was deleted
    │   └── HookSetupError        workers.gitlab_hooks the webhook could not be set up
    └── RunStopped                                     a deployment's run ends early (its reason)
        ├── StepFailed            workers.pipeline    a build or deploy command failed or ran out of time
        ├── HealthCheckFailed     workers.pipeline    the release did not answer healthy
        ├── Canceled              workers.pipeline    someone asked it to stop
        ├── LaneLost              workers.pipeline    its lane's lock expired under it
        ├── RunAsError            workers.steps       the worker cannot run steps as run_as
        ├── RolloutFailed         workers.rollout     a target host failed; switched hosts went back
        └── Stopped               workers.rollout     a remote step ended by cancel or a lost lane

The web tier maps them to HTTP answers; the engine never speaks HTTP.
"""

from __future__ import annotations


class EngineError(Exception):
    """Something pushdeploy refused or could not do, as opposed to a bug."""


class RecordError(EngineError):
    """A deployment record cannot be read or changed as asked."""


class RunStopped(EngineError):
    """A deployment's run ends before it succeeded; the message is its reason."""
