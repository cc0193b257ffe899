"""`ctkd-tune search --submit`: the same search as a Ray Job on a running cluster, through the Jobs API.

    ray start --head --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1     # or any cluster you reach
    ctkd-tune search --preset tiny --name smoke --submit --address http://127.0.0.1:8265
    ray job logs --follow JOB_ID --address http://127.0.0.1:8265               # printed by the command
    ctkd-tune search --name smoke --resume --submit --address ...               # after the job was stopped

The job's entrypoint is this very command line with `--submit` dropped, `--address auto` (the driver runs on the
head node and joins its cluster) and `--results-dir` made absolute, so the job writes where you asked (on the
head node's file system). Its metadata carries the experiment name and folder. Stopping the job (dashboard or
`ray job stop`) sends the driver SIGTERM: the search stops like Ctrl-C and `--resume` continues it.

The Jobs API runs code on the cluster: it is reached with the cluster's token (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, as `ray get-auth-token` prints it) and should stay on localhost or an
SSH tunnel (CVE-2023-48022).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from ctkd_tune.config import ConfigError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
AGENT_WAIT_S = 120.0  # how long to wait for the job agent of a head node that is still starting
# flags of `search` that take a value, so that "--address X" is removed as a pair
_ADDRESS_FLAGS = ("--address",)


def entrypoint(argv: list[str], results_dir: str) -> str:
    """The job's command: `python -m ctkd_tune.cli search ARGS` without --submit/--address, with `--address auto`
    and an absolute --results-dir."""
    args, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--submit" or any(arg.startswith(f"{flag}=") for flag in (*_ADDRESS_FLAGS, "--results-dir")):
            continue
        if arg in (*_ADDRESS_FLAGS, "--results-dir"):
            skip = True
            continue
        args.append(arg)
    if not args or args[0] != "search":
        args.insert(0, "search")
    args += ["--address", "auto", "--results-dir", str(Path(results_dir).resolve())]
    return shlex.join(["python", "-m", "ctkd_tune.cli", *args])


def auth_headers() -> dict[str, str]:
    """The cluster token as an Authorization header, from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = path.read_text().strip() if path.is_file() else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def submit(argv: list[str], name: str, results_dir: str, address: str | None = None) -> str:
    """Submit the search as a job; print its id, the dashboard URL and how to follow, stop and resume it."""
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    if not address.startswith(("http://", "https://")):
        raise ConfigError(f"--submit needs the dashboard's address (http://HOST:8265), got --address {address}")
    try:
        client = JobSubmissionClient(address, headers=auth_headers())
    except Exception as err:  # ConnectionError, an auth failure, ...: one line that says what to check
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise ConfigError(f"--submit: cannot reach the Ray Jobs API at {address} ({type(err).__name__}: "
                          f"{lines[0][:200] if lines else 'no detail'}); is the token in RAY_AUTH_TOKEN or "
                          "~/.ray/auth_token?") from None
    directory = Path(results_dir).resolve() / name
    job = dict(entrypoint=entrypoint(argv, results_dir), metadata={"experiment": name, "results": str(directory)},
               submission_id=f"ctkd-tune-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(**job)
            break
        except RuntimeError as err:  # a head node started moments ago has no job agent yet: wait for it
            if "No available agent" in str(err) and time.monotonic() < deadline:
                time.sleep(2)
                continue
            raise ConfigError(f"--submit: the Jobs API at {address} refused the job: "
                              f"{str(err).splitlines()[0][:200]}") from None
    print(f"submitted job {job_id} (experiment {name!r}, results in {directory} on the head node)")
    print(f"dashboard: {address}/#/jobs/{job_id}   (the page asks for the token: `ray get-auth-token`)")
    print(f"follow:    ray job logs --follow {job_id} --address {address}")
    print(f"progress:  ctkd-tune status --experiment {directory}")
    print(f"stop:      ray job stop {job_id} --address {address}   (then continue with: "
          f"ctkd-tune search --name {name} --resume --submit --address {address})")
    sys.stdout.flush()
    return job_id
