"""Tests for voipmon.sources: the capture-file source, the registry and from_config.

The live source has its own module (test_sources_live). Everything here runs on a
task.Clock: a replay delivers one slice per reactor turn, waits while a bounded sink is
full, and says how it ended.
"""

from __future__ import annotations

import os

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from voipmon.config import ConfigError, load_sensor_config
from voipmon.packet.readers import read_capture
from voipmon.sensor.mirror import MirrorUplink
from voipmon.sources import registry
from voipmon.sources.capture_file import CaptureFileSource
from voipmon.sources.interfaces import ISource, SourceFactory
from voipmon.sources.live import LiveCapture
from voipmon.test.channel_support import write_calls_pcap
from voipmon.test.common import data_path
from voipmon.test.live_support import FunctionSink, IdleSource

CAPTURE = data_path("sipp_uac_pcap_rtp_echo_lo_3calls.pcap")
FRAMES = 1494


class Slices:
    """An IFrameSink that records the size of every slice it is handed."""

    def __init__(self) -> None:
        self.slices: list[int] = []
        self.frames: list[tuple[float, int, bytes]] = []

    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        self.feed_all([(ts, linktype, frame)])

    def feed_all(self, records) -> int:
        records = list(records)
        self.slices.append(len(records))
        self.frames += records
        return len(records)


def settings(**keys: str):
    text = "id_sensor = 3\nserver_destination = 127.0.0.1\nserver_password = pw\n"
    text += "".join(f"{key} = {value}\n" for key, value in keys.items())
    return load_sensor_config("sensor.conf", text=text)


class CaptureFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sink = Slices()

    def test_provides_the_interfaces(self) -> None:
        source = CaptureFileSource(CAPTURE, self.sink, self.clock)
        self.assertTrue(verifyObject(ISource, source))
        self.assertTrue(verifyObject(IPushProducer, source))
        self.assertFalse(source.live)
        self.assertEqual(source.name, f"replay {CAPTURE}")

    def test_slices_then_done(self) -> None:
        """Every frame, in order, in slices of ``chunk``, each in a reactor turn of its
        own; ``done`` fires with the count."""
        source = CaptureFileSource(CAPTURE, self.sink, self.clock, chunk=500)
        source.startService()
        self.assertEqual(self.sink.slices, [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(self.sink.slices, [500, 500, 494])
        self.assertEqual(self.successResultOf(source.done), FRAMES)
        self.assertEqual(self.sink.frames, list(read_capture(CAPTURE)))
        self.assertIsNone(source.error)
        self.assertEqual(source.stats(), {
            "packets": FRAMES, "bytes": sum(len(frame) for _, _, frame in self.sink.frames),
            "dropped": 0, "finished": True})
        self.assertGreater(source.stats()["bytes"], FRAMES * 42)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_paused_replay_waits(self) -> None:
        """A sink that pauses the replay holds the next slice until it resumes it."""
        source = CaptureFileSource(CAPTURE, self.sink, self.clock, chunk=500)
        feed_all = self.sink.feed_all

        def full(records) -> int:
            taken = feed_all(records)
            source.pauseProducing()
            return taken

        self.sink.feed_all = full
        source.startService()
        self.clock.advance(0)
        self.assertEqual(self.sink.slices, [500])
        self.assertTrue(source.paused)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        source.resumeProducing()
        self.assertEqual(self.sink.slices, [500])    # not inside the resume: a turn later
        self.clock.advance(0)
        self.assertEqual(self.sink.slices, [500, 500])
        source.stopService()
        self.assertNoResult(source.done)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_damaged_capture_delivers_what_precedes_the_damage(self) -> None:
        """A truncated capture ends early: every whole frame delivered, ``error`` says
        where, ``done`` still fires."""
        path = os.path.abspath(self.mktemp())
        with open(CAPTURE, "rb") as original, open(path, "wb") as cut:
            cut.write(original.read()[:50_000])
        source = CaptureFileSource(path, self.sink, self.clock)
        source.startService()
        self.clock.advance(0)
        delivered = self.successResultOf(source.done)
        self.assertGreater(delivered, 0)
        self.assertEqual(self.sink.frames, list(read_capture(CAPTURE))[:delivered])
        self.assertIn(path, source.error)

    def test_unreadable_file(self) -> None:
        source = CaptureFileSource("/nonexistent.pcap", self.sink, self.clock)
        source.startService()
        self.assertEqual(self.successResultOf(source.done), 0)
        self.assertIn("cannot read /nonexistent.pcap", source.error)


class FromConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def test_read_pcap_is_the_file_whatever_the_interfaces(self) -> None:
        source = registry.from_config(settings(interface="lo"), Slices(), self.reactor,
                                      read_pcap=CAPTURE)
        self.assertIsInstance(source, CaptureFileSource)

    def test_interface_is_live_capture(self) -> None:
        source = registry.from_config(settings(interface="lo", sipport="5080"), Slices(),
                                      self.reactor)
        self.assertIsInstance(source, LiveCapture)
        self.assertEqual(source.sipports, (5080,))

    def test_no_source_is_a_config_error(self) -> None:
        error = self.assertRaises(ConfigError, registry.from_config, settings(), Slices(),
                                  self.reactor)
        self.assertEqual(str(error), "sensor.conf: interface: no packet source: set interface "
                         "(a list, or 'any'), or hep_bind_port for HEP input; allowed: "
                         "interface names, or 'any'")

    def test_a_bounded_sink_holds_a_replay_back(self) -> None:
        """The mirroring buffer is registered as the replay's consumer: when half full it
        pauses the replay, which a live source (that cannot wait) is never asked."""
        big = write_calls_pcap(os.path.abspath(self.mktemp()), 2, rtp_packets=1200)
        uplink = MirrorUplink(self.reactor, max_buffer_bytes=1 << 18)
        source = registry.from_config(settings(), uplink, self.reactor, read_pcap=big)
        self.assertIs(uplink.producer, source)
        source.startService()
        self.reactor.advance(0)
        self.assertTrue(source.paused)
        self.reactor.pump([0] * 10)
        self.assertEqual(source.packets, 2000)   # one slice, then it waited
        self.assertNoResult(source.done)
        source.stopService()
        uplink.close()
        live = registry.from_config(settings(interface="lo"), uplink, self.reactor)
        self.assertIs(uplink.producer, source)
        self.assertFalse(IPushProducer.providedBy(live))

    def test_one_new_source_is_one_registry_line(self) -> None:
        """A source the settings want runs beside the others, counted together."""
        idle = IdleSource()
        extra = SourceFactory("idle", lambda request: request.read_pcap is None,
                              lambda request, sink: idle)
        sources = {**registry.SOURCES, "idle": extra}
        both = registry.from_config(settings(interface="lo"), FunctionSink(print),
                                    self.reactor, registry=sources)
        self.assertIsInstance(both, registry.SourceSet)
        self.assertTrue(verifyObject(ISource, both))
        self.assertEqual([type(s) for s in both.sources], [LiveCapture, IdleSource])
        self.assertEqual(both.name, "live lo + idle")
        self.assertEqual((both.stats()["packets"], both.stats()["dropped"]), (0, 0))
        alone = registry.from_config(settings(), FunctionSink(print), self.reactor,
                                     registry=sources)
        self.assertIs(alone, idle)
        replay = registry.from_config(settings(interface="lo"), FunctionSink(print),
                                      self.reactor, read_pcap=CAPTURE, registry=sources)
        self.assertIsInstance(replay, CaptureFileSource)
