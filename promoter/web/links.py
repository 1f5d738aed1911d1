"""`POST /runtime/artifacts/{run_id}/files/{filename}/link`: a short-lived signed link
(DESIGN §7), for "Open report" under a token and for tools that cannot send headers.

The link is the file route's own URL plus `expires` and `sig`; the access guard
(`security.py`) checks them in place of the bearer token. Without a token there
is nothing to sign with and nothing to bypass: the link is the file URL with
its expiry, and the file answers as it always does.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Annotated, Final

from fastapi import APIRouter, Query, Request, Response

from promoter.names import check_relpath, check_run_id
from promoter.signing import EXPIRES, SIG, link_path
from promoter.web.models import LinkAnswer
from promoter.web.routes import RunId, _errors, web_state

__all__ = ["DEFAULT_TTL_S", "MAX_TTL_S", "links_router"]

DEFAULT_TTL_S: Final = 300
MAX_TTL_S: Final = 3600

links_router = APIRouter(prefix="/runtime")


@links_router.post("/artifacts/{run_id}/files/{filename:path}/link", status_code=201,
                   response_model=LinkAnswer, responses=_errors(400, 403, 404),
                   summary="A link to the file that works without the token until it expires")
def make_link(request: Request, run_id: RunId, filename: str,
              ttl_s: Annotated[int, Query(ge=1, le=MAX_TTL_S,
                                          description="Seconds the link works")] = DEFAULT_TTL_S,
              ) -> Response:
    web = web_state(request)
    run_id, filename = check_run_id(run_id), check_relpath(filename)
    if web.bucket is not None:  # the entry is enough: the file's own answer HEADs the object
        entry = web.bucket.entry(run_id, filename)
    else:
        fd, _, entry = web.store.open_artifact(run_id, filename)  # 404 for a missing file
        os.close(fd)
    expires = int(time.time()) + ttl_s
    path = link_path(run_id, entry.filename)
    url = f"{path}?{EXPIRES}={expires}"
    if web.signer is not None:
        # signed over the decoded path, which is what the router (and the guard) see
        decoded = f"/runtime/artifacts/{run_id}/files/{entry.filename}"
        url += f"&{SIG}={web.signer.sign(decoded, expires)}"
    body = LinkAnswer(url=url, expires_at=datetime.fromtimestamp(expires, UTC))
    return Response(body.model_dump_json(), status_code=201, media_type="application/json")
