"""Where the control service is and the token it wants: ``--url``/``--token``, then the
environment (``CNCLIP_CONTROL_URL``/``CNCLIP_CONTROL_TOKEN``), then the local stack's
environment file (``scripts/stack.sh``: ``<data root>.stack/stack.env``), then the compose
``.env`` of the current folder (``cnclip secrets``). The token is never printed."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = "8000"


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None = field(repr=False)  # kept out of reprs, so out of any error message
    source: str  # where the URL came from, for the error when it cannot be reached


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (the format honcho and compose read); anything else is skipped."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip().removeprefix("export ").strip()] = value
    return values


def stack_env_file(environ: dict[str, str]) -> Path:
    """The env file ``scripts/stack.sh`` writes (its state folder sits next to the data root)."""
    state = environ.get("CNCLIP_STACK_STATE_DIR")
    if state:
        return Path(state) / "stack.env"
    root = Path(environ.get("CNCLIP_DATA_ROOT") or "./data")
    return root.parent / f"{root.name}.stack" / "stack.env"


def _from_files(environ: dict[str, str]) -> tuple[str | None, str | None, str]:
    for path in (stack_env_file(environ), Path.cwd() / ".env"):
        values = read_env_file(path)
        token = values.get("CNCLIP_CONTROL_TOKEN")
        if token:
            host = values.get("CNCLIP_CONTROL_HOST") or "127.0.0.1"
            if host in ("0.0.0.0", "::"):
                host = "127.0.0.1"
            port = values.get("CNCLIP_CONTROL_PORT") or DEFAULT_PORT
            return f"http://{host}:{port}", token, str(path)
    return None, None, ""


def resolve(url: str | None, token: str | None, environ: dict[str, str] | None = None) -> Target:
    environ = dict(os.environ if environ is None else environ)
    source = "--url" if url else ""
    if not url and environ.get("CNCLIP_CONTROL_URL"):
        url, source = environ["CNCLIP_CONTROL_URL"], "CNCLIP_CONTROL_URL"
    token = token or environ.get("CNCLIP_CONTROL_TOKEN") or None
    if not url:
        # A file's token goes only to that file's own address: never to a URL given elsewhere.
        file_url, file_token, path = _from_files(environ)
        if file_url:
            url, source = file_url, path
            token = token or file_token
    if not url:
        url, source = f"http://127.0.0.1:{DEFAULT_PORT}", "the default address"
    return Target(url=url.rstrip("/"), token=token, source=source)
