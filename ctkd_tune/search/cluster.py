"""Connecting `search` and `validate` to Ray: an existing cluster (--address or RAY_ADDRESS), or a new local one.

    client_auth_from_env("ray://head:10001")    # before Ray is imported (the CLI does it)
    started, context = connect(address, include_dashboard=False)   # local kwargs only apply to a new Ray
    ...
    disconnect(started, logs_to=Path("results/NAME/logs"))   # a local Ray: its session folder goes, logs kept
    cfg = worker_setup(cfg)                    # first thing in a Ray worker (trial or validation run)

A new local Ray binds every port (GCS, raylet, workers, dashboard agent, metrics export) to 127.0.0.1: Ray
takes its node IP from `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (loopback), and binds the metrics endpoint to
localhost when the node IP is. Only the dashboard's own host is the caller's choice (--dashboard-host).

A cluster started by `ray start` or a new local `ray.init` has token authentication on. A ray:// client sends its
token only when RAY_AUTH_MODE=token is in its environment when Ray is imported; otherwise the client server turns
it away and the client only reports a timeout. `client_auth_from_env` sets the mode when a token is at hand
(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), and a failed connection is a one-line error that says
what to check. Auth is never turned off here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ctkd_tune.config import Config, ConfigError

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


LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""A local Ray's node IP is 127.0.0.1 with this (read by Ray at import, so also set on the imported module)."""


def connect(address: str | None, **local: Any) -> tuple[bool, Any]:
    """Join `address` (or RAY_ADDRESS), else start a new local Ray with the keyword arguments `local` (never one
    found on the machine: a cluster is joined only when named).

    Returns (True if this call started or joined Ray and must shut it down, the Ray context or None).
    """
    import ray

    if ray.is_initialized():
        return False, None
    env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        from ctkd_tune.search.compat import keep_ray_node_local

        os.environ.update(LOCAL_ONLY_ENV)
        keep_ray_node_local()  # what the variable means, for a Ray imported before we set it
        # "local": always a new Ray of our own; without an address Ray would join a `ray start` cluster it finds
        return True, ray.init(address="local", logging_level=logging.WARNING, runtime_env={"env_vars": env}, **local)
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


def disconnect(started: bool, logs_to: Path | None = None) -> None:
    """Shut down a Ray this process started or joined; for a local Ray, copy its logs to `logs_to` (if given)
    and remove its session folder (/tmp/ray/session_*), which Ray leaves behind."""
    import ray

    from ctkd_tune.search.compat import local_session_dir

    if not started:
        return
    session = local_session_dir()
    session = Path(session) if session else None
    ray.shutdown()
    if session is None or not session.is_dir():
        return
    if logs_to is not None and (session / "logs").is_dir():
        shutil.copytree(session / "logs", logs_to, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("events", "*.sock", "old"))
    shutil.rmtree(session, ignore_errors=True)
    latest = session.parent / "session_latest"
    if latest.is_symlink() and Path(os.readlink(latest)) in (session, Path(session.name)):
        latest.unlink(missing_ok=True)


def worker_setup(cfg: Config) -> Config:
    """First thing in a Ray worker: quiet progress bars, CPU unless Ray assigned a GPU (a CPU trial never takes a
    GPU another trial was given), torch threads = the CPUs Ray assigned (or train.threads). A new Config."""
    import ray
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if cfg.train.device == "auto" and not ray.get_gpu_ids():
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="cpu"))
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(cfg.train.threads or max(1, int(cpus)))
    return cfg


def check_local_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """A local search: the request against this machine, before Ray starts (a cluster is checked once joined)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cpus_per_trial > cpus:
        raise ConfigError(f"--cpus-per-trial must be in (0, {cpus}] (this machine's CPUs), got {cpus_per_trial:g}")
    if gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
        if gpus_per_trial > gpus:
            raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g} but this machine has {gpus} GPUs")


def trials_that_fit(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the joined cluster runs at once; ConfigError if not even one fits."""
    import ray

    resources = ray.cluster_resources()
    cpus = resources.get("CPU", 1.0)
    if cpus_per_trial <= 0 or cpus_per_trial > cpus:
        raise ConfigError(f"--cpus-per-trial must be in (0, {cpus:g}] (the cluster's CPUs), got {cpus_per_trial}")
    limit = int(cpus // cpus_per_trial)
    if gpus_per_trial > 0:
        gpus = resources.get("GPU", 0.0)
        if gpus_per_trial > gpus:
            raise ConfigError(f"--gpus-per-trial {gpus_per_trial} but the cluster has {gpus:g} GPUs")
        limit = min(limit, int(gpus // gpus_per_trial))
    return max(1, limit)


def open_cluster(address: str | None, dashboard_host: str = "127.0.0.1") -> bool:
    """`connect`, saying where the dashboard is and how to log in; True if we started the Ray (then ours to stop).

    A new local Ray turns token auth on (unless RAY_AUTH_MODE says otherwise): it is never switched off here.
    """
    if not address and dashboard_host not in ("127.0.0.1", "localhost", "::1"):
        print(f"ctkd-tune: WARNING: the Ray dashboard will listen on {dashboard_host}: whoever reaches it with "
              "the token can run code here (Jobs API, CVE-2023-48022). Prefer 127.0.0.1 and an SSH tunnel.")
    started, context = connect(address, include_dashboard=True, dashboard_host=dashboard_host)
    url = getattr(context, "dashboard_url", None)
    if started and url:
        port = url.rsplit(":", 1)[-1]
        print(f"ctkd-tune: Ray dashboard: http://{url}")
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            print("ctkd-tune: token auth is on: the page asks for the token; print it with `ray get-auth-token`"
                  f" (remote: ssh -L {port}:localhost:{port} HOST, then open http://localhost:{port})")
        else:
            print(f"ctkd-tune: WARNING: Ray token auth is off (RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE')!r})")
    return started


@contextmanager
def stop_on_signals(stopped: list[str]):
    """SIGTERM and SIGHUP (timeout, Slurm, Kubernetes, a closed terminal) act as Ctrl-C: Tune stops the trials at
    their last checkpoint and saves its state; `stopped` records the signal."""
    def handle(signum, frame) -> None:
        stopped.append(signal.Signals(signum).name)
        handler = signal.getsignal(signal.SIGINT)  # Tune's while it runs, else Python's KeyboardInterrupt
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- plain Ray tasks, for `validate` (which imports no Ray itself) ---------------------------------------------

def cluster_cpus() -> float:
    """The CPUs of the Ray this process is connected to."""
    import ray

    return ray.cluster_resources().get("CPU", 0)


def remote_task(fn, cpus: float, gpus: float):
    """`fn` as a Ray task taking `cpus` CPUs and `gpus` GPUs, never retried: returns a function that submits one
    call and returns its handle (`wait_one` gives its result)."""
    import ray

    return ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(fn).remote


def wait_one(handles: list) -> tuple[Any, Any, Exception | None]:
    """Block until one of `handles` finishes: (that handle, its result, None), or (handle, None, the exception)
    when the task raised."""
    import ray

    ready, _ = ray.wait(list(handles), num_returns=1)
    try:
        return ready[0], ray.get(ready[0]), None
    except Exception as err:
        return ready[0], None, err


def cancel_tasks(handles) -> None:
    """Cancel the tasks of `handles` (force: a running one is killed)."""
    import ray

    for handle in handles:
        ray.cancel(handle, force=True)
