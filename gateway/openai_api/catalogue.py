"""GET /v1/models: every model alias the configured providers serve, as OpenAI model objects
(`owned_by` = the provider)."""

from __future__ import annotations

import time

from gateway.errors import NotFound
from gateway.openai_api.answers import Model, ModelList
from gateway.providers import Providers

STARTED = int(time.time())  # `created`: the gateway has no date for a model; this process's start


def model_list(providers: Providers) -> ModelList:
    return ModelList(object="list", data=[Model(id=alias, object="model", created=STARTED, owned_by=name)
                                          for alias, name in sorted(providers.routes.items())])


def find_model(providers: Providers, model_id: str) -> Model:
    name = providers.provider_for(model_id)
    if name is None:
        raise NotFound(f"model {model_id!r} not found; GET /v1/models lists this gateway's models "
                       f"({', '.join(sorted(providers.routes))})", param="model", code="model_not_found")
    return Model(id=model_id, object="model", created=STARTED, owned_by=name)
