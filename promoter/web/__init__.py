"""`promoter serve`: the HTTP API and the artifact browser page (DESIGN §7, §8).

Needs the `web` extra (FastAPI, uvicorn, python-multipart). The daemon never
imports this package.
"""

from __future__ import annotations

from promoter.web.app import create_app

__all__ = ["create_app"]
