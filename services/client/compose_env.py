"""``cnclip secrets``: writes ``.env`` beside ``docker-compose.yml`` with generated secrets
(``CNCLIP_CONTROL_TOKEN``, ``CNCLIP_REDIS_PASSWORD``), readable by its owner only. Docker
Compose reads a ``.env`` in the project folder by itself, so ``docker compose up -d`` then
needs nothing more, and ``cnclip jobs`` run in that folder finds the token there.

An existing ``.env`` is never overwritten (its secrets may already be in use: Redis keeps its
password in its volume's configuration, users keep the token). Standard library only, so it
also runs as ``python3 -m services.client.compose_env`` from a bare checkout."""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

SECRETS = ("CNCLIP_CONTROL_TOKEN", "CNCLIP_REDIS_PASSWORD")
REPO_ROOT = Path(__file__).resolve().parents[2]


class EnvExists(Exception):
    pass


def render() -> str:
    # Hex only: the Redis password goes into a redis:// URL and a shell command in compose.
    lines = ["# Secrets of docker-compose.yml, made by `cnclip secrets` (keep this file private).",
             *(f"{name}={secrets.token_hex(24)}" for name in SECRETS)]
    return "\n".join(lines) + "\n"


def write(folder: Path) -> Path:
    """Creates ``folder/.env`` (mode 600) or raises :class:`EnvExists`; never replaces one."""
    path = folder / ".env"
    try:
        # O_EXCL: a file that appears meanwhile is not replaced either.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise EnvExists(f"{path} exists already: it is kept as it is (delete it first to make new secrets)") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(render())
    os.chmod(path, 0o600)  # whatever the umask
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=None,
                        help="the folder of docker-compose.yml (default: this checkout's)")


def run(args: argparse.Namespace) -> int:
    folder = args.dir or REPO_ROOT
    if not (folder / "docker-compose.yml").is_file():
        print(f"cnclip secrets: no docker-compose.yml in {folder}", file=sys.stderr)
        return 2
    try:
        path = write(folder)
    except EnvExists as exc:
        print(f"cnclip secrets: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cnclip secrets: cannot write {folder / '.env'}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (mode 600): {', '.join(SECRETS)}; docker compose reads it from there")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnclip secrets", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
