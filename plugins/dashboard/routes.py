"""The dashboard's routes: pages at `/`, `/tasks`, `/tasks/{task_id}`, `/search`, `/status`;
forms, fragments, audio, downloads and static files under `/ui/`."""

from __future__ import annotations

from aiohttp import web

from gateway import openapi
from gateway_plugins.dashboard import pages, sessions, web as dw

TASK = "/tasks/{task_id}"
UI_TASK = "/ui" + TASK


async def favicon(request: web.Request) -> web.FileResponse:
    return web.FileResponse(dw.HERE / "static" / "favicon.svg", headers={"Content-Type": "image/svg+xml"})


def add(app: web.Application, config) -> None:
    app[dw.SESSIONS] = sessions.Sessions(config.session_secret, int(config.session_hours * 3600))
    app[dw.TEMPLATES] = dw.environment()
    r = app.router
    before = set(r.resources())
    r.add_get("/", pages.home)
    r.add_post("/sign-in", pages.sign_in)
    r.add_post("/sign-out", pages.sign_out)
    r.add_post("/ui/upload", pages.upload)
    r.add_get("/tasks", pages.tasks_page)
    r.add_get(TASK, pages.task_page)
    r.add_post(TASK + "/redeliver", pages.redeliver)
    r.add_post(TASK + "/cancel", pages.cancel)
    r.add_post(TASK + "/delete", pages.delete)
    r.add_post(TASK + "/speakers", pages.rename_speaker)
    r.add_get("/search", pages.search_page)
    r.add_get("/status", pages.status_page)
    r.add_get("/ui/fragments/tasks", pages.task_rows)
    r.add_get("/ui/fragments" + TASK, pages.task_live)
    r.add_get("/ui/fragments" + TASK + "/deliveries", pages.deliveries_fragment)
    r.add_get(UI_TASK + "/audio", pages.task_audio)
    r.add_get(UI_TASK + "/transcript.{fmt}", pages.task_transcript)
    r.add_get("/favicon.ico", favicon)
    r.add_static("/ui/static/", dw.HERE / "static", append_version=False)
    openapi.not_api(app).update(res.canonical for res in r.resources() if res not in before)
