"""The central asks a sensor over the channel the sensor opened (issue 15), in memory.

A real CentralFactory and a real sensor endpoint (its Responder over a ManagerCommands of
a spool) joined by iosim on a Clock; ``SensorLink`` is the web layer's way to them. The
real processes, HTTP and tshark are in test_pcap_access_integration.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IConsumer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from voipmon.central.sessions import CentralSessions
from voipmon.manager.commands import CommandError, ManagerCommands
from voipmon.protocols.rpc.messages import Request, encode_request
from voipmon.protocols.rpc.requester import RequestFailed
from voipmon.protocols.wire import MessageType
from voipmon.queue import DurableQueue
from voipmon.sensor.uplink import CdrUplink, UplinkFactory
from voipmon.store.testing import make_cdr
from voipmon.test.fakes import FakeStore
from voipmon.test.fakes_channel import ChannelPair, ChannelPairCase, SessionRecorder
from voipmon.test.rpc_support import PatternFile, TableCommands
from voipmon.web.pcaps import PcapUnavailable, SensorLink

RELPATH = "2026-01-02/10/20/SIP/call-1.pcap"


@implementer(IConsumer)
class Client:
    """An HTTP response stand-in: keeps the body; ``leave`` is the client going away."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.producer: Any = None
        self.sizes: list[int] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.data += data

    def sized(self, size: int) -> None:
        self.sizes.append(size)

    def leave(self) -> None:
        producer, self.producer = self.producer, None
        producer.stopProducing()


class Calls:
    def list_active_calls(self) -> list[dict[str, Any]]:
        return [{"callid": "live-1", "caller": "100", "called": "200", "state": "answered"}]


class TunnelTests(ChannelPairCase):
    def setUp(self) -> None:
        super().setUp()
        self.spool = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.spool, os.path.dirname(RELPATH)))
        self.body = bytes(range(256)) * 12_000   # 3 MB: several windows of credit
        with open(os.path.join(self.spool, RELPATH), "wb") as handle:
            handle.write(self.body)
        self.commands = ManagerCommands(self.spool, calls=Calls())
        self.rows: dict[int, dict[str, Any]] = {7: {"id_sensor": 7, "name": "edge-1"}}
        self.sensor = self.successResultOf(self.pair.connect(
            protocol.Factory.forProtocol(SessionRecorder), commands=self.commands))
        self.registry = self.pair.factory.registry
        self.link = SensorLink(self.registry, lambda id_sensor: defer.succeed(
            self.rows.get(id_sensor)), central_name="central-a")

    def fetch(self, client: Client, relpath: str = RELPATH) -> defer.Deferred:
        d = self.link.send(7, "getfile", relpath, client, client.sized, "the pcap of call 1")
        self.pair.flush()
        return d

    def test_a_file_comes_over_the_channel(self) -> None:
        client = Client()
        d = self.fetch(client)
        self.assertEqual(self.successResultOf(d), len(self.body))
        self.assertEqual(client.sizes, [len(self.body)])
        self.assertEqual(bytes(client.data), self.body)
        self.assertIsNone(client.producer, "the request unregistered itself")
        responder = self.sensor.transport.responder
        self.assertEqual(responder.counters()["bytes_sent"], len(self.body))
        self.assertEqual(self.registry.get(7).requester.counters()["completed"], 1)

    def test_listcalls_over_the_channel(self) -> None:
        d = self.link.query(7, "listcalls")
        self.pair.flush()
        self.assertEqual(json.loads(self.successResultOf(d)),
                         Calls().list_active_calls())

    def test_a_path_outside_the_spool_is_refused_as_on_the_management_port(self) -> None:
        for relpath in ("../../etc/passwd", "/etc/passwd", f"{RELPATH}/../../../../x"):
            on_port = self.assertRaises(CommandError, self.commands.run, f"getfile {relpath}")
            d = self.registry.request(7, "getfile", relpath, Client())
            self.pair.flush()
            failed = self.failureResultOf(d, RequestFailed).value
            self.assertTrue(failed.remote)
            self.assertEqual((failed.code, failed.message), (on_port.code, on_port.message))
            error = self.failureResultOf(self.fetch(Client(), relpath), PcapUnavailable).value
            self.assertEqual(error.status, 502)
            self.assertIn(f"sensor 7 (edge-1) refused the pcap of call 1: {on_port.code}",
                          error.message)

    def test_a_file_gone_is_a_404(self) -> None:
        os.remove(os.path.join(self.spool, RELPATH))
        error = self.failureResultOf(self.fetch(Client()), PcapUnavailable).value
        self.assertEqual(error.status, 404)
        self.assertIn("sensor 7 (edge-1) no longer has the pcap of call 1", error.message)

    def test_the_client_leaving_cancels_the_request_on_the_sensor(self) -> None:
        client = Client()
        d = self.link.send(7, "getfile", RELPATH, client, client.sized, "the pcap")
        self.pair.network.pumps[0].pump()   # the request reaches the sensor
        self.pair.network.pumps[0].pump()   # its first answer frames reach the central
        self.assertTrue(client.data, "some of the body arrived")
        self.assertLess(len(client.data), len(self.body))
        client.leave()
        self.pair.flush()
        self.assertEqual(self.failureResultOf(d, RequestFailed).value.code, "cancelled")
        responder = self.sensor.transport.responder
        self.assertEqual(responder.cancelled, 1)
        self.assertEqual(responder.streams, {})
        self.assertLess(responder.bytes_sent, len(self.body), "the sensor stopped reading")

    def test_no_first_answer_in_time_is_a_504(self) -> None:
        self.pair.network.partition(0)
        d = self.fetch(Client())
        self.pair.clock.advance(30)
        error = self.failureResultOf(d, PcapUnavailable).value
        self.assertEqual(error.status, 504)
        self.assertIn("sensor 7 did not answer getfile within 30 s", error.message)

    def test_a_sensor_not_connected_here_is_a_502_saying_where_it_is(self) -> None:
        cases = [
            (None, "sensor 9 is unknown to this central"),
            ({"name": "edge-9", "connected": 0, "central": "central-a"},
             "sensor 9 (edge-9) is offline: it is not connected to this central"),
            ({"name": "edge-9", "connected": 1, "central": "central-b"},
             "sensor 9 (edge-9) is connected to central central-b, not to this one"),
        ]
        for row, message in cases:
            if row is None:
                self.rows.pop(9, None)
            else:
                self.rows[9] = {"id_sensor": 9, **row}
            d = self.link.send(9, "getfile", RELPATH, Client(), lambda size: None, "the pcap")
            error = self.failureResultOf(d, PcapUnavailable).value
            self.assertEqual(error.status, 502)
            self.assertIn(message, error.message)
        self.assertEqual(self.failureResultOf(self.registry.query(9, "listcalls"),
                                              RequestFailed).value.code, "offline")

    def test_a_sensor_cannot_send_requests_to_the_central(self) -> None:
        channel = self.sensor.transport
        channel.send_message(MessageType.REQUEST, encode_request(
            Request(1, "getfile", "/etc/passwd", 65536, 65536)))
        self.pair.flush()
        central = self.pair.network.pumps[0].server
        self.assertTrue(central.closing)
        self.assertIn("a sensor cannot send REQUEST to the central", central.close_reason)
        self.assertIsNone(self.registry.get(7), "the sensor's session is gone")

    def test_the_channel_closing_fails_what_is_in_flight(self) -> None:
        client = Client()
        d = self.link.send(7, "getfile", RELPATH, client, client.sized, "the pcap")
        self.pair.network.pumps[0].pump()
        self.pair.network.pumps[0].pump()
        self.sensor.transport.close("sensor shutting down")
        self.pair.flush()
        failed = self.failureResultOf(d, RequestFailed).value
        self.assertEqual(failed.code, "channel_lost")
        self.assertIn("the channel to sensor 7 closed after", failed.message)


class CdrsDuringAFetchTests(SynchronousTestCase):
    """A real sensor channel carrying CDR batches (CdrUplink -> CdrSession) and a 50 MB
    answer at once: each CDR batch is acknowledged while the answer is still streaming."""

    SIZE = 50 * 1024 * 1024
    EVERY = 5 * 1024 * 1024   # a CDR is made each time this much more has arrived

    def setUp(self) -> None:
        self.pair = ChannelPair(handler=None)
        self.store = FakeStore(self.pair.clock)
        self.sessions = CentralSessions(self.store, self.pair.clock, self.pair.factory.registry)
        self.pair.factory.handler = self.sessions
        self.queue = DurableQueue(os.path.abspath(self.mktemp()), sync=False)
        self.uplink = CdrUplink(self.queue, self.pair.clock, batch_records=1, first_batch=1)
        self.file = PatternFile(self.SIZE)
        commands = TableCommands(getfile=lambda args: self.file.reply())
        d = self.pair.endpoint(commands=commands).connect(UplinkFactory(self.uplink))
        self.pair.flush()
        self.successResultOf(d)
        self.addCleanup(self.finish)

    def finish(self) -> None:
        self.pair.close_all()
        self.sessions.stop()
        self.queue.close()
        self.assertEqual(self.pair.clock.getDelayedCalls(), [])

    def test_cdr_batches_are_acked_between_answer_chunks(self) -> None:
        made: list[int] = []          # the body's bytes received when each CDR was made
        acked: list[int] = []         # ... and when the sensor learnt each was stored
        received = [0]

        def arrived(offset: int, data: bytes) -> None:
            received[0] = offset + len(data)
            while len(acked) < self.uplink.delivered:
                acked.append(offset)
            if received[0] // self.EVERY > len(made) and received[0] < self.SIZE:
                made.append(received[0])
                self.uplink.add(make_cdr(len(made), id_sensor=7))
                self.uplink.flush()   # durable, and sent: between two answer chunks

        class Reader(Client):
            """Reads at once (an HTTP client on a fast link), checking each byte."""

            def write(reader, data: bytes) -> None:
                self.file.check(received[0], data)
                arrived(received[0], data)

        d = self.pair.factory.registry.request(7, "getfile", "big.pcap", Reader())
        self.pair.flush()
        self.assertEqual(self.successResultOf(d), self.SIZE)
        self.assertEqual(self.file.read, self.SIZE)
        self.assertEqual(len(made), 9)
        self.assertEqual(len(acked), 9, "every CDR was acknowledged before the answer ended")
        window = self.pair.factory.registry.get(7).requester.window
        for when, ack in zip(made, acked, strict=True):
            self.assertLess(when, ack)
            self.assertLess(ack - when, 2 * window,
                            f"a CDR made after {when} bytes was acknowledged only after {ack}")
        self.assertEqual(self.uplink.delivered, 9)
        self.assertEqual(len(self.store.cdrs), 9)
