"""The ingestion baseline: a bare FastAPI app whose one POST endpoint reads the whole body and returns its length.

Started by ``bench/ingest.py`` with the same uvicorn settings as the coordinator:
``uvicorn bare_app:app --app-dir bench --http httptools --workers 1 --log-level warning --no-access-log``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

app = FastAPI(title="bare upload endpoint")


@app.post("/upload")
async def upload(request: Request) -> dict[str, int]:
    body = await request.body()
    return {"size_bytes": len(body)}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
