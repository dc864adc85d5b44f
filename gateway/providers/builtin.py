"""The first-party providers, registered through the same hook as any plugin's."""

from gateway.hookspecs import hookimpl
from gateway.providers.local import LocalProvider
from gateway.providers.memories import MemoriesProvider
from gateway.providers.openai import OpenAIProvider


@hookimpl
def register_providers(register):
    register("local", LocalProvider)
    register("memories", MemoriesProvider)
    register("openai", OpenAIProvider)
