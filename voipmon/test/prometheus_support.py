"""A real Prometheus (Debian's ``prometheus`` package) for the tests, and its ``promtool``.

``Prometheus(target)`` writes a configuration that scrapes ``target`` every second, starts
the server on a loopback port the kernel picks (read back from its log), with its storage
in a temporary directory, waits until ``/-/ready`` answers, and queries its HTTP API.

Like voipmon.test.channel_support this is for process-level tests: it polls with
``time.sleep`` in plain synchronous code (never on a reactor), and every wait has a
deadline that fails with what Prometheus said. Without the package the tests skip, or fail
in CI (voipmon.test.common.missing_tool).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from voipmon.test.channel_support import Process, temp_dir, wait_until
from voipmon.test.common import ROOT, missing_tool


def tool(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; skip (or fail in CI) without it."""
    path = shutil.which(name)
    if path is None:
        raise missing_tool(f"{name} is not installed (Debian package prometheus)")
    return path


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` run to its end: its exit status and what it printed."""
    return subprocess.run([tool("promtool"), *args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, timeout=120, check=False)


def dashboard_queries() -> list[str]:
    """Every query of conf/grafana-dashboard.json, Grafana's variables filled in."""
    with open(os.path.join(ROOT, "conf", "grafana-dashboard.json")) as handle:
        dashboard = json.load(handle)
    fill = {"$id_sensor": ".*", "$__rate_interval": "1m", "$__range": "1h"}
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            expr = target["expr"]
            for variable, value in fill.items():
                expr = expr.replace(variable, value)
            queries.append(expr)
    return queries


class Prometheus:
    """A Prometheus scraping one target (``host:port``) every ``interval``."""

    def __init__(self, target: str, *, metrics_path: str = "/metrics", interval: str = "1s",
                 job: str = "voipmon") -> None:
        self.target = target
        self.metrics_path = metrics_path
        self.interval = interval
        self.job = job
        self.directory = temp_dir("voipmon-prometheus-")
        self.process: Process | None = None
        self.base = ""

    def config(self) -> str:
        return (f"global:\n  scrape_interval: {self.interval}\n"
                f"  scrape_timeout: {self.interval}\n"
                f"  evaluation_interval: {self.interval}\n"
                f"scrape_configs:\n  - job_name: {self.job}\n"
                f"    metrics_path: {self.metrics_path}\n"
                f"    static_configs:\n      - targets: ['{self.target}']\n")

    def start(self, timeout: float = 30.0) -> Prometheus:
        path = f"{self.directory}/prometheus.yml"
        with open(path, "w") as handle:
            handle.write(self.config())
        self.process = Process([
            tool("prometheus"), f"--config.file={path}",
            f"--storage.tsdb.path={self.directory}/data",
            "--web.listen-address=127.0.0.1:0", "--log.level=info"], "prometheus")
        match = self.process.wait_for(r'msg="Listening on" address=(127\.0\.0\.1:\d+)', timeout)
        self.base = f"http://{match.group(1)}"
        wait_until(self._ready, timeout, "Prometheus to be ready")
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/-/ready", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """``/api/v1/PATH`` answered successfully: its ``data``."""
        url = f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"Prometheus {path} {params}: {exc.code} "
                                 f"{exc.read()[:500]!r}") from None
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: ``[{"metric": {...labels}, "value": [t, "v"]}]``."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise AssertionError(f"{expr}: a {data['resultType']}, not a vector")
        return data["result"]

    def values(self, expr: str, by: str = "id_sensor") -> dict[str, float]:
        """An instant query's values keyed by one label."""
        return {item["metric"].get(by, ""): float(item["value"][1])
                for item in self.query(expr)}

    def wait_for(self, expr: str, predicate: Any, timeout: float = 30.0,
                 what: str = "") -> list[dict[str, Any]]:
        """Query ``expr`` until ``predicate(result)`` holds; its result then."""
        found: list[list[dict[str, Any]]] = []

        def check() -> bool:
            result = self.query(expr)
            found[:] = [result]
            return bool(predicate(result))

        try:
            wait_until(check, timeout, what or expr, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last result {found[:1]}; targets "
                                 f"{self.targets()}; log:\n{self.log()}") from None
        return found[0]

    def targets(self) -> list[dict[str, Any]]:
        return [{key: target.get(key) for key in ("scrapeUrl", "health", "lastError")}
                for target in self.api("targets")["activeTargets"]]

    def log(self) -> str:
        return self.process.text()[-4000:] if self.process is not None else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
