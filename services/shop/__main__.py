"""Runs the demo shop: ``python -m services.shop --host 127.0.0.1 --port 8600``.

Every other setting comes from the environment (``CNCLIP_SHOP_*``, see settings.py).
"""
from __future__ import annotations

import argparse
import sys

import uvicorn
from pydantic import ValidationError

from services.shop.app import create_app
from services.shop.settings import ShopSettings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = ShopSettings()
    except ValidationError as error:
        print(f"cnclip-shop: invalid setting in the environment (CNCLIP_SHOP_*):\n{error}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="cnclip-shop", description="Run the demo shopping site.")
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    settings = settings.model_copy(update={"host": args.host, "port": args.port})
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level in ("info", "debug"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
