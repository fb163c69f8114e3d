"""Serves the console: GET /console (the app shell), GET /console/login, and the assets under
/console/static/. Nothing here needs Node.js: the files are committed as they are served."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/console"

# Explicit, so the answer does not depend on the host's /etc/mime.types: a module script served
# as anything but JavaScript is refused by the browser.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".md": "text/markdown; charset=utf-8",
}

# The key lives in the page's sessionStorage, so scripts come only from this origin (no inline
# script, no eval); ECharts sets inline styles on its own elements.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def console_router(static_dir: Path = STATIC_DIR) -> APIRouter:
    """The pages (kept out of the API schema). When the assets are missing (a wheel built without
    its package data), the pages say so with a 503 instead of the whole app failing to start."""
    router = APIRouter(include_in_schema=False)

    def page(name: str) -> Response:
        path = static_dir / name
        if not path.is_file():
            return JSONResponse(
                status_code=503,
                content={
                    "error": {
                        "code": "console_not_installed",
                        "message": f"the console's files are missing ({path}); install Fugou with its package data",
                    }
                },
            )
        return FileResponse(path, media_type=CONTENT_TYPES[".html"], headers=PAGE_HEADERS)

    @router.api_route(PREFIX, methods=["GET", "HEAD"])
    async def console_index() -> Response:
        return page("index.html")

    @router.get(PREFIX + "/")
    async def console_slash() -> RedirectResponse:
        return RedirectResponse(PREFIX, status_code=308)

    @router.api_route(PREFIX + "/login", methods=["GET", "HEAD"])
    async def console_login() -> Response:
        return page("login.html")

    return router


class ConsoleStatic(StaticFiles):
    """Starlette's static files (ETag, Last-Modified, 304s, no path escapes) with explicit content
    types and caching: the vendored library a day, the console's own files revalidated each time."""

    async def check_config(self) -> None:
        # Once per app (Starlette remembers the check), off the event loop like Starlette's own.
        if self.directory is not None and not await asyncio.to_thread(Path(self.directory).is_dir):
            return  # assets not installed: every file answers 404 (the pages say why)
        await super().check_config()

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        suffix = Path(full_path).suffix.lower()
        if response.status_code == 200:
            response.headers["content-type"] = CONTENT_TYPES.get(suffix, "application/octet-stream")
        vendored = Path(full_path).parent.name == "vendor"
        response.headers["cache-control"] = "public, max-age=86400" if vendored else "no-cache"
        response.headers["x-content-type-options"] = "nosniff"
        return response


def mount_console(app: FastAPI, static_dir: Path = STATIC_DIR) -> FastAPI:
    """Add the console's pages and assets to an app that already serves the services' APIs."""
    app.include_router(console_router(static_dir))
    app.mount(PREFIX + "/static", ConsoleStatic(directory=static_dir, check_dir=False), name="console-static")
    return app
