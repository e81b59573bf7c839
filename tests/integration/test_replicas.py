"""Three gateway processes on one PostgreSQL schema, one of them SIGKILLed mid-flight.

The sandbox runs in this process, behind a middleware that records every upstream request (who
made it, by its API key, and when it started and ended). Three ``jobgate serve`` processes share
the test's schema; 200 pulse jobs are submitted round-robin; while they are being polled, the
replica holding the most leases is killed with SIGKILL, so it hands nothing back. Then:

1. every job ends as its scenario says;
2. the dead replica's leased jobs are polled again by the others once the lease ends, within
   ``lease + max_interval`` of the kill, and not before the lease ends;
3. no upstream job is submitted twice;
4. no job is polled by two replicas at once;
5. no replica's write was fenced away, and the store agrees with what GET answers;
6. an SSE client that loses its replica resumes on another with ``Last-Event-ID`` and misses and
   repeats nothing; a client that never lost its replica neither;
7. the status calls of all replicas together stay within the configured rate.

The figures are printed (``pytest -s``). The clean-stop case (leases handed back at once) is
``test_postgres_gateway.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from adapters.pulse.sandbox import JOBS_KEY
from adapters.sandboxes import SUBAPPS_KEY, create_sandbox_app
from adapters.simulator import SandboxSettings
from tests.conftest import Serve
from tests.integration.conftest import FAST_POLICY
from tests.integration.replica_harness import (
    FINISHED,
    Replica,
    SseClient,
    UpstreamCall,
    UpstreamRecorder,
    bucket_excess,
    launch,
    max_concurrent,
    max_in_window,
    overlapping_pairs,
    replica_config,
    replica_env,
    stop_replicas,
    stream_gaps,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPLICAS = 3
JOBS = 200
SPIKE = 20
"""Jobs submitted all at once first: their first polls fall due together, more than the bucket
holds, so the shared quota has to spread them (one bucket per replica would not)."""
PACED_FROM = 3.0
"""Seconds after the spike when the other jobs start, one every ``SUBMIT_EVERY``."""
SUBMIT_EVERY = 0.075
KILL_AFTER = 8.0
"""Seconds after the first submission before the kill is attempted."""
SPEED = 20.0
"""Sandbox time: a pulse job takes 2.5 s (pending 0.25 s, processing 2.25 s); ``slow`` 10 s."""
STATUS_LATENCY = 0.08
"""Each status call takes this long upstream, so polls are in flight long enough to be caught."""
TICK_MS = 50
LEASE = 4.0
TOTAL_TIMEOUT = 3.0
RATE = 50.0
BURST = 10
CONCURRENCY = 8
PULSE_POLICY: dict[str, Any] = {
    "first_delay": 2.0,
    "min_interval": 0.5,
    "max_interval": 1.0,
    "multiplier": 1.5,
    "deadline": 120,
    "error_max_interval": 1.0,
    "breaker_cooldown": 1.0,
    "concurrency": CONCURRENCY,
    "rate_per_second": RATE,
    "burst": BURST,
}
EXPECTED = {"succeed": "succeeded", "fail": "failed", "slow": "succeeded"}
FINISH_WITHIN = 60.0
"""Seconds after the last submission by which every job must have finished."""


def scenario_of(n: int) -> str:
    """20% ``fail``, 5% ``slow``, the rest the default (``succeed``)."""
    if n % 10 in (3, 7):
        return "fail"
    if n % 20 == 5:
        return "slow"
    return "succeed"


@dataclass
class Submitted:
    n: int
    job_id: str
    scenario: str
    via: str


@dataclass
class Kill:
    victim: Replica
    owner: str
    at: float
    leases: dict[str, int]
    """Every replica's lease count in the query that chose the victim."""
    held: list[asyncpg.Record]
    """The victim's rows still leased after it died: ``id, upstream_id, next_poll_at``."""


def owner_pid(owner: str) -> int:
    return int(owner.rsplit(":", 1)[1])


async def test_three_replicas_and_a_sigkill(
    postgres_dsn: str, pg_schema: str, serve: Serve, tmp_path: Path
) -> None:
    began = time.monotonic()
    recorder = UpstreamRecorder(status_latency=STATUS_LATENCY)
    sandbox = create_sandbox_app(SandboxSettings(speed=SPEED, seed=5))
    sandbox.middlewares.append(recorder.middleware)
    sandbox_url = await serve(sandbox)
    config = tmp_path / "replicas.toml"
    config.write_text(
        replica_config(
            sandbox_url,
            tick_ms=TICK_MS,
            lease_seconds=LEASE,
            total_timeout=TOTAL_TIMEOUT,
            policy={**FAST_POLICY, "max_interval": 1.0},
            pulse_policy=PULSE_POLICY,
            heartbeat=2.0,
        )
    )
    jobs_table = f'"{pg_schema}".jobs'
    events_table = f'"{pg_schema}".events'

    started: list[Replica] = []  # every process, retries included: all are stopped at the end
    followers: list[asyncio.Task[None]] = []
    db = await asyncpg.connect(postgres_dsn)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400))
    try:
        keys = [f"replica{index}-key-{pg_schema[-8:]}" for index in range(REPLICAS)]
        replicas = list(
            await asyncio.gather(
                *(
                    launch(
                        session,
                        started,
                        f"replica-{index}",
                        config,
                        replica_env(postgres_dsn, pg_schema, key),
                        key,
                        within=60.0,
                    )
                    for index, key in enumerate(keys)
                )
            )
        )
        ready = time.monotonic()
        by_key = {replica.api_key: replica for replica in replicas}

        def survivors() -> list[Replica]:
            return [replica for replica in replicas if replica.alive]

        # One SSE client per replica, each from the log's start; a client whose replica dies
        # follows the first survivor, resuming after the last event it received.
        clients = [SseClient(replica.name, session) for replica in replicas]

        def picker(replica: Replica) -> Callable[[], str]:
            return lambda: replica.url if replica.alive else survivors()[0].url

        for replica, client in zip(replicas, clients, strict=True):
            followers.append(asyncio.create_task(client.follow(picker(replica))))
        async with asyncio.timeout(10):
            await asyncio.gather(*(client.connected.wait() for client in clients))

        # -- submit, and kill the busiest replica on the way -----------------------------------
        gate = asyncio.Lock()  # a submission and the kill never overlap
        submitted: list[Submitted] = []

        async def submit(n: int) -> None:
            scenario = scenario_of(n)
            file_url = f"https://example.com/{n}.pdf"
            if scenario != "succeed":
                file_url += f"?sandbox={scenario}"
            body = {"provider": "pulse", "request": {"fileUrl": file_url}}
            target = replicas[n % REPLICAS]
            if not target.alive:
                alive = survivors()
                target = alive[n % len(alive)]
            async with session.post(f"{target.url}/v1/jobs", json=body) as response:
                answer = await response.json()
                assert response.status == 201, answer
            submitted.append(Submitted(n, answer["id"], scenario, target.name))

        async def submit_all() -> None:
            start = time.monotonic()
            await asyncio.gather(*(submit(n) for n in range(SPIKE)))  # long before the kill
            for n in range(SPIKE, JOBS):
                due = start + PACED_FROM + (n - SPIKE) * SUBMIT_EVERY
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                async with gate:
                    await submit(n)

        async def lease_counts() -> dict[str, int]:
            rows = await db.fetch(
                f"SELECT lease_owner, count(*) FROM {jobs_table} "
                "WHERE lease_owner IS NOT NULL GROUP BY 1"
            )
            return {str(row[0]): int(row[1]) for row in rows}

        async def kill_busiest(first_submit: float) -> Kill:
            await asyncio.sleep(max(0.0, first_submit + KILL_AFTER - time.monotonic()))
            assert len(submitted) >= SPIKE  # the spike's submissions are not behind the gate
            patient_until = time.monotonic() + 4.0
            give_up = time.monotonic() + 20.0
            by_pid = {replica.pid: replica for replica in replicas}
            while time.monotonic() < give_up:
                async with gate:
                    counts = await lease_counts()
                    owners = {o: n for o, n in counts.items() if owner_pid(o) in by_pid}
                    wanted = 2 if time.monotonic() < patient_until else 1
                    if owners and max(owners.values()) >= wanted:
                        owner = max(owners, key=lambda o: owners[o])
                        victim = by_pid[owner_pid(owner)]
                        at = victim.kill()
                        await asyncio.to_thread(victim.process.wait)
                        await asyncio.sleep(0.05)  # a COMMIT it sent before dying has landed
                        held = await db.fetch(
                            f"SELECT id, upstream_id, next_poll_at FROM {jobs_table} "
                            "WHERE lease_owner = $1 ORDER BY id",
                            owner,
                        )
                        named = {r.name: 0 for r in replicas}
                        named.update({by_pid[owner_pid(o)].name: n for o, n in owners.items()})
                        return Kill(victim, owner, at, named, list(held))
                await asyncio.sleep(0.02)
            raise AssertionError("no replica held a lease to be killed with in 20 s")

        first_submit = time.monotonic()
        submitting = asyncio.create_task(submit_all())
        kill = await kill_busiest(first_submit)
        await submitting
        submitted_at = time.monotonic()
        wall_offset = time.time() - time.monotonic()

        # -- wait for every job to finish, asking the survivors --------------------------------
        finished: dict[str, dict[str, Any]] = {}
        limit = asyncio.Semaphore(50)

        async def until_finished(k: int, job: Submitted) -> None:
            async with limit:
                for attempt in range(int(FINISH_WITHIN)):
                    alive = survivors()
                    url = alive[(k + attempt) % len(alive)].url
                    async with session.get(f"{url}/v1/jobs/{job.job_id}?wait=2") as response:
                        assert response.status == 200, await response.text()
                        body: dict[str, Any] = await response.json()
                    if body["state"] in FINISHED:
                        finished[job.job_id] = body
                        return

        async with asyncio.timeout(FINISH_WITHIN):
            await asyncio.gather(*(until_finished(k, job) for k, job in enumerate(submitted)))
        all_finished = time.monotonic()

        # -- what the store holds, and what GET says about it ----------------------------------
        rows = {
            str(row["id"]): row
            for row in await db.fetch(
                f"SELECT id, upstream_id, state, version, lease_owner, next_poll_at, "
                f"record::jsonb->>'state' AS record_state, "
                f"record::jsonb->'vault'->'copy'->>'expires_at' AS copy_expires_at "
                f"FROM {jobs_table}"
            )
        }
        mismatches: list[str] = []
        for k, job in enumerate(submitted):
            url = survivors()[k % len(survivors())].url
            async with session.get(f"{url}/v1/jobs/{job.job_id}") as response:
                body = await response.json()
            row = rows[job.job_id]
            seen = (body["state"], body["version"], body["upstream_id"])
            stored = (row["state"], row["version"], row["upstream_id"])
            if seen != stored or row["record_state"] != row["state"]:
                mismatches.append(f"{job.job_id}: GET {seen}, store {stored}")
        leases_left = [job_id for job_id, row in rows.items() if row["lease_owner"] is not None]
        # A succeeded job whose result jobgate holds is due once more, when that copy's retention
        # ends (the vault deletes it then); nothing else finished may be scheduled.
        still_due = [
            job_id
            for job_id, row in rows.items()
            if row["next_poll_at"] is not None
            and not (
                row["state"] == "succeeded"
                and row["copy_expires_at"] is not None
                and row["next_poll_at"] == datetime.fromisoformat(row["copy_expires_at"])
            )
        ]

        # -- SSE: every client, up to the log's last id ----------------------------------------
        last_id = int(
            await db.fetchval(f"SELECT max(id) FROM {events_table} WHERE tenant = 'default'")
        )
        expected_ids = [
            int(row[0])
            for row in await db.fetch(
                f"SELECT id FROM {events_table} WHERE tenant = 'default' AND id <= $1 ORDER BY id",
                last_id,
            )
        ]
        caught_up = await asyncio.gather(*(client.until(last_id, 15.0) for client in clients))
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        followers.clear()
        streams = {client.name: stream_gaps(client.ids, expected_ids) for client in clients}

        # -- the figures ----------------------------------------------------------------------
        victim = kill.victim
        live = [replica for replica in replicas if replica is not victim]
        calls = recorder.calls
        status_calls = recorder.of_kind("status")
        submits = recorder.of_kind("submit")
        sandbox_jobs = len(sandbox[SUBAPPS_KEY]["pulse"][JOBS_KEY])
        kill_t = kill.at - first_submit

        # 1. terminal states
        outcome = Counter((job.scenario, finished[job.job_id]["state"]) for job in submitted)
        wrong = [
            (job.job_id, job.scenario, finished[job.job_id]["state"])
            for job in submitted
            if finished[job.job_id]["state"] != EXPECTED[job.scenario]
        ]

        # 2. the dead replica's leased jobs, polled again by a survivor
        repolls: list[tuple[str, float, float]] = []  # job, delay after kill, margin past lease
        never_repolled: list[str] = []
        for row in kill.held:
            lease_end = row["next_poll_at"].timestamp() - wall_offset
            after = [
                call
                for call in status_calls
                if call.upstream_id == row["upstream_id"]
                and call.start >= kill.at
                and call.key != victim.api_key
            ]
            if not after:
                never_repolled.append(str(row["id"]))
                continue
            first = min(after, key=lambda call: call.start)
            repolls.append((str(row["id"]), first.start - kill.at, first.start - lease_end))
        bound = LEASE + PULSE_POLICY["max_interval"]
        worst = max((delay for _, delay, _ in repolls), default=float("nan"))
        earliest_margin = min((margin for _, _, margin in repolls), default=float("nan"))
        victim_after_kill = [c for c in calls if c.key == victim.api_key and c.start > kill.at]

        # 3. submits
        upstream_ids = [row["upstream_id"] for row in rows.values()]
        submit_ids = Counter(call.upstream_id for call in submits)

        # 4. overlapping polls of one job
        def cut_off(call: UpstreamCall) -> bool:
            return call.key == victim.api_key and call.start <= kill.at <= call.end

        pairs = overlapping_pairs(status_calls)
        pairs_cut = [p for p in pairs if cut_off(p[0]) or cut_off(p[1])]
        pairs_live = [p for p in pairs if not (cut_off(p[0]) or cut_off(p[1]))]
        in_flight_at_kill = [c for c in status_calls if cut_off(c)]

        # 5. fenced writes, and anything else worth a look in the logs
        def count(replica: Replica, event: str) -> int:
            return sum(1 for line in replica.log_events() if line.get("event") == event)

        fenced = {replica.name: count(replica, "runner.write_fenced") for replica in replicas}
        crashed = {
            replica.name: count(replica, "runner.poll_crashed")
            + count(replica, "leased.loop_failed")
            for replica in replicas
        }
        upstream_errors = {
            replica.name: count(replica, "runner.upstream_error") for replica in replicas
        }

        # 7. the rate the sandbox saw
        status_starts = [call.start for call in status_calls]
        max_status_window = max_in_window(status_starts, 1.0)
        excess = bucket_excess(status_starts, RATE)
        spike = [job for job in submitted if job.n < SPIKE]
        spike_upstream = {str(rows[job.job_id]["upstream_id"]) for job in spike}
        spike_first: dict[str, float] = {}
        for call in status_calls:
            if call.upstream_id in spike_upstream:
                spike_first.setdefault(call.upstream_id, call.start)
        spike_spread = max(spike_first.values()) - min(spike_first.values())
        spike_created = [
            datetime.fromisoformat(finished[job.job_id]["created_at"]).timestamp() for job in spike
        ]
        created_spread = max(spike_created) - min(spike_created)
        max_submit_window = max_in_window([call.start for call in submits], 1.0)
        max_inflight = max_concurrent((call.start, call.end) for call in status_calls)
        busy_span = max(status_starts) - min(status_starts)
        per_replica = Counter(by_key[call.key].name for call in status_calls)
        per_job = Counter(call.upstream_id for call in status_calls)
        # How far behind its schedule polling fell: the gaps between one job's successive polls
        # (the dead replica's jobs, which waited out a lease, aside) against max_interval.
        held_upstream = {str(row["upstream_id"]) for row in kill.held}
        starts_of: dict[str, list[float]] = {}
        for call in status_calls:
            if call.upstream_id is not None and call.upstream_id not in held_upstream:
                starts_of.setdefault(call.upstream_id, []).append(call.start)
        widest_gap = max(
            (b - a for starts in starts_of.values() for a, b in itertools.pairwise(sorted(starts))),
            default=0.0,
        )

        print()
        print("=== jobgate replicas end to end: figures ===")
        print(
            f"setup: {REPLICAS} replicas (pids "
            f"{', '.join(f'{r.name}={r.pid}' for r in replicas)}), {JOBS} pulse jobs "
            f"{dict(Counter(job.scenario for job in submitted))}, one every {SUBMIT_EVERY:g} s; "
            f"sandbox speed {SPEED:g} (job 2.5 s, slow 10 s), status latency "
            f"{STATUS_LATENCY * 1000:g} ms; lease {LEASE:g} s, total_timeout {TOTAL_TIMEOUT:g} s, "
            f"tick {TICK_MS} ms; pulse policy first_delay {PULSE_POLICY['first_delay']:g} s, "
            f"interval {PULSE_POLICY['min_interval']:g}-{PULSE_POLICY['max_interval']:g} s, "
            f"rate {RATE:g}/s, burst {BURST}, concurrency {CONCURRENCY}"
        )
        print(
            f"timing: replicas ready in {ready - began:.1f} s; submissions took "
            f"{submitted_at - first_submit:.1f} s; all {JOBS} finished "
            f"{all_finished - first_submit:.1f} s after the first submission"
        )
        print(
            f"[1] terminal states as expected: {JOBS - len(wrong)}/{JOBS} "
            f"(scenario -> state: {dict(sorted(outcome.items()))})"
        )
        print(
            f"[2] SIGKILL {victim.name} (pid {victim.pid}) {kill_t:.2f} s after the first "
            f"submission; leases per replica when chosen: {kill.leases}; held at the kill: "
            f"{len(kill.held)} jobs ({len(in_flight_at_kill)} status calls in flight); re-polled "
            f"by survivors {len(repolls)}/{len(kill.held)}, delay after the kill "
            f"{', '.join(f'{d:.2f}' for _, d, _ in sorted(repolls, key=lambda r: r[1]))} s; "
            f"max {worst:.2f} s (bound lease + max_interval = {bound:g} s); earliest re-poll "
            f"{earliest_margin:+.3f} s after its lease ended; victim calls after the kill: "
            f"{len(victim_after_kill)}"
        )
        print(
            f"[3] upstream submit POSTs: {len(submits)}; sandbox pulse jobs: {sandbox_jobs}; "
            f"distinct upstream ids in the store: {len(set(upstream_ids))}; upstream ids "
            f"submitted more than once: {sum(1 for n in submit_ids.values() if n > 1)}"
        )
        print(
            f"[4] overlapping status calls on one job: {len(pairs_live)} among live calls, "
            f"{len(pairs_cut)} involving the killed replica's calls in flight at the kill "
            f"({len(status_calls)} status calls on {len(per_job)} jobs)"
        )
        print(
            f"[5] runner.write_fenced: survivors {sum(fenced[r.name] for r in live)} "
            f"({ {r.name: fenced[r.name] for r in live} }), killed replica "
            f"{fenced[victim.name]}; GET vs store (state, version, upstream id) mismatches: "
            f"{len(mismatches)}/{len(submitted)}; leases left: {len(leases_left)}; finished jobs "
            f"still scheduled: {len(still_due)}; poll crashes / loop failures: {crashed}; "
            f"upstream errors logged: {upstream_errors}"
        )
        for client in clients:
            gaps = streams[client.name]
            print(
                f"[6] SSE client of {client.name}: {len(client.connections)} connection(s) "
                f"{[(url.rsplit(':', 1)[1], after) for url, after in client.connections]} "
                f"(port, Last-Event-ID); {gaps['received']} events received of "
                f"{gaps['expected']} in the log (last id {last_id}); strictly increasing: "
                f"{gaps['increasing']}; duplicates {gaps['duplicates']}; missing "
                f"{len(gaps['missing'])}; unexpected {len(gaps['unexpected'])}; kinds "
                f"{dict(client.kinds)}"
            )
        print(
            f"[7] status calls: {len(status_calls)} over {busy_span:.1f} s "
            f"(per replica {dict(sorted(per_replica.items()))}); max in any 1 s window "
            f"{max_status_window} (configured rate {RATE:g}/s + burst {BURST} = "
            f"{RATE + BURST:g}); max in flight at once {max_inflight} (concurrency "
            f"{CONCURRENCY}); token-bucket check, the most calls in any window beyond rate x "
            f"its length: {excess:.1f} (burst {BURST}); the {SPIKE} jobs submitted at once "
            f"(created within {created_spread:.2f} s) had their first polls spread over "
            f"{spike_spread:.2f} s (the bucket alone needs >= {(SPIKE - BURST) / RATE:.2f} s); "
            f"submit POSTs {len(submits)}, max {max_submit_window} in 1 s "
            f"(not rate-limited); widest gap between successive polls of a job "
            f"{widest_gap:.2f} s (max_interval {PULSE_POLICY['max_interval']:g} s)"
        )
        print(f"logs (JSON, one file per replica): {tmp_path}")
        print("=== end of figures ===")

        # -- the assertions -------------------------------------------------------------------
        assert not wrong, wrong
        assert kill.held, "the victim held no lease at the kill"
        assert not never_repolled, never_repolled
        assert worst <= bound, repolls
        assert earliest_margin >= -0.05, repolls  # none before its lease ended (clock reading)
        assert len(submits) == JOBS
        assert sandbox_jobs == JOBS
        assert len(set(upstream_ids)) == JOBS
        assert not pairs_live, pairs_live[:5]
        assert not pairs_cut, pairs_cut[:5]
        assert sum(fenced[r.name] for r in live) == 0, fenced
        assert not mismatches, mismatches[:5]
        assert not leases_left, leases_left
        assert not still_due, still_due
        assert not any(crashed.values()), crashed
        assert all(caught_up), [client.last_id for client in clients]
        moved = clients[replicas.index(victim)]
        assert len(moved.connections) >= 2, moved.connections
        assert moved.connections[1][1] > 0, moved.connections  # resumed, not restarted
        for client in clients:
            gaps = streams[client.name]
            assert gaps["increasing"], client.name
            assert gaps["duplicates"] == 0, client.name
            assert gaps["missing"] == [], (client.name, gaps["missing"][:10])
            assert gaps["unexpected"] == [], (client.name, gaps["unexpected"][:10])
        steady = [clients[replicas.index(replica)] for replica in live]
        assert all(len(client.connections) == 1 for client in steady), [
            client.connections for client in steady
        ]
        assert max_status_window <= RATE + BURST
        # The same at every window length; one call of slack for the few milliseconds between a
        # claim taking its token and its request reaching the sandbox, which vary per call.
        assert excess <= BURST + 1
    finally:
        for task in followers:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*followers, return_exceptions=True)
        await stop_replicas(started)
        await session.close()
        await db.close()
