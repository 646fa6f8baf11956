"""Tests for voipmon.central.sessions: store-then-ack, DB outages, the sensor registry."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from voipmon.central.sessions import MAX_PENDING_BATCHES, CentralSessions, RegistryWriter
from voipmon.protocols.handshake import Hello
from voipmon.protocols.server import SessionRegistry
from voipmon.protocols.wire import MessageType, ProtocolError, encode_cdr_batch, encode_json
from voipmon.queue import DurableQueue
from voipmon.sensor.uplink import CdrUplink, UplinkFactory
from voipmon.store.testing import make_cdr
from voipmon.test.dispatching import to_central
from voipmon.test.fakes import FakeStore
from voipmon.test.fakes_channel import ChannelPair, FakeMessageTransport


def hello(id_sensor: int = 7, mode: str = "local", manager: str = "",
          instance: str = "ab" * 8) -> Hello:
    return Hello(id_sensor, "edge-1", "0.1.0", mode, "zstd", 0.0, b"\0" * 32, instance,
                 manager=manager)


def batch(first: int, numbers: list[int], id_sensor: int = 7) -> bytes:
    return encode_cdr_batch(first, [make_cdr(n, id_sensor=id_sensor).to_wire()
                                    for n in numbers])


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeStore(self.clock)
        self.registry = SessionRegistry(self.clock)
        self.sessions = CentralSessions(self.store, self.clock, self.registry)
        self.channel = FakeMessageTransport()
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def logged(self) -> list[str]:
        return [formatEvent(e) for e in self.observer]

    def open(self, **kwargs):
        return self.sessions.open_session(self.channel, hello(**kwargs))

    def acks(self) -> list[dict]:
        return [body for kind, body in self.channel.take() if kind == MessageType.CDR_ACK]


class CdrSessionTests(Base):
    def test_ack_after_commit(self) -> None:
        """A batch is acknowledged with its last number only once the store committed it."""
        self.store.hold = True
        session = self.open()
        to_central(session, MessageType.CDRS, batch(1, [0, 1, 2]))
        self.assertEqual(self.acks(), [])
        self.store.release()
        self.assertEqual(self.acks(), [{"upto": 3, "stored": 3}])
        self.assertEqual(len(self.store.cdrs), 3)
        self.assertEqual(session.counters(), {"received": 3, "stored": 3, "duplicates": 0,
                                              "rejected": 0, "pending_batches": 0})

    def test_concurrent_writes_acked_in_order(self) -> None:
        """Up to four batches are written at once; acks still go out in order, each after
        its own commit and every earlier one."""
        self.store.hold = True
        session = self.open()
        for i in range(6):
            to_central(session, MessageType.CDRS, batch(i + 1, [i]))
        self.assertEqual(len(self.store.held), 4)
        self.store.release_one(1)                 # batch 2 commits before batch 1
        self.assertEqual(self.acks(), [])
        self.assertEqual(len(self.store.held), 4)  # batch 5 started in its place
        self.store.release_one(0)                 # batch 1
        self.assertEqual(self.acks(), [{"upto": 1, "stored": 1}, {"upto": 2, "stored": 1}])
        self.store.release()
        self.store.release()
        self.assertEqual([a["upto"] for a in self.acks()], [3, 4, 5, 6])
        self.assertEqual(len(self.store.cdrs), 6)

    def test_database_down_then_back(self) -> None:
        """While the database is down nothing is acked; retries back off to 5 s; then it drains."""
        self.store.down = True
        session = self.open()
        to_central(session, MessageType.CDRS, batch(1, [0, 1]))
        calls = []
        for step in (0.5, 1, 2, 4, 5, 5):
            calls.append(self.store.calls.count("store_cdrs"))
            self.clock.advance(step - 0.01)
            self.assertEqual(self.store.calls.count("store_cdrs"), calls[-1])
            self.clock.advance(0.01)
        self.assertEqual(self.store.calls.count("store_cdrs"), 7)
        self.assertEqual(self.acks(), [])
        self.store.down = False
        self.clock.advance(5)
        self.assertEqual(self.acks(), [{"upto": 2, "stored": 2}])
        lines = self.logged()
        self.assertEqual(len([x for x in lines if x.startswith("cannot store 2 CDRs")]), 1)
        self.assertTrue(any("database reachable again: stored 2 CDRs (#1..#2) of sensor 7 after "
                            "8 tries" in x for x in lines))

    def test_resent_batch_is_acked_not_duplicated(self) -> None:
        """A batch sent again after a reconnect is acknowledged with 0 new CDRs."""
        session = self.open()
        to_central(session, MessageType.CDRS, batch(1, [0, 1]))
        to_central(session, MessageType.CDRS, batch(1, [0, 1]))
        self.assertEqual(self.acks(), [{"upto": 2, "stored": 2}, {"upto": 2, "stored": 0}])
        self.assertEqual(len(self.store.cdrs), 2)
        self.assertEqual(session.duplicates, 2)

    def test_malformed_cdr_skipped_and_logged(self) -> None:
        """A CDR that cannot be read is logged and skipped; its batch still completes."""
        session = self.open()
        good = make_cdr(0, id_sensor=7).to_wire()
        to_central(session, MessageType.CDRS,
                                encode_cdr_batch(5, [good, b'{"callid":"x"}', b"[1]"]))
        self.assertEqual(self.acks(), [{"upto": 7, "stored": 1}])
        self.assertEqual(session.rejected, 2)
        self.assertEqual(self.sessions.dead_letters.for_sensor(7), 2)
        self.assertTrue(any("CDR #6 is malformed" in x for x in self.logged()))

    def test_foreign_id_sensor_replaced(self) -> None:
        """A sensor can only store CDRs under its own id."""
        session = self.open()
        to_central(session, MessageType.CDRS, batch(1, [0], id_sensor=99))
        [(id_sensor, _uid)] = self.store.cdrs
        self.assertEqual(id_sensor, 7)

    def test_malformed_batches(self) -> None:
        session = self.open()
        for payload in (b"[]", b'{"first":1,"cdrs":[]}', b'{"first":0,"cdrs":[{}]}',
                        b'{"first":1}'):
            self.assertRaises(ProtocolError, to_central, session, MessageType.CDRS, payload)
        self.assertRaises(ProtocolError, to_central, session, MessageType.PACKETS, b"")

    def test_window_overrun(self) -> None:
        """More unacknowledged batches than any window allows close the connection."""
        self.store.hold = True
        session = self.open()
        for i in range(MAX_PENDING_BATCHES):
            to_central(session, MessageType.CDRS, batch(i + 1, [i]))
        self.assertRaises(ProtocolError, to_central, session, MessageType.CDRS,
                          batch(99, [99]))
        self.store.release()

    def test_lost_connection_stops_retrying(self) -> None:
        """After the sensor goes its pending batch is dropped (it resends it); no timer stays."""
        self.store.down = True
        session = self.open()
        to_central(session, MessageType.CDRS, batch(1, [0]))
        session.connectionLost(Failure(Exception("gone")))
        self.sessions.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_end_in_local_mode(self) -> None:
        session = self.open()
        to_central(session, MessageType.END, b"{}")
        self.assertEqual(self.channel.take(), [(MessageType.END_ACK, {"cdrs": 0})])

    def test_stats_recorded(self) -> None:
        """STATS counters go to the sensor's row."""
        session = self.open()
        to_central(session, MessageType.STATS,
                                encode_json({"packets": 10, "dropped": 2, "queue_depth": 5,
                                             "other": "x"}))
        row = self.store.sensors[7]
        self.assertEqual((row["packets"], row["drops"], row["queue_depth"]), (10, 2, 5))
        self.assertEqual(self.sessions.reported[7]["other"], "x")


class RegistryTests(Base):
    def test_upsert_on_connect(self) -> None:
        """Connecting registers the sensor: name, host, mode, version, management address."""
        self.open(manager="10.1.1.1:5029")
        row = self.store.sensors[7]
        self.assertEqual((row["name"], row["host"], row["mode"], row["version"]),
                         ("edge-1", "192.0.2.7", "local", "0.1.0"))
        self.assertEqual((row["manager_host"], row["manager_port"]), ("10.1.1.1", 5029))
        self.assertTrue(row["connected"])

    def test_wildcard_manager_uses_peer(self) -> None:
        """A sensor listening on every address is reached at the address it connects from."""
        self.open(manager="*:5029")
        self.assertEqual(self.store.sensors[7]["manager_host"], "192.0.2.7")
        self.open(id_sensor=8, manager="[2001:db8::1]:5029")
        self.assertEqual(self.store.sensors[8]["manager_host"], "2001:db8::1")

    def test_offline_on_disconnect(self) -> None:
        session = self.open()
        self.clock.advance(42)
        session.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.store.offline, [(7, 42.0)])
        self.assertFalse(self.store.sensors[7]["connected"])

    def test_not_offline_when_taken_over(self) -> None:
        """An old session closing after its sensor reconnected does not mark it offline."""
        old = self.open()

        class Channel:
            hello = old.hello

        self.registry._channels[7] = Channel()
        old.connectionLost(Failure(Exception("replaced")))
        self.assertEqual(self.store.offline, [])

    def test_registry_during_outage_ends_offline(self) -> None:
        """Connect and disconnect during an outage: once back, the sensor ends up offline."""
        self.store.down = True
        session = self.open()
        session.connectionLost(Failure(Exception("gone")))
        self.store.down = False
        self.clock.advance(0.5)
        self.assertFalse(self.store.sensors.get(7, {}).get("connected", False))
        self.assertEqual(len(self.store.offline), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_mirror_refused_without_mirrors(self) -> None:
        self.assertRaises(ProtocolError, self.open, mode="mirror")


class RegistryWriterTests(SynchronousTestCase):
    def test_latest_wins_in_order(self) -> None:
        """Writes run one at a time; a write asked for while one runs follows it."""
        clock = Clock()
        writer = RegistryWriter(clock)
        pending: list[defer.Deferred] = []
        done: list[str] = []

        def op(name: str):
            def call():
                d = defer.Deferred()
                d.addCallback(lambda _: done.append(name))
                pending.append(d)
                return d
            return call

        writer.set(op("online"), "online")
        writer.set(op("offline"), "offline")
        self.assertEqual(len(pending), 1)
        pending.pop(0).callback(None)
        self.assertEqual(len(pending), 1)
        pending.pop(0).callback(None)
        self.assertEqual(done, ["online", "offline"])
        self.assertTrue(writer.idle)


class EndToEndTests(SynchronousTestCase):
    """A real CdrUplink and real CentralSessions, over the real channel, in memory."""

    def setUp(self) -> None:
        self.pair = ChannelPair(handler=None)
        self.store = FakeStore(self.pair.clock)
        self.sessions = CentralSessions(self.store, self.pair.clock, self.pair.factory.registry)
        self.pair.factory.handler = self.sessions
        self.queue = DurableQueue(os.path.abspath(self.mktemp()))
        self.uplink = CdrUplink(self.queue, self.pair.clock, batch_records=50, window=4)
        self.addCleanup(self.finish)

    def finish(self) -> None:
        self.pair.close_all()
        self.sessions.stop()
        self.queue.close()
        self.assertEqual(self.pair.clock.getDelayedCalls(), [])

    def connect(self):
        d = self.pair.endpoint().connect(UplinkFactory(self.uplink))
        self.pair.flush()
        return self.successResultOf(d)

    def produce(self, start: int, count: int) -> None:
        for n in range(start, start + count):
            self.uplink.add(make_cdr(n, id_sensor=7))
        self.pair.clock.advance(0)
        self.pair.flush()

    def test_everything_stored_once_across_outages(self) -> None:
        """CDRs made while disconnected and while the DB is down all arrive, once, in order."""
        self.produce(0, 120)                     # no central yet: on disk only
        self.assertEqual(self.queue.depth, 120)
        self.connect()
        self.assertEqual(self.queue.depth, 0)
        self.store.down = True                   # the database goes away
        self.produce(120, 300)
        self.pair.clock.advance(5)
        self.pair.flush()
        self.assertEqual(len(self.store.cdrs), 120)
        self.assertEqual(self.queue.depth, 300)
        self.store.down = False
        for _ in range(10):
            self.pair.clock.advance(5)
            self.pair.flush()
        self.assertEqual(self.queue.depth, 0)
        arrived = [cdr.sensor_cdr_uid for batch, _ in self.store.batches for cdr in batch]
        self.assertEqual(list(dict.fromkeys(arrived)),     # in order, the first time each
                         [make_cdr(n, id_sensor=7).sensor_cdr_uid for n in range(420)])
        self.assertEqual(len(self.store.cdrs), 420)
        self.assertEqual(self.uplink.delivered, 420)
        self.assertEqual(self.store.sensors[7]["mode"], "local")

    def test_connection_lost_mid_batch(self) -> None:
        """A batch committed but not acknowledged when the connection dies is resent and
        acknowledged as a duplicate: stored exactly once."""
        self.connect()
        self.store.hold = True
        self.produce(0, 50)
        self.store.release()  # committed, but the ack does not get through:
        self.pair.network.partition(0)
        self.pair.clock.advance(35)
        self.pair.network.cut.clear()
        self.pair.flush()
        self.store.hold = False
        self.connect()
        self.assertEqual(self.queue.depth, 0)
        self.assertEqual(len(self.store.cdrs), 50)
        self.assertEqual(self.uplink.stored, 0)
        self.assertEqual(self.uplink.delivered, 50)

