"""conf/prometheus.yml and conf/prometheus_rules.yml checked by promtool, the rules'
unit tests run by promtool, ``promtool check metrics`` on what voipmon exposes, and
docs/metrics.md kept equal to the catalog."""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from prometheus_client import generate_latest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from voipmon.metrics.catalog import BY_NAME, Kind, markdown_table
from voipmon.metrics.collectors import ProcessSource, central_registry, sensor_registry
from voipmon.test.common import ROOT
from voipmon.test.metrics_fakes import fake_fleet
from voipmon.test.prometheus_support import dashboard_queries, promtool

CONF = os.path.join(ROOT, "conf")


def lint(exposition: bytes) -> tuple[int, str]:
    result = promtool("check", "metrics", stdin=exposition)
    return result.returncode, (result.stdout + result.stderr).strip()


class PromtoolTests(SynchronousTestCase):

    def test_scrape_config(self) -> None:
        result = promtool("check", "config", os.path.join(CONF, "prometheus.yml"))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS: 1 rule files found", result.stdout)

    def test_rules(self) -> None:
        result = promtool("check", "rules", os.path.join(CONF, "prometheus_rules.yml"))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS: 8 rules found", result.stdout)

    def test_rules_fire(self) -> None:
        """Each alert fires on the series made to trip it, not on their neighbours."""
        result = promtool("test", "rules", os.path.join(CONF, "prometheus_rules_test.yml"))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_rules_test_can_fail(self) -> None:
        """The rules' tests catch a wrong expectation (they are not vacuous)."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        shutil.copy(os.path.join(CONF, "prometheus_rules.yml"), directory)
        with open(os.path.join(CONF, "prometheus_rules_test.yml")) as handle:
            text = handle.read()
        planted = text.replace("id_sensor: \"1\"\n              name_sensor: site-a\n"
                               "            exp_annotations:\n"
                               "              summary: \"voipmon sensor 1 (site-a): records",
                               "id_sensor: \"2\"\n              name_sensor: site-a\n"
                               "            exp_annotations:\n"
                               "              summary: \"voipmon sensor 1 (site-a): records")
        self.assertNotEqual(planted, text)
        path = os.path.join(directory, "planted_test.yml")
        with open(path, "w") as handle:
            handle.write(planted)
        result = promtool("test", "rules", path)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("VoipmonSensorQueueGrowing", result.stdout + result.stderr)

    def test_check_metrics_clean(self) -> None:
        """No error and no warning on the central's and a sensor's exposition, filled with
        realistic figures (both modes, histograms, labels, process collectors)."""
        clock = Clock()
        clock.advance(1_700_000_000)
        fleet, central, sensors = fake_fleet(clock, 12)
        sensors[0].registry.add(ProcessSource())
        fleet.disconnected(5)                       # an offline sensor too
        for exposition in (generate_latest(central_registry(fleet, central.registry)),
                           generate_latest(sensor_registry(sensors[0].taker, "site-1"))):
            self.assertIn(b"voipmon_call_mos_bucket", exposition)
            code, output = lint(exposition)
            self.assertEqual((code, output), (0, ""))

    def test_check_metrics_catches(self) -> None:
        """promtool check metrics does flag what it should (the check above can fail)."""
        code, output = lint(b"# HELP voipmon_bad x\n# TYPE voipmon_bad counter\nvoipmon_bad 1\n")
        self.assertNotEqual(code, 0)
        self.assertIn('should have "_total" suffix', output)


class NamesTests(SynchronousTestCase):

    def test_rules_and_dashboard_use_catalog_names(self) -> None:
        """Every voipmon_ name the alert rules and the dashboard use is in the catalog
        (a histogram's _bucket, _sum and _count included)."""
        with open(os.path.join(CONF, "prometheus_rules.yml")) as handle:
            texts = [handle.read(), *dashboard_queries()]
        used = {name for text in texts for name in re.findall(r"voipmon_[a-z0-9_]+", text)}
        known = set(BY_NAME)
        for name, item in BY_NAME.items():
            if item.kind is Kind.HISTOGRAM:
                known |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        self.assertEqual(used - known, set())
        self.assertGreater(len(used), 25)


class DocsTests(SynchronousTestCase):

    def test_metrics_table(self) -> None:
        """docs/metrics.md lists the catalog as it is
        (``python -m voipmon.metrics.catalog`` prints the table)."""
        with open(os.path.join(ROOT, "docs", "metrics.md")) as handle:
            self.assertIn(markdown_table(), handle.read())
