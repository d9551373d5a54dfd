"""Declares the bearer token in the OpenAPI schema (the "Authorize" button of /docs). The check
itself is done for every route by services.control.auth.AuthMiddleware."""
from __future__ import annotations

from fastapi.security import HTTPBearer

bearer = HTTPBearer(auto_error=False, description="The control token (CNCLIP_CONTROL_TOKEN)")


# Every protected route can answer these; listed once so the OpenAPI schema tells the truth.
COMMON_RESPONSES: dict[int | str, dict] = {
    401: {"description": "No or wrong token",
          "content": {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}}}}}},
    503: {"description": "Redis (or the broker) is unreachable",
          "content": {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}}}}}},
}
