"""Sharding end to end, as deploy/sharded describes it: 2 mailmon, 2 Prometheus agents splitting 40 file_sd targets
by hashmod, remote-writing into a central Prometheus that runs the shipped rules.

Real processes throughout: the mail lab's Postfix, `mailmon run`, Prometheus in agent mode and with the remote-write
receiver (Debian's package). The 40 targets are 40 host names that each mailmon's private /etc/hosts points at the
lab, so every one is a distinct check of a real server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, Lab, free_port
from tests.processes import Daemon, Monitor, fast_rules, http_get, query, wait_for
from tests.tools import tool

pytestmark = [pytest.mark.lab, pytest.mark.prometheus]

SHARDS = 2
TARGETS = [f"mx{i:02d}.lab.test" for i in range(1, 41)]
INTERVAL = 3  # seconds between scrapes (probes) of each target


def _agent_config(tmp: Path, shard: int, mailmon: str, sd: Path, central: str) -> Path:
    """deploy/sharded/agent.yml for shard `shard`: only its addresses, shard number and timings changed."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "sharded" / "agent.yml").read_text())
    config["global"].update({"scrape_interval": f"{INTERVAL}s", "scrape_timeout": "2s",
                             "external_labels": {"shard": str(shard)}})
    probe_job, self_job = config["scrape_configs"]
    probe_job["file_sd_configs"] = [{"files": [str(sd)], "refresh_interval": "1s"}]
    for rule in probe_job["relabel_configs"]:
        if rule.get("action") == "hashmod":
            rule["modulus"] = SHARDS
        elif rule.get("action") == "keep":
            rule["regex"] = str(shard)
        elif rule.get("target_label") == "__address__":
            rule["replacement"] = mailmon
    self_job["static_configs"] = [{"targets": [mailmon]}]
    self_job["relabel_configs"][-1]["replacement"] = f"mailmon-shard-{shard}"
    config["remote_write"] = [{"url": f"{central}/api/v1/write",
                               "queue_config": {"batch_send_deadline": "1s"}}]
    path = tmp / f"agent{shard}.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def sharded(lab: Lab, tmp_path: Path) -> Iterator[tuple[list[Monitor], str]]:
    """Two mailmon, two agents, one central Prometheus; yields (the mailmons, the central URL)."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{lab.host} {name}\n" for name in TARGETS))
    sd = tmp_path / "targets.json"
    sd.write_text(json.dumps([{"targets": TARGETS, "labels": {"module": "smtp_relay"}}]))
    config = tmp_path / "mailmon.yaml"
    config.write_text("vantage: dc\nconcurrency: 64\nmodules:\n"
                      "  smtp_relay: {protocol: smtp, port: 25, tls: none, timeout: 5s}\n")
    prometheus = tool("prometheus", package="the Debian package prometheus")
    started: list[Monitor | Daemon] = []
    try:
        monitors = [Monitor(config, tmp_path / f"mailmon{i}.log", hosts=hosts) for i in range(SHARDS)]
        started += monitors
        central_config = tmp_path / "central.yml"
        central_config.write_text(json.dumps({"global": {"evaluation_interval": "1s"},
                                              "rule_files": [str(fast_rules(tmp_path))]}))
        listen = f"127.0.0.1:{free_port()}"
        central = f"http://{listen}"
        started.append(Daemon([prometheus, f"--config.file={central_config}", "--web.enable-remote-write-receiver",
                               f"--storage.tsdb.path={tmp_path / 'central'}", f"--web.listen-address={listen}"],
                              f"{central}/-/ready", tmp_path / "central.log"))
        for shard, monitor in enumerate(monitors):
            agent_listen = f"127.0.0.1:{free_port()}"
            agent_config = _agent_config(tmp_path, shard, monitor.listen, sd, central)
            started.append(Daemon([prometheus, "--enable-feature=agent", f"--config.file={agent_config}",
                                   f"--storage.agent.path={tmp_path / f'agent{shard}'}",
                                   f"--web.listen-address={agent_listen}"],
                                  f"http://{agent_listen}/-/ready", tmp_path / f"agent{shard}.log"))
        yield monitors, central
    finally:
        for process in reversed(started):
            process.stop()


def _probed(monitor: Monitor) -> set[str]:
    return {row["target"] for row in json.loads(http_get(monitor.url + "/api/status")[1])["on_demand"]}


def _requests(monitor: Monitor) -> float:
    total = 0.0
    for line in monitor.metrics().splitlines():
        if line.startswith("mailmon_probe_requests_total{") and ('outcome="ok"' in line or 'outcome="failed"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_each_target_probed_by_one_shard_central_has_all_and_alerts(
        sharded: tuple[list[Monitor], str], lab: Lab) -> None:
    monitors, central = sharded

    # The central Prometheus holds every target's series, each from exactly one shard.
    def shards_per_target() -> dict[str, int]:
        rows = query(central, 'count by (target) (group by (target, shard) '
                              '(mailmon_check_success{job="mailmon"}))')
        return {row["metric"]["target"]: int(row["value"][1]) for row in rows}

    wait_for(lambda: set(shards_per_target()) == set(TARGETS), "every target's series in the central Prometheus",
             limit=60)
    assert set(shards_per_target().values()) == {1}
    assert {row["metric"]["shard"] for row in query(central, 'group by (shard) (mailmon_check_success)')} == {"0", "1"}

    # mailmon's own counts: the shards probe disjoint halves that together are every target...
    probed = [_probed(monitor) for monitor in monitors]
    assert probed[0] and probed[1] and not probed[0] & probed[1]
    assert probed[0] | probed[1] == set(TARGETS)
    # ... each once per interval: over 4 intervals, 40 targets make ~160 probes (not 320, as both shards would).
    before, began = sum(_requests(m) for m in monitors), time.monotonic()
    time.sleep(4 * INTERVAL)
    made = sum(_requests(m) for m in monitors) - before
    intervals = (time.monotonic() - began) / INTERVAL
    assert len(TARGETS) * (intervals - 1.5) <= made <= len(TARGETS) * (intervals + 1.5), (made, intervals)

    # The shipped rules run centrally: Postfix down fires the server-outage alert there.
    wait_for(lambda: query(central, 'vantage:mailmon_vantage_healthy:bool == 1'), "the vantage to count as healthy")
    lab.control("stop", "postfix")
    try:
        firing = 'ALERTS{alertname="MailmonSMTPServerOutage", alertstate="firing"}'
        rows = wait_for(lambda: query(central, firing), "MailmonSMTPServerOutage to fire centrally", limit=90)
        assert {row["metric"]["target"] for row in rows} <= set(TARGETS)
    finally:
        lab.control("start", "postfix")
