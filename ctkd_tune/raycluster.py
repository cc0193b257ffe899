"""Connecting `search` and `validate` to Ray: an existing cluster (--address or RAY_ADDRESS), or a new local one.

    client_auth_from_env("ray://head:10001")    # before Ray is imported (the CLI does it)
    started, context = connect(address, include_dashboard=False)   # local kwargs only apply to a new Ray
    ...
    if started: ray.shutdown()

A cluster started by `ray start` or a new local `ray.init` has token authentication on. A ray:// client sends its
token only when RAY_AUTH_MODE=token is in its environment when Ray is imported; otherwise the client server turns
it away and the client only reports a timeout. `client_auth_from_env` sets the mode when a token is at hand
(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), and a failed connection is a one-line error that says
what to check. Auth is never turned off here.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from ctkd_tune.config import ConfigError

FORWARDED_ENV = ("CTKD_TUNE_CACHE", "RAY_CHDIR_TO_TRIAL_DIR", "RAY_AIR_NEW_OUTPUT",
                 "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S")
"""Variables every worker (and, with ray://, the remote Tune driver) gets from this process."""


def client_auth_from_env(address: str | None) -> None:
    """For a ray:// address with no RAY_AUTH_MODE set: send the token if one is available. Before `import ray`."""
    if not address or not address.startswith("ray://") or "RAY_AUTH_MODE" in os.environ or "ray" in sys.modules:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def connect(address: str | None, **local: Any) -> tuple[bool, Any]:
    """Join `address` (or RAY_ADDRESS), else start a local Ray with the keyword arguments `local`.

    Returns (True if this call started or joined Ray and must shut it down, the Ray context or None).
    """
    import ray

    if ray.is_initialized():
        return False, None
    env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        return True, ray.init(logging_level=logging.WARNING, runtime_env={"env_vars": env}, **local)
    print(f"ctkd-tune: connecting to the Ray cluster at {address}")
    try:
        return True, ray.init(address=address, logging_level=logging.WARNING, runtime_env={"env_vars": env})
    except Exception as err:  # ConnectionError, TimeoutError, AuthenticationError, ...: all "cannot reach it"
        lines = [line for line in str(err).splitlines() if line.strip()]
        hint = ""
        if address.startswith("ray://") and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = ("; if the cluster uses token auth (Ray's default), set RAY_AUTH_MODE=token and its token in "
                    "RAY_AUTH_TOKEN or ~/.ray/auth_token (`ray get-auth-token` on the head node)")
        raise ConfigError(f"--address {address}: cannot connect to Ray ({type(err).__name__}: "
                          f"{lines[0][:200] if lines else 'no detail'}){hint}") from None
