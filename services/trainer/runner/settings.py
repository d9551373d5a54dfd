"""Settings of the job runner (environment prefix ``CNCLIP_RUNNER_``; the Redis URL and the
data root are shared with every service as ``CNCLIP_REDIS_URL`` / ``CNCLIP_DATA_ROOT``)."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings


class RunnerSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="CNCLIP_RUNNER_", extra="ignore")

    python: str = sys.executable
    # Name of this machine in job records; the address other nodes reach it on (multi-node).
    host: str = socket.gethostname()
    advertise_addr: str = "127.0.0.1"
    master_port_base: int = 29500
    # Forced device (e.g. "cpu" on a machine without GPU); empty keeps the spec's choice.
    device_override: str = ""
    heartbeat_s: float = 2.0
    # A running job whose runner has not reported for this long is taken as orphaned.
    stale_after_s: float = 60.0
    recovery_interval_s: float = 15.0
    stop_grace_s: float = 15.0
    max_attempts: int = 3
    # How long a running job rides out an unreachable Redis (its child keeps training) before
    # the runner gives up on it.
    redis_outage_s: float = 1800.0
    poll_s: float = 0.25

    @property
    def runs_dir(self) -> Path:
        return Path(self.data_root) / "runs"
