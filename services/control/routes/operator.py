"""The operator in the loop: live views of crawler ranks whose page needs a person (a slider),
and the operator's pointer and keys relayed into that rank's browser over Redis.

The crawler publishes each frame under a key that expires within seconds and deletes it when
the check is gone (services/crawler/operator_relay.py); nothing here stores a frame. Input
goes on a short-lived list the crawler drains in order, tagged with the challenge it was
meant for, so input for a check already passed is never replayed into the next one. Sign-in,
the same-origin rule for the page cookie and the security headers are the app's middleware,
as for every route.
"""
from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.responses import Response
from pydantic import ValidationError

from services.control.crawler_pool import login_states
from services.control.security import COMMON_RESPONSES, bearer
from services.control.state import ControlState, StateDep
from shared import redis_keys
from shared.messages import LiveFrame, OperatorInputBatch

router = APIRouter(tags=["operator"], dependencies=[Depends(bearer)], responses=COMMON_RESPONSES)
Rank = Annotated[int, Path(ge=0, le=1_000_000, description="Crawler rank")]
NO_STORE = {"Cache-Control": "no-store, private", "Pragma": "no-cache"}
# Input the crawler has not taken within this long is dropped; at most this many wait.
INPUT_TTL_S = 30
INPUT_MAX = 500
# How long an open /login counts as someone watching (the page asks every second or two).
WATCHED_TTL_S = 20


async def _frame_meta(state: ControlState, rank: int) -> LiveFrame | None:
    raw = await state.redis.hget(redis_keys.crawler_live(rank), "meta")
    if not raw:
        return None
    try:
        return LiveFrame.model_validate_json(raw)
    except ValidationError:
        return None


@router.get("/api/operator/live", summary="Ranks whose page needs a person, with their live view")
async def live_ranks(state: StateDep) -> list[dict[str, Any]]:
    """Every rank in ``needs_human`` with the live view's description (None until its first
    frame). Asking also tells idle ranks that someone has /login open."""
    await state.redis.set(redis_keys.crawler_login_watched(), "1", ex=WATCHED_TTL_S)
    needing = [s for s in await login_states(state.redis) if s.state == "needs_human"]
    metas = await asyncio.gather(*(_frame_meta(state, s.rank) for s in needing))
    return [{"rank": s.rank, "since": s.since, "detail": s.detail, "site": s.site,
             "live": meta.model_dump() if meta else None} for s, meta in zip(needing, metas)]


@router.get("/api/operator/{rank}/frame.jpg", summary="The latest live frame of a rank",
            responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "No live view"}},
            response_class=Response)
async def live_frame(rank: Rank, state: StateDep) -> Response:
    data = await state.redis.hget(redis_keys.crawler_live(rank), "jpeg")
    if not data:
        raise HTTPException(404, f"rank {rank} shows no live view: its page needs nobody now")
    # The page of a logged-in shopping account: never cached anywhere.
    media = "image/png" if data[:4] == b"\x89PNG" else "image/jpeg"
    return Response(data, media_type=media, headers=NO_STORE)


@router.post("/api/operator/{rank}/input", summary="Relay the operator's pointer and keys",
             responses={400: {"description": "The body is not JSON"},
                        404: {"description": "No live view"},
                        409: {"description": "The check these events were meant for is over"}})
async def relay_input(rank: Rank, batch: OperatorInputBatch,
                      state: StateDep) -> dict[str, int]:
    meta = await _frame_meta(state, rank)
    if meta is None:
        raise HTTPException(404, f"rank {rank} shows no live view: its page needs nobody now")
    if meta.challenge != batch.challenge:
        raise HTTPException(409, "that check is over; the live view shows a new one")
    key = redis_keys.crawler_operator_input(rank)
    async with state.redis.pipeline(transaction=True) as pipe:
        pipe.rpush(key, *[json.dumps({"challenge": batch.challenge, "event": e.model_dump()})
                          for e in batch.events])
        pipe.ltrim(key, -INPUT_MAX, -1)
        pipe.expire(key, INPUT_TTL_S)
        await pipe.execute()
    return {"queued": len(batch.events)}
