"""Check flags with Schematic's real Python SDK (schematichq 1.4.6) in
replicator mode, reading the Redis cache emcachers writes (spec §9).

Driven by tests/tests/integration/python_sdk.rs; runnable by hand too:

    target/pyvenv/bin/python tests/python/schematic_sdk_check.py spec.json

spec.json:

    {
      "api_key": "sch_test",
      "redis_url": "redis://127.0.0.1:6379",
      "ready_url": "http://127.0.0.1:8090/ready",   # emcachers' /ready
      "sink_url": "http://127.0.0.1:9999",          # REST API + event capture stand-in
      "cache_version": "v1",                        # what /ready must report
      "phases": [
        {"name": "initial", "wait_secs": 0, "checks": [
          {"name": "acme by domain", "flag": "beta-dashboard",
           "company": {"domain": "acme.example"}, "user": null,
           "value": true, "company_id": "comp_acme", "user_id": null}
        ]},
        {"name": "after the change", "wait_secs": 30, "checks": [...]}
      ]
    }

The SDK is created once. Each phase runs its checks and prints one JSON line
on stdout: {"phase", "ok", "attempts", "elapsed_ms", "results": [...]}. Before
every phase but the first, the script reads one line from stdin: the driver's
signal that it has pushed the change the phase expects. A phase with
`wait_secs` > 0 repeats its checks until they all match or that time passes
(the change travels dev server -> emcachers -> Redis meanwhile); a phase with
0 runs them once. In a check, `company_id` / `user_id` (when present, null
included) must equal what the SDK's rules engine reports: it names the
entity the SDK found in the cache, so a lookup that missed shows even when
the flag's value happens to match. Logs go to stderr.

Exit status: 0 when every phase matched, 1 on a mismatch, 2 when the SDK
could not be set up in replicator mode (wrong cache_version, not ready).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any, Dict, List, Optional

import redis.asyncio as aioredis
from schematic.cache import RedisCache
from schematic.client import AsyncSchematic, AsyncSchematicConfig, DataStreamConfig

log = logging.getLogger("sdk-check")


def result_of(check: Dict[str, Any], resp: Any) -> Dict[str, Any]:
    return {
        "name": check.get("name", check["flag"]),
        "flag": check["flag"],
        "value": resp.value,
        "company_id": resp.company_id,
        "user_id": resp.user_id,
        "reason": resp.reason,
        "rule_id": resp.rule_id,
        "error": resp.error,
    }


def mismatches(check: Dict[str, Any], result: Dict[str, Any]) -> List[str]:
    wrong = []
    for field in ("value", "company_id", "user_id"):
        if field in check and result[field] != check[field]:
            wrong.append(f"{field}: expected {check[field]!r}, got {result[field]!r}")
    return wrong


async def run_checks(client: AsyncSchematic, checks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    results = []
    for check in checks:
        resp = await client.check_flag_with_entitlement(
            check["flag"], company=check.get("company"), user=check.get("user")
        )
        result = result_of(check, resp)
        result["mismatches"] = mismatches(check, result)
        results.append(result)
    return results


async def run_phase(client: AsyncSchematic, phase: Dict[str, Any]) -> Dict[str, Any]:
    wait = float(phase.get("wait_secs", 0))
    started = time.monotonic()
    deadline = started + wait
    attempts = 0
    while True:
        attempts += 1
        results = await run_checks(client, phase["checks"])
        ok = all(not r["mismatches"] for r in results)
        if ok or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)  # a poll interval, not a synchronisation
    return {
        "phase": phase.get("name", ""),
        "ok": ok,
        "attempts": attempts,
        "elapsed_ms": round((time.monotonic() - started) * 1000),
        "results": results,
    }


async def main(spec: Dict[str, Any]) -> int:
    r = aioredis.Redis.from_url(spec["redis_url"])
    client = AsyncSchematic(
        spec["api_key"],
        AsyncSchematicConfig(
            base_url=spec["sink_url"],
            event_capture_url=spec["sink_url"],
            use_datastream=True,
            datastream=DataStreamConfig(
                replicator_mode=True,
                replicator_health_url=spec["ready_url"],
                company_cache=RedisCache(r),
                company_lookup_cache=RedisCache(r),
                user_cache=RedisCache(r),
                user_lookup_cache=RedisCache(r),
                flag_cache=RedisCache(r),
            ),
        ),
    )
    status = 0
    try:
        await client.initialize()
        ds = client._get_datastream()
        if ds is None:
            print(json.dumps({"setup_error": "the SDK did not start its datastream client"}), flush=True)
            return 2
        setup = {
            "replicator_mode": ds.is_replicator_mode(),
            "replicator_ready": ds.is_replicator_ready(),
            "cache_version": ds.replicator_cache_version,
        }
        print(json.dumps({"setup": setup}), flush=True)
        if not setup["replicator_ready"] or setup["cache_version"] != spec["cache_version"]:
            return 2
        for index, phase in enumerate(spec["phases"]):
            if index > 0:
                line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
                if not line:
                    log.error("stdin closed before phase %s", phase.get("name"))
                    return 2
            report = await run_phase(client, phase)
            print(json.dumps(report), flush=True)
            if not report["ok"]:
                status = 1
                for result in report["results"]:
                    for wrong in result["mismatches"]:
                        log.error("phase %s, %s: %s", report["phase"], result["name"], wrong)
    finally:
        # Flushes the buffered flag_check events to the sink's /batch.
        await client.shutdown()
        await r.aclose()
    return status


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    sys.exit(asyncio.run(main(spec)))
