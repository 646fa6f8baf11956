"""One dispatch by message type: decoded once, handed to ``on_<type>``; wrong direction,
missing capability and unexpected types refused."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from voipmon.protocols.capabilities import SUPPORTED, Capabilities
from voipmon.protocols.dispatch import (
    CENTRAL,
    DECODERS,
    SENSOR,
    SENT_BY,
    Dispatcher,
    handler_name,
)
from voipmon.protocols.rpc.messages import encode_credit
from voipmon.protocols.wire import (
    MAX_TIME,
    MessageType,
    PacketBatch,
    ProtocolError,
    encode_json,
    is_number,
)

M = MessageType


class Keepalive:
    """The example: the channel's own if/elif over PING, PONG and CLOSE (protocols/channel.py
    ``_dispatch``) as three handlers, each handed its decoded message."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.sent: list[tuple[MessageType, Any]] = []
        self.rtt: float | None = None
        self.closed: str | None = None

    def on_ping(self, payload: bytes) -> None:
        self.sent.append((M.PONG, payload))          # echoed as it came

    def on_pong(self, body: dict[str, Any]) -> None:
        sent = body.get("t")
        if is_number(sent, 0.0, MAX_TIME):
            self.rtt = max(0.0, self.clock.seconds() - sent)

    def on_close(self, body: dict[str, Any]) -> None:
        reason = body.get("reason")
        self.closed = str(reason)[:1000] if reason is not None else "no reason given"


class Acks:
    """The CDR uplink's two messages from the central, as handlers."""

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.ends = 0

    def on_cdr_ack(self, body: dict[str, Any]) -> None:
        self.acked.append(body["upto"])

    def on_end_ack(self, body: dict[str, Any]) -> None:
        self.ends += 1


class CountingDecoders(dict):
    """DECODERS that count their calls (decoded once, however many owners)."""

    def __init__(self) -> None:
        super().__init__(DECODERS)
        self.calls: list[MessageType] = []

    def get(self, kind: Any, default: Any = None) -> Any:
        decode = super().get(kind, default)

        def counted(k: MessageType, payload: bytes) -> Any:
            self.calls.append(k)
            return decode(k, payload)

        return counted


class DispatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(100)
        self.keepalive = Keepalive(self.clock)
        self.acks = Acks()
        self.decoders = CountingDecoders()
        self.sensor = Dispatcher(SENSOR, self.keepalive, self.acks, decoders=self.decoders,
                                 agreed=Capabilities(SUPPORTED))

    def test_the_example(self) -> None:
        self.sensor.dispatch(M.PING, b'{"t":1.5}')
        self.sensor.dispatch(M.PONG, encode_json({"t": 99.5}))
        self.sensor.dispatch(M.CDR_ACK, encode_json({"upto": 7, "stored": 7}))
        self.sensor.dispatch(M.END_ACK, encode_json({"cdrs": 0}))
        self.sensor.dispatch(M.CLOSE, encode_json({"reason": "shutting down"}))
        self.assertEqual(self.keepalive.sent, [(M.PONG, b'{"t":1.5}')])
        self.assertEqual(self.keepalive.rtt, 0.5)
        self.assertEqual(self.acks.acked, [7])
        self.assertEqual(self.acks.ends, 1)
        self.assertEqual(self.keepalive.closed, "shutting down")
        self.assertEqual(self.decoders.calls, [M.PING, M.PONG, M.CDR_ACK, M.END_ACK, M.CLOSE])
        self.assertEqual(sorted(k.name for k in self.sensor.handlers),
                         ["CDR_ACK", "CLOSE", "END_ACK", "PING", "PONG"])

    def test_binary_messages_are_decoded_by_their_layout(self) -> None:
        received: list[Any] = []

        class Mirror:
            def on_packets(self, batch: Any) -> None:
                received.append(batch)

            def on_credit(self, credit: Any) -> None:
                received.append(credit)

        batch = PacketBatch(1)
        batch.add(1.5, b"frame")
        Dispatcher(CENTRAL, Mirror()).dispatch(M.PACKETS, batch.seal(3))
        self.assertEqual(received[0], (3, 1, [(1.5, 1, b"frame")]))
        Dispatcher(SENSOR, Mirror()).dispatch(M.CREDIT, encode_credit(2, 100))
        self.assertEqual((received[1].id, received[1].bytes), (2, 100))

    def test_a_malformed_payload_is_a_protocol_error(self) -> None:
        exc = self.assertRaises(ProtocolError, self.sensor.dispatch, M.CDR_ACK, b"[]")
        self.assertIn("malformed CDR_ACK message", str(exc))
        self.assertEqual(self.acks.acked, [])

    def test_wrong_direction(self) -> None:
        central = Dispatcher(CENTRAL, self.keepalive)
        exc = self.assertRaises(ProtocolError, central.dispatch, M.REQUEST, b"{}")
        self.assertEqual(str(exc), "a sensor cannot send REQUEST to the central (it goes from "
                                   "the central to the sensor only)")
        exc = self.assertRaises(ProtocolError, self.sensor.dispatch, M.CDRS, b"{}")
        self.assertEqual(str(exc), "a central cannot send CDRS to the sensor (it goes from "
                                   "the sensor to the central only)")
        # Before any handler or decoder is looked at.
        self.assertEqual(self.decoders.calls, [])

    def test_every_type_has_a_direction(self) -> None:
        self.assertEqual({k.name for k in M} - set(SENT_BY), set())

    def test_capability_not_agreed(self) -> None:
        class Responder:
            def on_request(self, request: Any) -> None:
                raise AssertionError("not reached")

        old = Dispatcher(SENSOR, Responder(), agreed=Capabilities())
        exc = self.assertRaises(ProtocolError, old.dispatch, M.REQUEST, b"{}")
        self.assertIn("REQUEST sent without the 'requests' capability (agreed on this "
                      "channel: none)", str(exc))

    def test_unexpected_and_ignored(self) -> None:
        exc = self.assertRaises(ProtocolError, self.sensor.dispatch, M.PACKETS_ACK, b"{}")
        self.assertEqual(str(exc), "unexpected PACKETS_ACK from the central")
        named = Dispatcher(CENTRAL, peer="a local-processing sensor")
        exc = self.assertRaises(ProtocolError, named.dispatch, M.PACKETS, b"")
        self.assertEqual(str(exc), "unexpected PACKETS from a local-processing sensor")
        lenient = Dispatcher(CENTRAL, ignore=[M.STATS])
        lenient.dispatch(M.STATS, b"not even JSON")
        self.assertEqual(lenient.ignored[M.STATS], 1)

    def test_one_type_one_handler(self) -> None:
        exc = self.assertRaises(ValueError, Dispatcher, SENSOR, Acks(), Acks())
        self.assertIn("CDR_ACK has 2 handlers", str(exc))
        self.assertRaises(ValueError, Dispatcher, "relay")
        self.assertEqual(handler_name(M.PACKETS_ACK), "on_packets_ack")
