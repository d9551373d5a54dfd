"""Settings of the control service (environment prefix ``CNCLIP_CONTROL_``; the Redis URL and
the data root are shared with the other services as ``CNCLIP_REDIS_URL`` / ``CNCLIP_DATA_ROOT``)."""
from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings


class ControlSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="CNCLIP_CONTROL_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Every route but /healthz needs it. Without one, a loopback-only service makes up a
    # random token at start (printed once); any other address refuses to start.
    token: SecretStr | None = None
    token_file: Path | None = Field(None, description="where a made-up token is written (mode 600)")
    # When the data root is visible here, a job naming missing inputs fails at submission.
    check_inputs: bool = True
    status_jobs: int = Field(50, ge=1, le=1000)
    # How stale /api/status may be; requests within it share one read of Redis.
    status_cache_s: float = Field(0.5, ge=0, le=60)
    sse_ping_s: float = Field(15.0, gt=0)
    # Capacity of job event streams (services/control/followers.py): jobs followed at once (one
    # Redis connection each), followers in all, and batches queued per follower before it
    # catches up from Redis instead.
    sse_max_streams: int = Field(200, ge=1, le=10_000)
    sse_max_followers: int = Field(5000, ge=1, le=100_000)
    sse_queue_batches: int = Field(64, ge=1, le=10_000)
    # The session cookie is marked Secure when this is set or the request came over HTTPS;
    # behind a TLS proxy, list the proxy's address in forwarded_allow_ips so its
    # X-Forwarded-Proto is believed (and nobody else's).
    secure_cookies: bool = False
    forwarded_allow_ips: str = ""
    # A spec is a few KB; bodies beyond this are refused (413) before they are read.
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    # Wrong sign-in tries per client address and window before 429.
    sign_in_failures: int = Field(10, ge=1)
    sign_in_window_s: float = Field(60.0, gt=0)
    log_level: str = "info"
    # The search service (services/search) that /api/search... is proxied to, and the largest
    # picture a search by picture may upload (the one body allowed past max_body_bytes).
    search_url: str = "http://127.0.0.1:8700"
    search_timeout_s: float = Field(60.0, gt=0)
    search_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
