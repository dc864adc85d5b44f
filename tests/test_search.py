"""Search: one query language (words, "phrases", prefix*) on FTS5 and on PostgreSQL full text,
ranking, snippets, filters, pagination, repeat-safe indexing, the API and the CLI."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from conftest import ECHO
from gateway.db import Database, upgrade
from gateway.errors import BadRequest
from gateway.payloads import Segment
from gateway.plugins import Plugins
from gateway_plugins.search import index as search
from test_cli import cli

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
DOCS = {
    "a" * 32: (T0, [Segment(0, 2, "The quarterly budget was approved.", "SPEAKER_00"),
                    Segment(2, 4, "Budget budget budget, said the accountant.", "SPEAKER_01")]),
    "b" * 32: (T0 + timedelta(days=30), [Segment(0, 3, "We discussed the launch schedule and the budget.", None),
                                         Segment(3, 5, "Approved budgets are final.", None)]),
    "c" * 32: (T0 + timedelta(days=60), [Segment(0, 1, "Servers, servers everywhere.", "SPEAKER_00"),
                                         Segment(1, 2, "The schedule slipped again.", "SPEAKER_00")]),
}


@pytest.fixture
async def db(database_url):
    upgrade(database_url, plugins=Plugins(["search"], {}))
    database = Database(database_url)
    for task_id, (created, segments) in DOCS.items():
        await search.index_transcript(database, task_id, segments, created)
    yield database
    await database.close()


async def hits(db, q, limit=20, offset=0, **filters):
    page = await search.search(db, q, search.Filters(**filters), limit, offset)
    return [(h["task_id"][0], h["text"]) for h in page["items"]], page


async def test_words_phrases_and_prefixes(db):
    found, _ = await hits(db, "budget approved")  # all words must match (stemmed: approved ~ approve)
    assert sorted(found) == [("a", "The quarterly budget was approved."), ("b", "Approved budgets are final.")]
    found, _ = await hits(db, '"launch schedule"')
    assert found == [("b", "We discussed the launch schedule and the budget.")]
    found, _ = await hits(db, '"schedule launch"')
    assert found == []
    found, _ = await hits(db, "serv*")
    assert found == [("c", "Servers, servers everywhere.")]
    found, _ = await hits(db, "sched* slipped")
    assert found == [("c", "The schedule slipped again.")]


async def test_ranking_and_snippets(db):
    found, page = await hits(db, "budget")
    assert found[0] == ("a", "Budget budget budget, said the accountant.")  # most matches first
    assert len(found) == 4
    assert all("[" in h["snippet"] and "]" in h["snippet"] for h in page["items"])
    assert page["items"][0]["snippet"].lower().count("[budget]") == 3
    assert page["items"][0]["score"] >= page["items"][-1]["score"]


async def test_filters_and_pagination(db):
    found, _ = await hits(db, "budget", speaker="SPEAKER_01")
    assert found == [("a", "Budget budget budget, said the accountant.")]
    found, _ = await hits(db, "budget", task_id="b" * 32)
    assert {t for t, _ in found} == {"b"}
    found, _ = await hits(db, "budget", since=T0 + timedelta(days=1))
    assert {t for t, _ in found} == {"b"}
    found, _ = await hits(db, "budget", until=T0 + timedelta(days=1))
    assert {t for t, _ in found} == {"a"}
    seen, offset = [], 0
    while True:
        found, page = await hits(db, "budget", limit=1, offset=offset)
        seen += found
        if not page["next_cursor"]:
            break
        offset = search.decode_cursor(page["next_cursor"])
    assert len(seen) == 4 and len(set(seen)) == 4


async def test_indexing_is_an_upsert(db):
    task_id = "a" * 32
    created, segments = DOCS[task_id]
    for _ in range(3):
        await search.index_transcript(db, task_id, segments, created)
    found, _ = await hits(db, "accountant")
    assert found == [("a", "Budget budget budget, said the accountant.")]
    await search.index_transcript(db, task_id, [Segment(0, 1, "Completely new words.", None)], created)
    assert (await hits(db, "accountant"))[0] == []


@pytest.mark.parametrize("q", ["", "   ", '"', "*** !!!", '""'])
async def test_queries_without_words_are_refused(db, q):
    with pytest.raises(BadRequest, match="q: give at least one word to search for"):
        await hits(db, q)


@pytest.mark.parametrize("q", ["the", "of the", '"and the"', "it is what it is", "The*"])
async def test_queries_of_stop_words_only_are_refused_on_both_backends(db, q):
    with pytest.raises(BadRequest, match="q: has only common words .* that are not indexed; add a more specific word"):
        await hits(db, q)


async def test_stop_words_beside_other_words_are_left_out(db):
    assert (await hits(db, "the budget was approved"))[0] == (await hits(db, "budget approved"))[0]
    found, _ = await hits(db, '"the launch schedule and the"')  # a phrase keeps its other words
    assert found == [("b", "We discussed the launch schedule and the budget.")]


@pytest.mark.parametrize("q", ["budget' OR 1=1 --", "budget); DROP TABLE task; --", "NEAR(budget schedule)",
                               "budget AND OR NOT", "budget:*", "title:budget", "budget -schedule", "(budget"])
async def test_operators_and_injection_are_just_words(db, q):
    text = f"The notes said {q} in so many words."
    await search.index_transcript(db, "d" * 32, [Segment(0, 1, text, None)], T0)
    found, _ = await hits(db, q)  # no SQL or FTS syntax error: operators are plain words
    assert ("d", text) in found, found  # and the segment that has those words is found


async def test_search_api_and_cli(start_gateway, speech_script):
    gw = await start_gateway()
    task_id = await gw.submit(asset_id=await gw.upload(speech_script), model=ECHO)
    await gw.wait(task_id)
    for _ in range(100):
        status, body = await gw.call("GET", "/search", params={"q": "gateway"})
        if body["data"]["items"]:
            break
    assert status == 200
    [hit] = body["data"]["items"]
    assert hit["task_id"] == task_id and "[gateway]" in hit["snippet"].lower()
    assert set(hit) == {"task_id", "start_time", "end_time", "speaker", "text", "snippet", "score"}

    status, body = await gw.call("GET", "/search", params={"q": "gateway", "since": "tomorrow"})
    assert status == 400 and body["msg"] == "since: not an ISO 8601 date or date-time: 'tomorrow'"
    status, body = await gw.call("GET", "/search", params={"q": "gateway", "limit": "500"})
    assert status == 400 and body["msg"] == "limit: must be an integer from 1 to 100"
    status, body = await gw.call("GET", "/search", params={"q": "  "})
    assert status == 400 and body["msg"] == "q: give at least one word to search for"
    status, body = await gw.call("GET", "/search", params={"q": "gateway", "since": "2000-01-01", "until": "2000-01-02"})
    assert status == 200 and body["data"]["items"] == []

    code, out, err = await cli("search", "testing gateway", "--url", gw.url)
    assert code == 0, err
    assert out.startswith(task_id + " 0:00:0") and "[gateway]" in out.lower()
    code, out, err = await cli("search", "gateway", "--since", "2000-01-01", "--until", "2000-01-02", "--url", gw.url)
    assert (code, out, err) == (0, "", "no matches\n")
    code, out, err = await cli("search", "gateway", "--since", "2000-01-01", "--url", gw.url)
    assert code == 0 and out.startswith(task_id), err
    code, _, err = await cli("search", "gateway", "--until", "tomorrow", "--url", gw.url)
    assert code == 1 and err.splitlines() == [
        "Error: GET /search: 400 until: not an ISO 8601 date or date-time: 'tomorrow'"]


async def test_search_disabled_means_no_route_and_no_index(start_gateway, speech_wav):
    gw = await start_gateway(plugins={"search": {"enabled": False}})
    status, body = await gw.call("GET", "/search", params={"q": "x"})
    assert status == 404
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO)
    task = await gw.wait(task_id)
    assert "plugin:search" not in [d["target"] for d in (await gw.status(task_id))["deliveries"]]
    assert task["status"] == "completed"
