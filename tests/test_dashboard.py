"""docs/grafana-dashboard.json and docs/alerts.rules.yml, evaluated by a real Prometheus scraping real sidecars.

Debian's `prometheus` (installed by `make promtool-deps`) scrapes two `duo-sidecar serve` processes every second on
127.0.0.1, with docs/alerts.rules.yml loaded: a GitLab.com sidecar routing to an AI Gateway mock and a
Self-Managed one with a self-hosted model mock (tests/upstreams.py). The test causes what the panels show, in two
rounds so that every counter moves between scrapes: ResolveModel calls, DEFAULT_NAMESPACE_REQUIRED refusals,
Complete successes, 401 and 429 answers, 5xx until a circuit opens, a storage error (a SQLite write lock held
past storage.timeout_seconds). Then every panel query and every alert expression goes through Prometheus' HTTP API
(/api/v1/query): any query that errors fails the test, and so does one that returns nothing (or only NaN) where
the traffic produced data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from gitlab.duo.routing.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc, types_pb2
from tests.helpers import REPO, SidecarProcess, error_details, free_port, run_sidecar, write_config
from tests.upstreams import MockUpstream, serve_upstream

pytestmark = pytest.mark.asyncio

DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
RULES = REPO / "docs" / "alerts.rules.yml"
JOB = "duo-routing-sidecar"
SCRAPE_SECONDS = 1.0
# What Grafana puts in for its own variables; $__rate_interval is at least four scrape intervals in Grafana, and
# a minute covers all the test's data.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "1s", "__range": "1m"}
# Alerts whose condition the traffic below brings about: their full expression must return data, and Prometheus
# must hold them pending (their `for` has not passed yet). The others are not caused here, on purpose or because a
# test cannot wait for them: a sidecar that is down or whose store is unusable (DuoRoutingSidecarDown,
# DuoRoutingStoreUnusable), ResolveModel failing on the server side (a bug), latency above a bound, authentication
# failures (authentication is off), a catalog three refresh intervals old. For those the expression must still
# evaluate without error, and every series selector in it must match series the sidecars export (which proves the
# metric names and label values exist); only the threshold is not crossed.
CAUSED_ALERTS = {
    "DuoRoutingCompleteErrors",
    "DuoRoutingUpstreamCredentialsRejected",
    "DuoRoutingUpstreamRateLimited",
    "DuoRoutingUpstreamCircuitOpen",
    "DuoRoutingDefaultNamespaceRequiredSpiking",
}
# A series selector inside PromQL: metric{matchers}.
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^{}]*)\}")
TOKEN = "sk-dashboard-0123456789"
USER, NAMESPACE, OTHER_NAMESPACE = 1, 10, 20


def prometheus_binary() -> str:
    """The prometheus server's path; `make test` installs it (make promtool-deps), so CI fails without it."""
    found = shutil.which("prometheus")
    if found:
        return found
    message = "prometheus is missing: `make promtool-deps` installs Debian's prometheus package"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# -- the dashboard file ----------------------------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def substitute(expr: str, values: dict[str, str]) -> str:
    """expr with Grafana's $name and ${name} replaced by `values`; an unknown variable is an error."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"{expr!r} uses ${name}, which the dashboard does not define"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


async def test_the_dashboard_is_well_formed_and_covers_what_an_sre_watches() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    defined = variables(dashboard)
    assert {"datasource", "job", "instance"} <= set(defined)
    assert defined["datasource"]["type"] == "datasource" and defined["datasource"]["query"] == "prometheus"
    assert defined["job"]["query"] == JOB  # the job the alerting rules expect

    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in all_panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine

    exprs: list[str] = []
    for panel in query_panels(dashboard):
        assert panel["title"] and panel.get("description"), f"panel {panel['id']} needs a title and a description"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert 'job="$job"' in target["expr"] and 'instance=~"$instance"' in target["expr"], target["expr"]
            substitute(target["expr"], {**GRAFANA_BUILTINS, **{name: "x" for name in defined}})
            exprs.append(target["expr"])

    # Issue 13: ResolveModel rate, errors by code, latency percentiles; Complete time-to-first-token and errors by
    # upstream and reason; circuit state; snapshot age and config version per process; storage health; overload.
    everything = "\n".join(exprs)
    for needed in (
        'grpc_method="ResolveModel"',
        "grpc_server_handling_seconds_bucket",
        "by (grpc_method, grpc_code)",
        "duo_routing_upstream_time_to_first_token_seconds_bucket",
        "by (provider, model, outcome) (rate(duo_routing_upstream_requests_total",
        "duo_routing_upstream_circuit_state",
        "time() - duo_routing_snapshot_published_timestamp_seconds",
        "duo_routing_config_version",
        "duo_routing_store_up",
        "duo_routing_storage_errors_total",
        'grpc_code="ResourceExhausted"',
    ):
        assert needed in everything, f"no panel shows {needed}"
    sre = (REPO / "docs" / "sre.md").read_text()
    for name in set(SELECTOR.findall(everything)):
        metric = re.sub(r"_(bucket|count|sum)$", "", name[0])
        assert metric == "up" or f"`{metric}`" in sre, (
            f"the dashboard uses {metric}, which docs/sre.md does not describe"
        )


# -- a real Prometheus -------------------------------------------------------------------------------------------


class Prometheus:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def get(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}{path}", params=params) as response:
            body = await response.json(content_type=None)
        assert body.get("status") == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now; fails the test on any query error."""
        data = await self.get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        result: list[dict[str, Any]] = data["result"]
        return result

    async def scraped_after(self, moment: float, targets: int, limit_seconds: float = 15.0) -> None:
        """Waits until every target has been scraped by a scrape that started after `moment` (Unix time)."""
        deadline = time.monotonic() + limit_seconds
        while True:
            result = await self.query(f'timestamp(up{{job="{JOB}"}} == 1)')
            if len(result) == targets and min(float(r["value"][1]) for r in result) > moment:
                return
            assert time.monotonic() < deadline, f"the targets were not all scraped after {moment}: {result}"
            await asyncio.sleep(0.1)


def prometheus_config(directory: Path, rules: Path, targets: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(  # JSON is YAML
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
            }
        )
    )
    return config


@contextlib.asynccontextmanager
async def running_prometheus(binary: str, directory: Path, rules: Path, targets: list[str]) -> AsyncIterator[str]:
    """A Prometheus on 127.0.0.1 scraping `targets` every second with `rules` loaded; stopped on exit."""
    config = prometheus_config(directory, rules, targets)
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as output:  # a file, not a pipe: a pipe nobody reads would stall it once full
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as http:
            while True:
                assert process.returncode is None, f"prometheus exited: {tail(log)}"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}/-/ready") as response:
                        if response.status == 200:
                            break
                assert time.monotonic() < deadline, f"prometheus not ready: {tail(log)}"
                await asyncio.sleep(0.05)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


@contextlib.asynccontextmanager
async def sidecar_processes(
    specs: list[tuple[str, str, dict[str, str]]], directory: Path
) -> AsyncIterator[list[tuple[SidecarProcess, str]]]:
    """`duo-sidecar serve` processes (deployment type, extra config, environment), started side by side; yields
    each with its metrics address. They are killed at the end: their shutdown is not what this test is about."""
    stacks = [ExitStack() for _ in specs]

    def start(stack: ExitStack, deployment: str, extra: str, env: dict[str, str], index: int) -> SidecarProcess:
        port = free_port()
        workdir = directory / f"sidecar-{index}"
        workdir.mkdir(parents=True)
        return stack.enter_context(run_sidecar(write_config(workdir, deployment, port, extra), port, env))

    started = await asyncio.gather(
        *(asyncio.to_thread(start, stack, *spec, i) for i, (stack, spec) in enumerate(zip(stacks, specs, strict=True))),
        return_exceptions=True,
    )
    try:
        processes: list[tuple[SidecarProcess, str]] = []
        for item in started:
            if isinstance(item, BaseException):
                raise item
            config = tomllib.loads(item.config.read_text())
            processes.append((item, str(config["metrics"]["listen"])))
        yield processes
    finally:
        for item in started:
            if isinstance(item, SidecarProcess) and item.process.poll() is None:
                item.process.kill()
        await asyncio.gather(*(asyncio.to_thread(stack.close) for stack in stacks))


# -- traffic ---------------------------------------------------------------------------------------------------------


class Traffic:
    """The two sidecars' clients and what each round sends them."""

    def __init__(self, com: grpc.aio.Channel, managed: grpc.aio.Channel, database: Path) -> None:
        self.com_routing = routing_pb2_grpc.RoutingServiceStub(com)
        self.com_admin = admin_pb2_grpc.AdminServiceStub(com)
        self.routing = routing_pb2_grpc.RoutingServiceStub(managed)
        self.admin = admin_pb2_grpc.AdminServiceStub(managed)
        self.database = database
        self.model_id = ""

    async def set_up(self, model_server: MockUpstream) -> None:
        async def seats() -> AsyncIterator[admin_pb2.SyncSeatAssignmentsRequest]:
            yield admin_pb2.SyncSeatAssignmentsRequest(
                assignments=[
                    admin_pb2.SeatAssignment(user_id=USER, namespace_id=n, assigned=True)
                    for n in (NAMESPACE, OTHER_NAMESPACE)
                ]
            )

        await self.com_admin.SyncSeatAssignments(seats())
        await self.com_admin.UpdateNamespaceModelSelection(
            admin_pb2.UpdateNamespaceModelSelectionRequest(
                namespace_id=NAMESPACE, feature="duo_chat", offered_model_ref="claude_sonnet_4_6"
            )
        )
        created = await self.admin.CreateSelfHostedModel(
            admin_pb2.CreateSelfHostedModelRequest(
                self_hosted_model=admin_pb2.SelfHostedModel(
                    name="vLLM Mistral",
                    family=types_pb2.MODEL_FAMILY_MISTRAL,
                    platform=types_pb2.PLATFORM_OPENAI_COMPATIBLE,
                    endpoint=f"{model_server.url}/v1",
                    identifier="custom_openai/mistral-small",
                    api_token=TOKEN,
                )
            )
        )
        self.model_id = created.self_hosted_model.id
        await self.assign_model()

    async def assign_model(self) -> Any:
        return await self.admin.UpdateFeatureSetting(
            admin_pb2.UpdateFeatureSettingRequest(
                feature="duo_chat",
                provider=admin_pb2.FEATURE_PROVIDER_SELF_HOSTED,
                self_hosted_model_id=self.model_id,
            )
        )

    @staticmethod
    async def complete(routing: Any, namespace: int = 0) -> grpc.StatusCode:
        request = routing_pb2.CompleteRequest(
            user_id=USER,
            feature="duo_chat",
            root_namespace_id=namespace,
            messages=[routing_pb2.ChatMessage(role="user", content="Say hello")],
        )
        try:
            async for _ in routing.Complete(request, timeout=10):
                pass
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    async def round(self, number: int, gateway: MockUpstream, model_server: MockUpstream) -> None:
        # GitLab.com: ResolveModel with context (OK) and without (DEFAULT_NAMESPACE_REQUIRED: two seats, one pin).
        for _ in range(20):
            await self.com_routing.ResolveModel(
                routing_pb2.ResolveModelRequest(user_id=USER, feature="duo_chat", root_namespace_id=NAMESPACE)
            )
        for _ in range(3 if number == 1 else 10):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await self.com_routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=USER, feature="duo_chat"))
            assert error_details(raised.value).reason == "DEFAULT_NAMESPACE_REQUIRED"

        # GitLab.com through the AI Gateway: a success, then 5xx; the second round opens the circuit
        # (circuit_failure_threshold = 2, no retries) and a last call fails fast.
        gateway.behavior = "ok"
        assert await self.complete(self.com_routing, NAMESPACE) == grpc.StatusCode.OK
        gateway.behavior, gateway.status = "status", 503
        assert await self.complete(self.com_routing, NAMESPACE) == grpc.StatusCode.UNAVAILABLE
        if number == 1:
            gateway.behavior = "ok"
            assert await self.complete(self.com_routing, NAMESPACE) == grpc.StatusCode.OK  # the breaker closes
        else:
            assert await self.complete(self.com_routing, NAMESPACE) == grpc.StatusCode.UNAVAILABLE  # opens
            assert await self.complete(self.com_routing, NAMESPACE) == grpc.StatusCode.UNAVAILABLE  # CIRCUIT_OPEN
            prompts = [r for r in gateway.requests if r.path.startswith("/v1/prompts/")]
            assert len(prompts) == 6  # the last one never reached the gateway

        # Self-Managed with a self-hosted model: ResolveModel, a success, an expired token, a 429.
        for _ in range(10):
            await self.routing.ResolveModel(routing_pb2.ResolveModelRequest(user_id=USER, feature="duo_chat"))
        model_server.behavior = "ok"
        assert await self.complete(self.routing) == grpc.StatusCode.OK
        model_server.behavior, model_server.status = "status", 401
        assert await self.complete(self.routing) == grpc.StatusCode.FAILED_PRECONDITION
        model_server.status = 429
        assert await self.complete(self.routing) == grpc.StatusCode.RESOURCE_EXHAUSTED
        model_server.behavior = "ok"

        # A storage error: the test holds SQLite's write lock (as another process would) past storage.timeout_seconds.
        locker = sqlite3.connect(self.database, timeout=10, isolation_level=None, check_same_thread=False)
        try:
            await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await self.assign_model()
            assert error_details(raised.value).reason == "STORAGE_UNAVAILABLE"
        finally:
            await asyncio.to_thread(locker.execute, "ROLLBACK")
            await asyncio.to_thread(locker.close)


# -- the test ----------------------------------------------------------------------------------------------------


async def test_every_panel_and_alert_query_runs_on_a_real_prometheus(tmp_path: Path) -> None:
    binary = prometheus_binary()
    started = time.monotonic()
    dashboard = load_dashboard()
    upstream_settings = """
[upstream]
retries = 0
circuit_failure_threshold = 2
circuit_open_seconds = 600.0
connect_timeout_seconds = 2.0
first_token_timeout_seconds = 5.0
"""
    async with (
        serve_upstream() as gateway,
        serve_upstream() as model_server,
        sidecar_processes(
            [
                ("gitlab_com", upstream_settings, {"DUO_SIDECAR_INSTANCE_AI_GATEWAY_URL": gateway.url}),
                ("self_managed", "timeout_seconds = 0.5\n" + upstream_settings, {}),  # [storage] timeout_seconds
            ],
            tmp_path,
        ) as sidecars,
        running_prometheus(binary, tmp_path / "prometheus", RULES, [metrics for _, metrics in sidecars]) as url,
        aiohttp.ClientSession() as http,
        grpc.aio.insecure_channel(sidecars[0][0].address) as com,
        grpc.aio.insecure_channel(sidecars[1][0].address) as managed,
    ):
        prometheus = Prometheus(http, url)
        (com_process, com_metrics), (managed_process, managed_metrics) = sidecars
        database = Path(tomllib.loads(managed_process.config.read_text())["storage"]["path"])
        traffic = Traffic(com, managed, database)

        await prometheus.scraped_after(time.time() - 60, targets=2)  # both up: every later change moves a counter
        await traffic.set_up(model_server)
        for number in (1, 2):
            await traffic.round(number, gateway, model_server)
            # Two scrapes of each target after the round: series created in it have two samples, so rate() has
            # something to work on.
            done = time.time()
            await prometheus.scraped_after(done, targets=2)
            await prometheus.scraped_after(done + SCRAPE_SECONDS, targets=2)
        await asyncio.sleep(2 * SCRAPE_SECONDS)  # a rule evaluation or two on the final samples

        # The instance variable lists both sidecars.
        instance = variables(dashboard)["instance"]
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", instance["definition"])
        assert match is not None, instance["definition"]
        selector = substitute(match.group(1), {"job": JOB})
        series = await prometheus.get("/api/v1/series", **{"match[]": selector})
        assert {s[match.group(2)] for s in series} == {com_metrics, managed_metrics}

        values = {**GRAFANA_BUILTINS, "job": JOB, "instance": instance["allValue"], "datasource": "prometheus"}
        problems: list[str] = []
        results: dict[str, list[dict[str, Any]]] = {}
        for panel in query_panels(dashboard):
            for target in panel["targets"]:
                expr = substitute(target["expr"], values)
                result = await prometheus.query(expr)
                results[f"{panel['title']}/{target['refId']}"] = result
                numbers = [float(r["value"][1]) for r in result]
                if not any(not math.isnan(n) for n in numbers):
                    problems.append(f"panel {panel['title']!r} {target['refId']}: no data from {expr}")

        # Every alerting rule, as the Prometheus that loaded docs/alerts.rules.yml parsed it.
        groups = (await prometheus.get("/api/v1/rules"))["groups"]
        rules = {rule["name"]: rule for group in groups for rule in group["rules"] if rule["type"] == "alerting"}
        documented = re.findall(r"^\s*- alert: (\w+)\s*$", RULES.read_text(), flags=re.MULTILINE)
        assert sorted(rules) == sorted(documented)
        assert set(rules) >= CAUSED_ALERTS
        for name, rule in rules.items():
            if rule["health"] != "ok":
                problems.append(f"alert {name}: rule health {rule['health']}: {rule.get('lastError')}")
            result = await prometheus.query(rule["query"])
            if name in CAUSED_ALERTS:
                if not result:
                    problems.append(f"alert {name}: caused, but its expression returns nothing: {rule['query']}")
                if rule["state"] not in ("pending", "firing"):
                    problems.append(f"alert {name}: caused, but its state is {rule['state']}")
            for metric, matchers in SELECTOR.findall(rule["query"]):
                if not await prometheus.query(f"{metric}{{{matchers}}}"):
                    problems.append(f"alert {name}: {metric}{{{matchers}}} matches no series the sidecars export")
        assert not problems, "\n".join(problems)

        # A few panels checked against what was done, beyond "has data".
        def by(panel_ref: str, label: str) -> dict[str, float]:
            return {r["metric"].get(label, ""): float(r["value"][1]) for r in results[panel_ref]}

        assert set(by("Config version/A", "instance")) == {com_metrics, managed_metrics}  # one line per process
        assert by("Config version/A", "instance")[com_metrics] >= 2
        circuits = {r["metric"]["endpoint"]: float(r["value"][1]) for r in results["Upstream circuit state/A"]}
        assert circuits == {gateway.url: 2.0, f"{model_server.url}/v1": 0.0}
        assert by("Storage errors/A", "instance")[managed_metrics] > 0
        refusals = {(r["metric"]["instance"], r["metric"]["grpc_method"]): float(r["value"][1])
                    for r in results["Overload refusals/A"]}  # fmt: skip
        assert refusals[(managed_metrics, "Complete")] > 0  # the 429s
        errors = {
            (r["metric"]["model"], r["metric"]["outcome"]) for r in results["Complete errors by upstream and reason/A"]
        }
        assert {
            ("custom_openai/mistral-small", "upstream_credentials_rejected"),
            ("custom_openai/mistral-small", "upstream_rate_limited"),
            ("claude_sonnet_4_6", "upstream_error"),
            ("claude_sonnet_4_6", "circuit_open"),
        } <= errors
        assert com_process.process.poll() is None and managed_process.process.poll() is None
    assert time.monotonic() - started < 45
