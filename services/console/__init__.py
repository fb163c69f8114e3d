"""The merchant console at /console: static pages (HTML, vanilla JS modules, CSS, vendored ECharts)
over the services' public HTTP APIs. It reads no table and imports no service: the browser holds
the merchant's API key (sessionStorage) and calls the same endpoints any client would."""

from services.console.router import STATIC_DIR, console_router, mount_console

__all__ = ["STATIC_DIR", "console_router", "mount_console"]
