"""Dashboard: the web pages for people, served by the daemon itself at `/` (same port and
process), built as an ordinary plugin through `register_routes`.

Server-rendered Jinja2 templates (autoescaped) and one small hand-written script, all shipped
in this package (templates/, static/): no build step, nothing from another origin. Pages call
the same plain functions as the JSON API's handlers. Sign-in with an API key makes a signed
session cookie (sessions.py); the JSON API never accepts that cookie.
"""

from __future__ import annotations

from pydantic import Field

from gateway.hookspecs import hookimpl
from gateway.plugins import PluginConfig


class DashboardConfig(PluginConfig):
    enabled: bool = True
    session_hours: float = Field(12.0, gt=0, le=24 * 90)
    # Signs session cookies; "" = a random one per process start (sign-ins end at a restart,
    # and several processes behind one address each need the same secret to share them).
    session_secret: str = ""

    def active(self) -> bool:
        return self.enabled


@hookimpl
def plugin_config():
    return DashboardConfig


@hookimpl
def register_routes(app, config: DashboardConfig):
    if config.active():
        from gateway_plugins.dashboard import routes

        routes.add(app, config)
