"""Typed application state keys (aiohttp `app[KEY]`)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.callbacks import BodyGate
from gateway.config import Config
from gateway.db import Database
from gateway.ingest import Ingestor
from gateway.keys import Keyring
from gateway.loops import Loops
from gateway.notify import Notifier
from gateway.plugins import Plugins
from gateway.providers import Providers
from gateway.storage import AssetStore
from gateway.turns import Turns

CONFIG = web.AppKey("config", Config)
DB = web.AppKey("db", Database)
NOTIFIER = web.AppKey("notifier", Notifier)
STORE = web.AppKey("store", AssetStore)
HTTP = web.AppKey("http", aiohttp.ClientSession)
PROVIDERS = web.AppKey("providers", Providers)  # the local engine is PROVIDERS' "local" provider's
LOOPS = web.AppKey("loops", Loops)  # only where a worker runs
INGESTOR = web.AppKey("ingestor", Ingestor)
PLUGINS = web.AppKey("plugins", Plugins)
CALLBACK_BODIES = web.AppKey("callback_bodies", BodyGate)
UPLOAD_TURNS = web.AppKey("upload_turns", Turns)  # server.max_concurrent_uploads
KEYS = web.AppKey("keys", Keyring)  # server.api_keys and the database's keys (gateway/keys.py)
