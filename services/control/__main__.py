"""`cnclip-control`: serves the control app with uvicorn."""
from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from pydantic import ValidationError

from services.control.app import create_app
from services.control.auth import InsecureBindError
from services.control.settings import ControlSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnclip-control", description="Run the control service.")
    parser.add_argument("--host", default=None, help="default: CNCLIP_CONTROL_HOST or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: CNCLIP_CONTROL_PORT or 8000")
    args = parser.parse_args(argv)
    try:
        settings = ControlSettings()
    except ValidationError as exc:
        print(f"cnclip-control: invalid setting in the environment (CNCLIP_CONTROL_*):\n{exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings.model_copy(update=overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings)
    except InsecureBindError as exc:
        print(f"cnclip-control: {exc}", file=sys.stderr)
        return 2
    # X-Forwarded-* is believed only from the proxies named in forwarded_allow_ips.
    proxied = bool(settings.forwarded_allow_ips)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                proxy_headers=proxied, forwarded_allow_ips=settings.forwarded_allow_ips or None,
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
