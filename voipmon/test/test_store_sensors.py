"""The sensors table's rules (voipmon.store.sensors); their SQL is run by test_store."""

from __future__ import annotations

from twisted.trial import unittest

from voipmon.store.sensors import check_name, sensor_json, sensor_upsert

T = 1_700_000_000.0


class UpsertTests(unittest.SynchronousTestCase):
    def test_registration(self) -> None:
        upsert = sensor_upsert({"id_sensor": 3, "name": " edge-3 ", "host": "192.0.2.3",
                                "mode": "mirror", "manager_port": 5029, "when": T}, "c1", 0.0)
        self.assertEqual(upsert.values, {
            "id_sensor": 3, "name": "edge-3", "host": "192.0.2.3", "mode": "mirror",
            "manager_port": 5029, "connected": 1, "central": "c1",
            "first_seen": "2023-11-14 22:13:20.000", "last_seen": "2023-11-14 22:13:20.000"})
        self.assertEqual(upsert.updates, ("host", "mode", "manager_port", "connected",
                                          "central", "last_seen"))
        self.assertTrue(upsert.rename)

    def test_stats_update_without_name_or_when(self) -> None:
        upsert = sensor_upsert({"id_sensor": 3, "packets": 10, "queue_depth": 0}, "c1", T)
        self.assertEqual(upsert.values["name"], "sensor 3")     # only if the row is new
        self.assertFalse(upsert.rename)
        self.assertEqual(upsert.values["stats_at"], "2023-11-14 22:13:20.000")
        self.assertIn("stats_at", upsert.updates)
        self.assertNotIn("first_seen", upsert.updates)

    def test_fitting_and_refusals(self) -> None:
        upsert = sensor_upsert({"id_sensor": 1, "mode": "mïrror", "host": "h" * 300,
                                "packets": 1 << 70}, "c", T)
        self.assertEqual(upsert.values["mode"], "m?rror")
        self.assertEqual(len(upsert.values["host"]), 255)
        self.assertEqual(upsert.values["packets"], (1 << 63) - 1)
        for bad, word in (([1], "dict"), ({"id_sensor": "1"}, "id_sensor"),
                          ({"id_sensor": 1, "drops": -2}, "drops"),
                          ({"id_sensor": 1, "manager_port": True}, "manager_port"),
                          ({"id_sensor": 1, "when": float("nan")}, "when"),
                          ({"id_sensor": 1, "owner": "x"}, "owner")):
            self.assertIn(word, str(self.assertRaises(ValueError, sensor_upsert, bad, "c", T)))

    def test_names(self) -> None:
        self.assertEqual(check_name("  Core  "), "Core")
        for bad in ("", "   ", None, 5):
            self.assertRaises(ValueError, check_name, bad)

    def test_json(self) -> None:
        row = (3, "edge", "h", "local", "0.1", 1, "c1", "2023-11-14 22:13:20.000",
               "2023-11-14 22:13:21.500", None, None, 5, None, 0, None)
        self.assertEqual(sensor_json(row), {
            "id_sensor": 3, "name": "edge", "host": "h", "mode": "local", "version": "0.1",
            "connected": True, "central": "c1", "first_seen": "2023-11-14T22:13:20.000Z",
            "last_seen": "2023-11-14T22:13:21.500Z", "manager_host": None,
            "manager_port": None, "packets": 5, "drops": 0, "queue_depth": 0,
            "stats_at": None})
