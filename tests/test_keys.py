"""`transcribe-gateway keys create / list / revoke` against the database a running gateway uses:
the key printed once and stored only as its digest, a revocation refused on the next request by
every gateway process on that database, server.api_keys still admin keys, and authentication
turning on with the first key."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from sqlalchemy import create_engine, inspect, text

from conftest import ECHO
from test_cli import cli
from gateway.db import sync_url
from gateway.keys import KeyRefused, check_name

LIST = "/transcriptions"


async def keys(tmp_path, database_url: str, *args: str, secret: str = "") -> tuple[int, str, str]:
    """`transcribe-gateway keys ARGS` in a process of its own, on `database_url`."""
    config = tmp_path / "keys.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n[server]\nkey_secret = "{secret}"\n'
                      '[log]\nformat = "json"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "keys", *args, "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def create(tmp_path, database_url: str, name: str, *flags: str, secret: str = "") -> str:
    code, out, err = await keys(tmp_path, database_url, "create", name, *flags, secret=secret)
    assert code == 0, err
    return out.splitlines()[-1]


def everything_stored(database_url: str) -> str:
    """Every value of every row of every table, as text."""
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            return "\n".join(repr(tuple(row)) for table in inspect(engine).get_table_names()
                             for row in conn.execute(text(f'SELECT * FROM "{table}"')))
    finally:
        engine.dispose()


async def status_of(gw, key: str | None) -> int:
    headers = {"Authorization": key} if key is not None else {}
    return (await gw.call("GET", LIST, headers=headers))[0]


async def test_create_prints_the_key_once_and_stores_only_its_digest(start_gateway, tmp_path, database_url):
    gw = await start_gateway(worker=False, server={"key_secret": "s-1"})
    code, out, err = await keys(tmp_path, database_url, "create", "alice", secret="s-1")
    assert code == 0, err
    key = out.splitlines()[-1]
    assert out.strip() == key and key.startswith("tgw_") and len(key) >= 40  # alone on stdout, shown once
    assert "authentication is now on" in err and key not in err
    assert "key.created" in err and '"key_name": "alice"' in err  # the audit line names the key, never the key
    stored = everything_stored(database_url)
    assert key not in stored and key[4:] not in stored
    assert "alice" in stored
    code, out, err = await keys(tmp_path, database_url, "create", "root", "--admin", "--json", secret="s-1")
    assert code == 0, err
    made = json.loads(out)
    assert set(made) == {"name", "key", "admin"} and (made["name"], made["admin"]) == ("root", True)
    assert made["key"] not in everything_stored(database_url)
    assert await status_of(gw, key) == 200 and await status_of(gw, made["key"]) == 200
    assert await status_of(gw, "Bearer " + key) == 200
    assert await status_of(gw, key + "x") == 401 and await status_of(gw, None) == 401


async def test_list_shows_names_admin_created_and_last_used_never_the_key(start_gateway, tmp_path, database_url):
    gw = await start_gateway(worker=False)
    alice = await create(tmp_path, database_url, "alice")
    await create(tmp_path, database_url, "root", "--admin")
    assert await status_of(gw, alice) == 200
    code, out, err = await keys(tmp_path, database_url, "list", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == {"alice", "root"}
    assert rows["alice"]["admin"] is False and rows["root"]["admin"] is True
    assert rows["alice"]["last_used_at"] is not None and rows["root"]["last_used_at"] is None
    assert all(r["created_at"] and r["revoked_at"] is None for r in rows.values())
    code, out, _ = await keys(tmp_path, database_url, "list")
    assert code == 0 and out.splitlines()[0].split() == ["NAME", "ADMIN", "CREATED", "LAST", "USED", "REVOKED"]
    assert alice not in out


async def test_revoke_takes_effect_on_the_next_request_in_every_process(start_gateway, tmp_path, database_url):
    """Two gateways on one database, the CLI a third process: once revoked, both refuse the key
    (and the first of them had just accepted it)."""
    first = await start_gateway(worker=False)
    second = await start_gateway(config=first.config, worker=False)
    alice = await create(tmp_path, database_url, "alice")
    bob = await create(tmp_path, database_url, "bob")
    assert [await status_of(gw, alice) for gw in (first, second)] == [200, 200]
    code, out, err = await keys(tmp_path, database_url, "revoke", "alice")
    assert code == 0 and "revoked key 'alice'" in out, err
    assert "key.revoked" in err and alice not in err
    assert [await status_of(gw, alice) for gw in (first, second)] == [401, 401]
    assert [await status_of(gw, bob) for gw in (first, second)] == [200, 200]
    code, _, err = await keys(tmp_path, database_url, "revoke", "alice")
    assert code == 1 and "already revoked" in err
    code, _, err = await keys(tmp_path, database_url, "create", "alice")
    assert code == 1 and "never reused" in err  # no new key inherits alice's data
    code, out, _ = await keys(tmp_path, database_url, "list", "--json")
    assert next(r for r in json.loads(out) if r["name"] == "alice")["revoked_at"] is not None


async def test_server_api_keys_stay_admin_keys_beside_database_keys(start_gateway, tmp_path, database_url,
                                                                    speech_script):
    gw = await start_gateway(worker=False, server={"api_keys": ["cfg-key"]})
    alice = await create(tmp_path, database_url, "alice")
    task_id = (await gw.call("POST", "/transcriptions/async-generate-audio", headers={"Authorization": alice},
                             json={"url": "http://127.0.0.1:9/x.wav", "model": ECHO}))[1]["data"]["task_id"]
    status, body = await gw.call("GET", f"{LIST}/{task_id}", headers={"Authorization": "Bearer cfg-key"})
    assert status == 200 and body["data"]["owner"] == "alice"
    status, body = await gw.call("GET", LIST, headers={"Authorization": "cfg-key"}, params={"owner": "alice"})
    assert [t["task_id"] for t in body["data"]["items"]] == [task_id]
    code, out, err = await cli("list", "--owner", "alice", "--json", "--url", gw.url, "--api-key", "cfg-key")
    assert code == 0 and [t["task_id"] for t in json.loads(out)] == [task_id], err
    code, out, err = await cli("list", "--owner", "admin", "--json", "--url", gw.url, "--api-key", "cfg-key")
    assert code == 0 and json.loads(out) == [], err


async def test_the_first_key_turns_authentication_on_and_revoking_it_keeps_it_on(start_gateway, tmp_path,
                                                                                 database_url):
    gw = await start_gateway(worker=False)  # server.api_keys empty: auth off
    assert await status_of(gw, None) == 200
    await create(tmp_path, database_url, "alice")
    assert await status_of(gw, None) == 401
    assert (await keys(tmp_path, database_url, "revoke", "alice"))[0] == 0
    assert await status_of(gw, None) == 401


async def test_refused_names_and_unknown_keys(tmp_path, database_url):
    code, out, err = await keys(tmp_path, database_url, "create", "admin")
    assert (code, out) == (1, "") and "'admin' is reserved" in err  # the owner of server.api_keys' work
    await create(tmp_path, database_url, "alice")
    code, _, err = await keys(tmp_path, database_url, "create", "alice")
    assert code == 1 and "a key named 'alice' exists" in err
    code, _, err = await keys(tmp_path, database_url, "revoke", "nobody")
    assert code == 1 and "no key named 'nobody'" in err


@pytest.mark.parametrize("name", ["a b", "_x", "-x", "a.b", "x" * 65, "", "ä"])
def test_a_key_name_is_letters_digits_dashes_and_underscores(name):
    with pytest.raises(KeyRefused, match="use 1-64 letters"):
        check_name(name)
    assert check_name("team-7_eu") == "team-7_eu"
