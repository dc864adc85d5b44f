"""One wording of pydantic's validation errors ("where: what") at each place that reports one;
each message as it was when every place had its own copy of the formatter."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config
from gateway.errors import BadRequest
from gateway.payloads import parse_callback
from gateway.plugins import PluginError, Plugins
from gateway.providers import ProviderError, Providers
from gateway.requests import parse_generate_request
from gateway.schemas import ListQuery, parse_query
from gateway.validation import location


def message(call, *args) -> str:
    with pytest.raises((BadRequest, ConfigError, PluginError, ProviderError)) as err:
        call(*args)
    return str(err.value)


def test_location_joins_root_and_loc():
    assert location(("a", 0, "b")) == "a.0.b"
    assert location(("a", 0, "b"), brackets=True) == "a[0].b"
    assert location((), root=("plugins", "srt")) == "plugins.srt"
    assert location((), empty="body") == "body"


def test_each_place_words_its_first_error_as_before():
    assert message(parse_generate_request, {"asset_id": "re_1", "bogus": 1}) == "bogus: unknown field"
    assert message(parse_generate_request, {"asset_id": "re_1", "speaker": "yes"}) == \
        "speaker: Input should be a valid boolean"
    assert message(parse_query, ListQuery, {"limit": "0"}) == "limit: must be an integer from 1 to 100"
    assert message(parse_query, ListQuery, {"status": "bogus"}).startswith("status: must be one of queued")
    payload = {"code": "0000", "message": "SUCCESS", "task_id": "t",
               "data": {"msg": "m", "success": True,
                        "data": {"data": [{"start_time": 0, "end_time": 1}], "usage_metadata": {"duration": 1}}}}
    assert message(parse_callback, payload) == "invalid callback payload: data.data.data[0].text: is required"
    good = {**payload, "data": {**payload["data"], "data": {"data": [], "usage_metadata": {"duration": 1}}}}
    assert message(parse_callback, {**good, "code": "1"}) == \
        "invalid callback payload: body: Value error, code and data.success disagree"
    assert message(load_config, None, {"TGW_JOBS__BOGUS": "1", "TGW_JOBS__LEASE_S": "-1"}) == (
        "invalid configuration: jobs.lease_s: Input should be greater than 0 (from TGW_JOBS__LEASE_S); "
        "jobs.bogus: unknown key (from TGW_JOBS__BOGUS)")
    plugins = Plugins([], {})
    assert message(lambda: Plugins(["srt"], {"srt": {"formats": ["doc"]}})).startswith(
        "plugins.srt.formats.0: Input should be 'srt'")
    assert message(lambda: Providers(load_config(None, environ={"TGW_PROVIDERS__OPENAI__BOGUS": "1"}), plugins)) == \
        "providers.openai.bogus: unknown key"
    assert message(lambda: Providers(load_config(None, environ={
        "TGW_PROVIDERS__MEMORIES": '{"base_url": "http://x"}', "TGW_SERVER__PUBLIC_URL": "http://gw"}), plugins)) == \
        "providers.memories.api_key: is required"
