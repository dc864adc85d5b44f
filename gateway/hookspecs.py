"""Plugin hook specifications. A plugin implements any of these with `@hookimpl`.

Implementations may be plain functions or return awaitables (coroutines). See
docs/PLUGINS.md for the arguments and an example of each hook.
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("transcribe_gateway")
hookimpl = HookimplMarker("transcribe_gateway")


@hookspec
def plugin_config():
    """Return the pydantic model that validates this plugin's [plugins.<name>] section."""


@hookspec
def register_providers(register):
    """Register transcription providers: call register(name, provider)."""


@hookspec
def transcript_completed(task, transcript, config, gateway):
    """Deliver a completed transcript; raise to have the delivery retried."""


@hookspec
def transcript_updated(task, transcript, config, gateway):
    """A completed transcript changed (its speakers were named): update what was made from it."""


@hookspec
def transcript_failed(task, error, config, gateway):
    """Report a failed task; raise to have the delivery retried."""


@hookspec
def transcript_deleted(task_id, config, gateway):
    """Remove what this plugin stored for a deleted task; it must not fail when there is nothing."""


@hookspec
def migrations():
    """Return the folder of this plugin's Alembic versions: a branch of its own, labelled with its name."""


@hookspec
def register_routes(app, config):
    """Add routes to the aiohttp application before it starts; `config` is this plugin's section."""


@hookspec
def register_commands(cli, config):
    """Add commands to the `transcribe-gateway` click group; `config` is this plugin's section."""


@hookspec
def startup(gateway):
    """Run once the gateway has started (database ready, before work is claimed)."""
