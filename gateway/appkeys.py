"""Typed application state keys (aiohttp `app[KEY]`)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.config import Config
from gateway.db import Database
from gateway.engine import LocalEngine
from gateway.notify import Notifier
from gateway.plugins import Plugins
from gateway.storage import AssetStore

CONFIG = web.AppKey("config", Config)
DB = web.AppKey("db", Database)
ENGINE = web.AppKey("engine", LocalEngine)
NOTIFIER = web.AppKey("notifier", Notifier)
STORE = web.AppKey("store", AssetStore)
HTTP = web.AppKey("http", aiohttp.ClientSession)
PROVIDERS = web.AppKey("providers", object)
LOOPS = web.AppKey("loops", object)  # gateway.loops.Loops, where a worker runs
INGESTOR = web.AppKey("ingestor", object)
PLUGINS = web.AppKey("plugins", Plugins)
CALLBACK_BODIES = web.AppKey("callback_bodies", object)  # gateway.callbacks.BodyGate
