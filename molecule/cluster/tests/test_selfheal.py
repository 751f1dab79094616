"""Never silently stuck (docs/RELIABILITY.md, "Self-healing"): faults that used to leave an
instance `active` but dead, each injected under live load with consumers running and counted.

- SIGSTOP of an instance's main process: systemd's watchdog kills and restarts it within 60 s;
  the same for Flower.
- `systemctl stop` during a task longer than the stop grace: its message is back in its queue at
  once (another host runs it within seconds), not after the visibility timeout.
- The broker at maxmemory for 30 s while tasks flow: 0 lost, 0 run twice, no instance wedged or
  restarted, new tasks run within 60 s of memory being freed and beat sends again, no step by
  hand.
- The result store (its own Redis) at maxmemory for 30 s: it evicts, tasks keep running.
- `systemctl status` shows each instance's live STATUS line.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import QUEUES, other_host
from reliability import (
    FIGURES,
    INSTANCES,
    WORKERS,
    all_nodes,
    broker_admin,
    counts,
    info_field,
    instance_states,
    lab,
    main_pid,
    missing_probes,
    new_prefix,
    probes,
    results_admin,
    send,
    send_each,
    send_many,
    served_without,
    wait_answering,
    wait_done,
    wait_healthy,
    wait_running,
)

testinfra_hosts = ["ops1"]


def figure(line: str) -> None:
    FIGURES.append(line)
    print(line, flush=True)


@pytest.fixture
def healed(host: Any) -> Any:
    """Whatever the test did: every instance active and answering afterwards."""
    try:
        yield host
    finally:
        for name in WORKERS:
            worker = other_host(name)
            worker.run("pkill -CONT -f 'celery --app' ; systemctl start celery-workers.target")
            wait_healthy(name)
        if "value" in ORIGINAL_MAXMEMORY:  # the broker-full test ran: its limit back
            broker_admin("CONFIG SET maxmemory " + ORIGINAL_MAXMEMORY["value"], check=False)
        wait_answering(host, all_nodes())


class Load:
    """ops1 sends 1 s probes to every queue in batches until stopped; counts what was refused."""

    def __init__(self, ops1: Any, label: str) -> None:
        self.ops1, self.prefix = ops1, new_prefix(label)
        self.sent = self.refused = 0
        self.errors: set[str] = set()  # why publishes were refused (distinct messages)
        self.failure: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._send_until_stopped()
        except Exception as exc:  # the sender itself broke: re-raised by __exit__, not hidden
            self.failure = exc

    def _send_until_stopped(self) -> None:
        i = 0
        while not self._stop.is_set():
            batch = [(f"{self.prefix}-{i + k}", QUEUES[(i + k) % len(QUEUES)]) for k in range(5)]
            i += len(batch)
            # Counted per task: a publish refused by a full broker told its producer (not
            # lost), and the tasks of the same batch sent before it are queued (counted sent).
            out = send_each(self.ops1, batch, sleep_seconds=1)
            self.sent += len(out["ids"])
            self.refused += out["refused"]
            self.errors.update(out["errors"])
            time.sleep(1)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(120)
        if self.failure is not None and exc[0] is None:
            raise AssertionError(f"the load's sender failed: {self.failure}") from self.failure

    def sent_tokens(self) -> int:
        return self.sent


def test_status_line_in_systemctl_status(host: Any) -> None:
    for name in WORKERS:
        for instance in INSTANCES:
            out = other_host(name).check_output(f"systemctl status celery-worker@{instance}")
            assert 'Status: "consuming ' in out, out
    out = host.check_output("systemctl status celery-beat")
    assert 'Status: "scheduling ' in out, out


def sigstop_until_restarted(host: Any, unit: str, status_word: str) -> float:
    """SIGSTOP the unit's main process; seconds until systemd runs a new one whose STATUS line
    holds `status_word` (at most 120). The stopped process is resumed in any case."""
    pid = main_pid(host, unit)
    host.check_output(f"kill -STOP {pid}")
    stopped = time.monotonic()
    try:
        while time.monotonic() - stopped < 120:
            now = host.run(f"systemctl show -p MainPID,StatusText --value {unit}")
            new_pid, *status = now.stdout.splitlines() or ["0"]
            if new_pid.strip() not in ("0", str(pid)) and status_word in " ".join(status):
                break
            time.sleep(1)
        return time.monotonic() - stopped
    finally:
        host.run(f"kill -CONT {pid}")  # gone if systemd killed it


def test_sigstop_main_process_restarted_by_watchdog(healed: Any) -> None:
    """SIGSTOP of pricing@HOST's main process under load: restarted within 60 s; 0 lost."""
    ops1 = healed
    with Load(ops1, "sigstop") as load:
        time.sleep(5)
        recovered = sigstop_until_restarted(
            other_host("worker1"), "celery-worker@pricing", "consuming"
        )
        time.sleep(5)
    figure(f"RELIABILITY SIGSTOP main process: restarted and consuming after {recovered:.0f} s")
    assert recovered < 60, f"not restarted within 60 s ({recovered:.0f} s)"
    assert load.refused == 0, load.errors  # one worker frozen: the broker refuses nothing
    c = wait_done(ops1, load.prefix, load.sent, 200, "SIGSTOP of pricing's main process")
    assert c["duplicated"] == 0, c
    # The known window (docs/RELIABILITY.md, "A consumer frozen or cut off mid-BRPOP"): Redis
    # hands the next pricing message to the frozen process's pending BRPOP, and the watchdog's
    # SIGKILL loses it with the reply unread: one per consumer connection (1 here). More is a
    # regression.
    assert c["lost"] <= 1, c
    if c["lost"]:
        pytest.xfail(f"known loss window of a frozen consumer: {c['lost']} of {load.sent} lost")


def test_sigstop_flower_restarted_by_watchdog(host: Any) -> None:
    """SIGSTOP of Flower: systemd's watchdog (30 s) kills and restarts it; it serves again."""
    ops1 = host
    show = "systemctl show -p Type,WatchdogUSec --value flower.service"
    assert ops1.check_output(show).split() == ["notify", "30s"]
    recovered = sigstop_until_restarted(ops1, "flower.service", "serving")
    figure(f"RELIABILITY SIGSTOP Flower: restarted and serving after {recovered:.0f} s")
    assert recovered < 60, f"not restarted within 60 s ({recovered:.0f} s)"
    status = ops1.check_output("systemctl status flower.service")
    assert 'Status: "serving http' in status, status


def test_stop_requeues_a_task_past_the_grace(healed: Any, hostvars: dict[str, Any]) -> None:
    """`systemctl stop` during a task longer than the stop grace: back in its queue at once."""
    ops1 = healed
    grace = int(hostvars["celery_app_worker_soft_shutdown_timeout"])
    prefix = new_prefix("stopgrace")
    send(ops1, [(f"{prefix}-0", "pricing")], sleep_seconds=grace + 15)
    (row,) = wait_running(ops1, prefix)
    hostname = row["worker"].split("@")[1]
    worker = other_host(hostname)
    started = time.monotonic()
    worker.check_output("systemctl stop celery-worker@pricing")
    took = time.monotonic() - started
    # Requeued at once: another host has started it within seconds (the visibility timeout,
    # 60 s here, would take a minute from the first delivery).
    deadline = time.monotonic() + 15
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = probes(ops1, prefix)
        if rows and rows[0]["runs"] >= 2:
            break
        time.sleep(0.5)
    back = time.monotonic() - started - took
    worker.check_output("systemctl start celery-worker@pricing")
    figure(
        f"RELIABILITY systemctl stop past the grace ({grace} s): stop took {took:.0f} s, "
        f"running again elsewhere {back:.1f} s after"
    )
    assert rows and rows[0]["runs"] >= 2, f"not running again 15 s after the stop: {rows}"
    assert grace <= took < grace + 10, took
    c = wait_done(ops1, prefix, 1, 120, "systemctl stop during a task past the grace")
    assert (c["lost"], c["duplicated"]) == (0, 0), c
    assert hostname not in probes(ops1, prefix)[0]["worker"]


ORIGINAL_MAXMEMORY: dict[str, str] = {}


def test_broker_full_for_30_s_under_load(healed: Any) -> None:
    """Broker at maxmemory for 30 s while probes flow: 0 lost, 0 run twice, no instance wedged,
    new tasks complete within 60 s of memory being freed, beat sends again, nothing by hand."""
    ops1 = healed
    ORIGINAL_MAXMEMORY["value"] = broker_admin("CONFIG GET maxmemory").splitlines()[-1]
    pids = {w: main_pid(other_host(w), "celery-worker@pricing") for w in WORKERS}
    backlog = new_prefix("fullbacklog")
    with Load(ops1, "brokerfull") as load:
        time.sleep(8)
        # A backlog, so that the consumers are popping messages when writes start to fail.
        send_many(ops1, backlog, 300, QUEUES, sleep_seconds=0.2)
        used = info_field(broker_admin("INFO memory"), "used_memory")
        broker_admin(f"CONFIG SET maxmemory {used // 2}")  # full now: writes refused
        time.sleep(30)
        broker_admin(f"CONFIG SET maxmemory {ORIGINAL_MAXMEMORY['value']}")
        freed, freed_at = time.monotonic(), time.time()
        time.sleep(5)
    after = new_prefix("afterfull")
    send(ops1, [(f"{after}-{q}", q) for q in QUEUES])
    c_after = wait_done(ops1, after, len(QUEUES), 60, "new tasks after the broker was freed")
    recovered = time.monotonic() - freed
    # Beat publishes through one long-lived producer, refused all along: it must send again by
    # itself (its entries fire every 10 s here), not only pass its liveness check.
    beat_back = beat_sends_after(freed_at, timeout=60)
    c = wait_done(ops1, load.prefix, load.sent, 240, "broker full for 30 s under load")
    c_backlog = wait_done(ops1, backlog, 300, 240, "backlog consumed while the broker was full")
    figure(
        f"RELIABILITY broker full: {load.refused} refused at publish (producer told), "
        f"new tasks done {recovered:.0f} s after memory was freed, beat sending again after "
        f"{beat_back:.0f} s"
    )
    assert (c_after["lost"], c["lost"], c_backlog["lost"]) == (0, 0, 0), (c_after, c, c_backlog)
    assert load.refused > 0, "the broker was never full: the fault was not injected"
    # Refused for being full, and for nothing else (a refusal is counted as told, not lost).
    assert all("maxmemory" in e for e in load.errors), load.errors
    for name in WORKERS:
        assert instance_states(other_host(name)) == ["active"] * len(INSTANCES)
    wait_answering(ops1, all_nodes(), timeout=60)
    # Ridden through, not restarted: an ack refused at maxmemory used to end the consumer
    # ("Unrecoverable error: OutOfMemoryError"), and systemd restarted the instance.
    restarted = {w for w in WORKERS if main_pid(other_host(w), "celery-worker@pricing") != pids[w]}
    assert not restarted, f"pricing restarted on {sorted(restarted)} while the broker was full"
    # Acks go through while the broker is full (app/broker.py): nothing may run twice.
    twice = c["duplicated"] + c_backlog["duplicated"] + c_after["duplicated"]
    assert twice == 0, (c, c_backlog, c_after)


def beat_sends_after(wall: float, timeout: float) -> float:
    """Seconds from `wall` (epoch) to beat's first send after it, as beat records each send in
    the broker (beat:last_sent, app/liveness.py); fails after `timeout` s without one."""
    deadline = time.monotonic() + timeout
    while True:
        fields = broker_admin("HGETALL beat:last_sent").splitlines()
        latest = max((float(v) for v in fields[1::2]), default=0.0)
        if latest > wall:
            return latest - wall
        assert time.monotonic() < deadline, f"beat sent nothing in {timeout:.0f} s: {fields}"
        time.sleep(2)


# 4 MiB of junk per call (400 keys of 10 KiB), written by the admin in one script: newer than
# any result, so that the eviction policy has to choose among the results too.
FILL_RESULTS = (
    "EVAL \"for i = 1, 400 do redis.call('SET', 'fill:' .. ARGV[1] .. ':' .. i, "
    "string.rep('x', 10240)) end\" 0 "
)


def results_refused() -> int:
    """Result writes the workers logged as refused (app/results.py), on both hosts."""
    grep = "cat /var/log/celery/*.log | grep -c result_not_stored || true"
    return sum(int(other_host(w).check_output(grep) or 0) for w in WORKERS)


def test_results_store_full_tasks_keep_running(healed: Any) -> None:
    """The result store at its maxmemory for 30 s while probes flow: it evicts, never refuses;
    0 lost, 0 run twice, no instance restarted, the broker untouched, results readable after."""
    ops1 = healed
    limit = results_admin("CONFIG GET maxmemory").splitlines()[-1]
    evicted = info_field(results_admin("INFO stats"), "evicted_keys")
    broker_used = info_field(broker_admin("INFO memory"), "used_memory")
    pids = {w: main_pid(other_host(w), "celery-worker@pricing") for w in WORKERS}
    refused_before = results_refused()
    try:
        with Load(ops1, "resultsfull") as load:
            time.sleep(5)
            used = info_field(results_admin("INFO memory"), "used_memory")
            results_admin(f"CONFIG SET maxmemory {used + 2 * 1024 * 1024}")
            full_until = time.monotonic() + 30
            i = 0
            while time.monotonic() < full_until:  # kept full: junk keeps arriving
                results_admin(FILL_RESULTS + str(i))
                i += 1
                time.sleep(1)
            memory = results_admin("INFO memory")
            at_limit = info_field(memory, "used_memory") >= info_field(memory, "maxmemory") * 0.9
    finally:
        results_admin(f"CONFIG SET maxmemory {limit}")
        results_admin(
            "EVAL \"for _, k in ipairs(redis.call('KEYS', 'fill:*')) do "
            "redis.call('DEL', k) end\" 0"
        )
    c = wait_done(ops1, load.prefix, load.sent, 180, "result store full for 30 s under load")
    evictions = info_field(results_admin("INFO stats"), "evicted_keys") - evicted
    figure(
        f"RELIABILITY results full: {load.sent} sent, {c['completed']} completed, "
        f"{evictions} keys evicted, {load.refused} refused at publish"
    )
    assert at_limit and evictions > 0, "the result store was never full: no fault injected"
    assert results_refused() == refused_before, "result writes were refused: it did not evict"
    assert (c["lost"], c["duplicated"], load.refused) == (0, 0, 0), (c, load.errors)
    restarted = {w for w in WORKERS if main_pid(other_host(w), "celery-worker@pricing") != pids[w]}
    assert not restarted, f"pricing restarted on {sorted(restarted)} while results were full"
    # The broker is another server: its memory did not take the results' load.
    assert info_field(broker_admin("INFO memory"), "used_memory") < broker_used + 64 * 1024 * 1024
    # A result written now is stored and read back.
    task_id = ops1.check_output("taskctl submit ops.probe --args '[\"after-results-full\"]'")
    done = ops1.run(f"taskctl result {task_id.strip()} --wait --timeout 60")
    assert done.rc == 0 and "after-results-full" in done.stdout, done.stdout + done.stderr


@pytest.mark.timeout(1200)
def test_redis_sigkill_with_1000_in_flight(healed: Any) -> None:
    """SIGKILL of redis-server while the consumers work through 2,000 probes, at least 1,000 of
    them not yet done: systemd restarts it from its AOF; 0 lost, 0 completed twice."""
    ops1 = healed
    n = 2000
    prefix = new_prefix("redissigkill")
    # Queued while the instances are stopped (sending is slower than the fleet consumes), then
    # Redis is killed as soon as the consumers are into them (each poll takes a second or two,
    # in which the fleet completes ~100: 2,000 keeps well over 1,000 in flight).
    stop = "systemctl stop celery-workers.target 'celery-worker@*.service'"
    for name in WORKERS:
        other_host(name).check_output(stop)
    try:
        seconds = send_many(ops1, prefix, n, QUEUES, sleep_seconds=0.05)
    finally:
        for name in WORKERS:
            other_host(name).check_output("systemctl start celery-workers.target")
    data1 = other_host("data1")
    pid = main_pid(data1, "redis-server")
    log_lines = int(data1.check_output("wc -l < /var/log/redis/redis-server.log"))
    deadline = time.monotonic() + 120
    while counts(ops1, prefix)["rows"] < 100 and time.monotonic() < deadline:
        time.sleep(0.2)
    data1.check_output(f"kill -KILL {pid}")
    killed = time.monotonic()
    in_flight = n - counts(ops1, prefix)["completed"]  # read after the kill: a lower bound
    while main_pid(data1, "redis-server") in (0, pid) and time.monotonic() - killed < 60:
        time.sleep(0.2)
    back = time.monotonic() - killed
    # At most 240 s (past batch's 100 s visibility + the sweep); wait_done returns once the broker
    # holds none of them: what is not done then is lost.
    c = wait_done(ops1, prefix, n, 240, f"Redis SIGKILL with {in_flight} in flight")
    figure(
        f"RELIABILITY Redis SIGKILL: sent in {seconds:.0f} s, {in_flight} in flight, "
        f"Redis back in {back:.1f} s"
    )
    assert in_flight >= 1000, in_flight
    # An ack that died with Redis: the task had completed, and its message comes back from its
    # unacked record (which the AOF now keeps) and runs again: at least once (acks_late), never
    # lost; the app's tasks send each mail once (delivery ledgers). At most one per pool slot (24).
    assert c["duplicated"] <= 24, c
    # The restart replayed every transaction of the AOF (kombu's acks, restores and unacked
    # records): Redis 7.0 drops those its `default` user may not run, and logs it (redis role).
    dropped = data1.run(
        f"tail -n +{log_lines + 1} /var/log/redis/redis-server.log | grep -c AOF-loading-client"
    ).stdout.strip()
    assert dropped == "0", f"{dropped} transactions of the AOF dropped at the restart"
    # The known window (docs/RELIABILITY.md, "Redis killed"): at most the messages whose BRPOP
    # reply died with Redis, one per consumer connection (6 instances), plus the tasks Celery
    # terminates on the lost connection (24 pool slots). More is a regression.
    assert c["lost"] <= 30, (c, missing_probes(ops1, prefix, n))
    if c["lost"]:
        pytest.xfail(f"known loss window of a Redis crash: {c['lost']} of {n} lost")


SHORT = ["pricing", "notifications", "default"]  # instances pricing, notifications: visibility 80 s
LONG = ["data_processing", "maintenance"]  # instance batch: visibility 100 s


@pytest.mark.timeout(900)
def test_power_cut_short_queues_back_within_2_minutes(healed: Any) -> None:
    """worker2 loses power with probes running on every queue: the short queues' in-flight work
    completes on worker1 within 2 minutes (their own 80 s visibility timeout), batch's within its
    own 100 s; nothing that worker1 runs is started twice; nothing lost; new probes on every queue
    are served by worker1 meanwhile; worker2 boots back healthy."""
    ops1 = healed
    prefix = new_prefix("powercut")
    tokens = [(f"{prefix}-{q}-{i}", q) for q in SHORT + LONG for i in range(6)]
    send(ops1, tokens, sleep_seconds=10)
    deadline = time.monotonic() + 60
    on_worker2: set[str] = set()
    while time.monotonic() < deadline:
        rows = probes(ops1, prefix)
        on_worker2 = {r["queue"] for r in rows if r["worker"].endswith("@worker2")}
        if on_worker2 >= set(SHORT + LONG):
            break
        time.sleep(0.5)
    assert on_worker2 >= set(SHORT + LONG), (
        f"worker2 runs no probe of {set(SHORT + LONG) - on_worker2}"
    )
    lab("stop", "worker2", "--force")
    cut = time.monotonic()
    try:
        done: dict[str, float] = {}
        while time.monotonic() - cut < 300 and len(done) < 2:
            rows = probes(ops1, prefix)
            for group, queues in (("short", SHORT), ("long", LONG)):
                mine = [r for r in rows if r["queue"] in queues]
                if (
                    group not in done
                    and len(mine) == 6 * len(queues)
                    and all(r["completions"] >= 1 for r in mine)
                ):
                    done[group] = time.monotonic() - cut
            time.sleep(1)
        c = wait_done(ops1, prefix, len(tokens), 60, "worker host power cut, probes on every queue")
        # New work meanwhile: every queue served, all by worker1.
        served_without(ops1, "worker host powered off")
    finally:
        lab("start", "worker2")
    wait_healthy("worker2")
    figure(
        f"RELIABILITY power cut: short queues all done {done.get('short', -1):.0f} s after the cut "
        f"(target 120), batch's {done.get('long', -1):.0f} s (its visibility 100 s)"
    )
    assert (c["lost"], c["duplicated"]) == (0, 0), c
    assert done.get("short", 999) < 120, done
    assert done.get("long", 999) < 100 + 60, done
    twice = [
        r for r in probes(ops1, prefix) if r["workers"][0].endswith("@worker1") and r["runs"] > 1
    ]
    assert not twice, f"started twice while the first run (on worker1) was alive: {twice}"
