"""Tests for voipmon.sources.live: reactor integration, bounded reads, counters, errors.

Timing and failure logic run against a fake pcap handle on MemoryReactorClock; the same
path is then run for real on ``lo`` (root only) with datagrams sent through the reactor.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from voipmon.config import ConfigError, load_sensor_config
from voipmon.packet import bpf
from voipmon.sources import live
from voipmon.sources.interfaces import ISource
from voipmon.sources.live import CaptureError, LiveCapture, open_handle
from voipmon.test.live_support import FunctionSink, free_udp_port, require_root


class FakeHandle:
    """A pcap handle over a list of frames; ``fail_next`` makes dispatch return -1."""

    def __init__(self, name: str, linktype: int = bpf.DLT_EN10MB) -> None:
        self.name = name
        self.linktype = linktype
        self.queue: list[tuple[float, bytes]] = []
        self.filter = ""
        self.closed = False
        self.fail_next = False
        self.dispatching = False
        self.dispatch_sizes: list[int] = []
        self.kernel = [0, 0, 0]
        self.fd = 1000 + len(name)

    def datalink(self) -> int:
        return self.linktype

    def setfilter(self, expression: str) -> None:
        self.filter = expression

    def dispatch(self, count: int, callback) -> int:
        assert not self.closed and not self.dispatching, "pcap_dispatch misuse"
        if self.fail_next:
            self.fail_next = False
            return -1
        taken, self.queue = self.queue[:count], self.queue[count:]
        self.dispatch_sizes.append(len(taken))
        self.dispatching = True
        try:
            for ts, frame in taken:
                assert not self.closed, "handle closed inside dispatch"
                callback(ts, frame)
        finally:
            self.dispatching = False
        return len(taken)

    def geterr(self) -> bytes:
        return b"The interface went down"

    def stats(self) -> tuple[int, int, int]:
        return tuple(self.kernel)

    def close(self) -> None:
        self.closed = True


class Opener:
    """Hands out FakeHandles and records every open; ``refuse`` names failing interfaces."""

    def __init__(self) -> None:
        self.handles: dict[str, list[FakeHandle]] = {}
        self.refuse: dict[str, str] = {}
        self.linktypes: dict[str, int] = {}

    def __call__(self, name: str, snaplen: int, buffer_bytes: int, immediate: bool):
        self.last_args = (snaplen, buffer_bytes, immediate)
        if name in self.refuse:
            raise CaptureError(self.refuse[name])
        handle = FakeHandle(name, self.linktypes.get(name, bpf.DLT_EN10MB))
        self.handles.setdefault(name, []).append(handle)
        return handle

    def current(self, name: str) -> FakeHandle:
        return self.handles[name][-1]


class LiveCaptureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.opener = Opener()
        self.got: list[tuple[float, int, bytes]] = []

    def make(self, interfaces=("eth0",), **kwargs) -> LiveCapture:
        kwargs.setdefault("max_per_read", 3)
        kwargs.setdefault("status_interval", 10.0)
        return LiveCapture(list(interfaces), [5060], FunctionSink(self.sink),
                           reactor=self.reactor, opener=self.opener, **kwargs)

    def sink(self, ts: float, linktype: int, frame: bytes) -> None:
        self.got.append((ts, linktype, frame))

    def test_provides_the_interface(self) -> None:
        capture = self.make()
        self.assertTrue(verifyObject(ISource, capture))
        self.assertTrue(capture.live)
        self.assertEqual(capture.name, "live eth0")

    def test_open_sets_filter_ring_and_mode(self) -> None:
        capture = self.make(ringbuffer_mb=8, snaplen=3000)
        capture.open()
        handle = self.opener.current("eth0")
        self.assertEqual(handle.filter, bpf.build_filter([5060], "", bpf.DLT_EN10MB))
        self.assertEqual(self.opener.last_args, (3000, 8 << 20, False))  # TPACKET_V3

    def test_filter_follows_each_link_type(self) -> None:
        self.opener.linktypes["any"] = bpf.DLT_LINUX_SLL
        capture = self.make(["any"])
        capture.open()
        self.assertNotIn("vlan", self.opener.current("any").filter)

    def test_reads_are_bounded_slices(self) -> None:
        """One doRead hands over at most max_per_read frames, in order, with the link type."""
        capture = self.make()
        capture.startService()
        handle = self.opener.current("eth0")
        self.assertIn(capture.interfaces[0], self.reactor.getReaders())
        handle.queue = [(float(i), b"frame%d" % i) for i in range(7)]
        reader = capture.interfaces[0]
        reader.doRead()
        self.assertEqual(len(self.got), 3)
        reader.doRead()
        reader.doRead()
        reader.doRead()
        self.assertEqual(handle.dispatch_sizes, [3, 3, 1, 0])
        self.assertEqual(self.got, [(float(i), bpf.DLT_EN10MB, b"frame%d" % i)
                                    for i in range(7)])
        self.assertEqual(capture.stats()["packets"], 7)
        self.assertEqual(capture.stats()["bytes"], sum(len(b"frame%d" % i) for i in range(7)))
        capture.stopService()

    def test_drain_empties_the_ring(self) -> None:
        capture = self.make()
        capture.open()
        self.opener.current("eth0").queue = [(1.0, b"x")] * 10
        self.assertEqual(capture.drain(), 10)
        self.assertEqual(len(self.got), 10)

    def test_stop_drains_removes_and_closes(self) -> None:
        capture = self.make()
        capture.startService()
        handle = self.opener.current("eth0")
        handle.queue = [(1.0, b"x")] * 5
        capture.stopService()
        self.assertEqual(len(self.got), 5)
        self.assertEqual(self.reactor.getReaders(), [])
        self.assertTrue(handle.closed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_sink_may_stop_the_capture(self) -> None:
        """Stopping from inside the sink neither re-enters nor frees the running dispatch."""
        capture = self.make(max_per_read=10)

        def sink(ts, linktype, frame):
            self.got.append((ts, linktype, frame))
            if frame == b"stop":
                capture.stopService()

        capture.sink = FunctionSink(sink)
        capture.startService()
        handle = self.opener.current("eth0")
        handle.queue = [(1.0, b"a"), (2.0, b"stop"), (3.0, b"b")]
        capture.interfaces[0].doRead()
        self.assertEqual([f for _, _, f in self.got], [b"a", b"stop", b"b"])
        self.assertTrue(handle.closed)
        self.assertEqual(capture.stats()["packets"], 3)
        self.assertEqual(self.reactor.getReaders(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_several_interfaces(self) -> None:
        self.opener.linktypes["lo"] = bpf.DLT_EN10MB
        capture = self.make(["eth0", "lo", "eth0"])
        self.assertEqual(capture.name, "live eth0,lo")
        capture.startService()
        self.assertEqual(len(self.reactor.getReaders()), 2)
        self.opener.current("lo").queue = [(2.0, b"b")]
        self.opener.current("eth0").queue = [(1.0, b"a")]
        for reader in self.reactor.getReaders():
            reader.doRead()
        self.assertEqual(sorted(f for _, _, f in self.got), [b"a", b"b"])
        self.assertEqual(set(capture.stats()["interfaces"]), {"eth0", "lo"})
        capture.stopService()

    def test_privileged_start_exits_with_one_line(self) -> None:
        """twistd would print a traceback for an exception; SystemExit prints its text."""
        self.opener.refuse["eth0"] = "interface 'eth0': no such interface"
        capture = self.make(["eth0"])
        with capturedLogs() as events:
            error = self.assertRaises(SystemExit, capture.privilegedStartService)
        self.assertEqual(str(error), "voipmon-sensor: interface 'eth0': no such interface")
        self.assertEqual(events[0]["log_level"].name, "critical")
        self.assertFalse(capture.running)

    def test_failed_open_closes_the_others(self) -> None:
        self.opener.refuse["eth1"] = "interface 'eth1': no such interface"
        capture = self.make(["eth0", "eth1"])
        error = self.assertRaises(CaptureError, capture.open)
        self.assertEqual(str(error), "interface 'eth1': no such interface")
        self.assertTrue(self.opener.current("eth0").closed)

    def test_sink_errors_are_counted_not_fatal(self) -> None:
        def sink(ts, linktype, frame):
            if frame == b"bad":
                raise ValueError("garbage")
            self.got.append((ts, linktype, frame))

        capture = LiveCapture(["eth0"], [5060], FunctionSink(sink), reactor=self.reactor,
                              opener=self.opener, max_per_read=10)
        capture.startService()
        self.opener.current("eth0").queue = [(1.0, b"ok1"), (2.0, b"bad"), (3.0, b"ok2")]
        capture.interfaces[0].doRead()
        self.assertEqual([f for _, _, f in self.got], [b"ok1", b"ok2"])
        self.assertEqual(capture.stats()["sink_errors"], 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        capture.stopService()

    def test_a_read_is_one_batch(self) -> None:
        """The frames of one read reach the sink in one feed_all (the engine's fast path
        takes them in one loop); after a frame it fails on, the rest go one at a time."""
        calls: list[str] = []
        got = self.got

        class Sink(FunctionSink):
            def feed_all(self, records):  # type: ignore[no-untyped-def]
                calls.append("feed_all")
                return super().feed_all(records)

            def feed(self, ts, linktype, frame):  # type: ignore[no-untyped-def]
                calls.append("feed")
                super().feed(ts, linktype, frame)

        def sink(ts: float, linktype: int, frame: bytes) -> None:
            if frame == b"bad":
                raise ValueError("garbage")
            got.append((ts, linktype, frame))

        capture = LiveCapture(["eth0"], [5060], Sink(sink), reactor=self.reactor,
                              opener=self.opener, max_per_read=10)
        capture.startService()
        handle = self.opener.current("eth0")
        handle.queue = [(1.0, b"a"), (2.0, b"b"), (3.0, b"c")]
        capture.interfaces[0].doRead()
        self.assertEqual(calls, ["feed_all"])
        handle.queue = [(4.0, b"bad"), (5.0, b"d"), (6.0, b"e")]
        capture.interfaces[0].doRead()
        self.assertEqual(calls, ["feed_all", "feed_all", "feed", "feed"])
        self.assertEqual(got, [(ts, bpf.DLT_EN10MB, f) for ts, f in (
            (1.0, b"a"), (2.0, b"b"), (3.0, b"c"), (5.0, b"d"), (6.0, b"e"))])
        self.assertEqual(capture.stats()["sink_errors"], 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        capture.interfaces[0].doRead()  # nothing left over from the batch
        self.assertEqual(len(got), 5)
        capture.stopService()

    def test_read_failure_reopens(self) -> None:
        capture = self.make(retry_interval=5.0)
        capture.startService()
        first = self.opener.current("eth0")
        first.kernel = [100, 7, 1]
        first.fail_next = True
        with capturedLogs() as events:
            capture.interfaces[0].doRead()
        self.assertTrue(first.closed)
        self.assertEqual(self.reactor.getReaders(), [])
        self.assertIn("The interface went down", events[0]["log_format"].format(**events[0]))
        stats = capture.stats()
        self.assertEqual((stats["read_errors"], stats["kernel_dropped"]), (1, 7))
        self.assertFalse(stats["interfaces"]["eth0"]["up"])
        self.opener.refuse["eth0"] = "interface 'eth0': no such interface"
        self.reactor.advance(5.0)
        self.assertEqual(len(self.opener.handles["eth0"]), 1)
        del self.opener.refuse["eth0"]
        self.reactor.advance(5.0)
        second = self.opener.current("eth0")
        self.assertIsNot(second, first)
        self.assertEqual(self.reactor.getReaders(), [capture.interfaces[0]])
        second.kernel = [10, 2, 0]
        stats = capture.stats()
        self.assertEqual((stats["kernel_received"], stats["kernel_dropped"],
                          stats["interface_dropped"]), (110, 9, 1))
        capture.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stop_cancels_pending_reopen(self) -> None:
        capture = self.make()
        capture.startService()
        self.opener.current("eth0").fail_next = True
        capture.interfaces[0].doRead()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 2)  # status loop + retry
        capture.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_status_line_on_the_clock(self) -> None:
        capture = self.make(status_interval=10.0)
        capture.startService()
        handle = self.opener.current("eth0")
        handle.queue = [(1.0, b"x")] * 3
        capture.interfaces[0].doRead()
        with capturedLogs() as events:
            self.reactor.advance(9.9)
            self.assertEqual(events, [])
            self.reactor.advance(0.1)
        self.assertEqual(len(events), 1)
        line = events[0]["line"]
        self.assertEqual(line, "capture eth0: 3 packets (+3), kernel drops 0 (+0), "
                               "interface drops 0, sink errors 0")
        self.assertEqual(events[0]["log_level"].name, "info")
        handle.kernel = [50, 4, 0]
        with capturedLogs() as events:
            self.reactor.advance(10.0)
        self.assertIn("kernel drops 4 (+4)", events[0]["line"])
        self.assertEqual(events[0]["log_level"].name, "warn")
        with capturedLogs() as events:
            self.reactor.advance(10.0)
        self.assertIn("kernel drops 4 (+0)", events[0]["line"])
        self.assertEqual(events[0]["log_level"].name, "info")
        capture.stopService()

    def test_status_loop_survives_errors(self) -> None:
        capture = self.make(status_interval=1.0)
        capture.startService()
        handle = self.opener.current("eth0")
        handle.stats = None  # calling it raises TypeError
        self.reactor.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        del handle.stats
        self.reactor.advance(1.0)
        self.assertEqual(self.flushLoggedErrors(TypeError), [])
        capture.stopService()

    def test_needs_an_interface(self) -> None:
        error = self.assertRaises(CaptureError, self.make, [])
        self.assertIn("set interface", str(error))

    def test_any_is_alone(self) -> None:
        error = self.assertRaises(CaptureError, self.make, ["any", "eth0"])
        self.assertIn("'any' already captures every interface", str(error))

    def from_settings(self, lines: str, available: list[str]) -> LiveCapture:
        """``live.from_settings`` for a sensor config with ``lines`` added (from line 4),
        on a host with the ``available`` interfaces."""
        config = load_sensor_config(
            "sensor.conf", text="id_sensor = 1\nserver_destination = 127.0.0.1\n"
                                f"server_password = x\n{lines}")
        return live.from_settings(config, FunctionSink(self.sink), reactor=self.reactor,
                                  opener=self.opener, available=lambda: available)

    def test_from_config(self) -> None:
        capture = self.from_settings("interface = eth0,eth1\nsipport = 5080\n"
                                     "filter = host 10.0.0.1\n", ["eth0", "eth1"])
        capture.open()
        self.assertIn("host 10.0.0.1", self.opener.current("eth1").filter)
        self.assertIn("port 5080", self.opener.current("eth0").filter)

    def test_from_config_checks_the_filter(self) -> None:
        error = self.assertRaises(ConfigError, self.from_settings,
                                  "interface = eth0\nfilter = udp prt 5\n", ["eth0"])
        self.assertIn("sensor.conf:5: filter = 'udp prt 5': libpcap cannot compile it",
                      str(error))
        self.assertEqual(self.opener.handles, {})

    def test_from_config_names_the_key(self) -> None:
        error = self.assertRaises(ConfigError, self.from_settings, "interface = any, lo\n",
                                  ["any", "lo"])
        self.assertIn("sensor.conf:4: interface", str(error))

    def test_from_settings_refuses_an_interface_this_host_lacks(self) -> None:
        """An interface libpcap does not list is a config error before anything starts."""
        error = self.assertRaises(ConfigError, self.from_settings,
                                  "interface = eth0, nosuch0\n", ["eth0", "lo"])
        self.assertEqual(str(error), "sensor.conf:4: interface = 'eth0, nosuch0': "
                         "interface 'nosuch0': no such interface (available: eth0, lo); "
                         "allowed: interface names, or 'any'")
        self.assertEqual(self.opener.handles, {})


class OpenHandleTests(SynchronousTestCase):
    """The real open path's errors are one line, whoever runs the tests."""

    def test_missing_interface(self) -> None:
        error = self.assertRaises(CaptureError, open_handle, "nosuch0", 65535, 1 << 20, True)
        message = str(error)
        self.assertTrue(message.startswith("interface 'nosuch0': no such interface"), message)
        self.assertNotIn("\n", message)

    def test_file_of_the_same_name(self) -> None:
        """pypcap would read a file called like the interface; refuse instead."""
        cwd = os.getcwd()
        folder = self.mktemp()
        os.makedirs(folder)
        os.chdir(folder)
        self.addCleanup(os.chdir, cwd)
        with open("lo", "wb"):
            pass
        error = self.assertRaises(CaptureError, open_handle, "lo", 65535, 1 << 20, True)
        self.assertIn("a file of that name exists", str(error))

    def test_permission_denied(self) -> None:
        script = ("import sys\nfrom voipmon.sources.live import CaptureError, open_handle\n"
                  "try:\n    open_handle('lo', 65535, 1 << 20, True)\n"
                  "except CaptureError as exc:\n    print(exc)\n    sys.exit(3)\n")
        command = [sys.executable, "-c", script]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       "--inh-caps=-all", "--bounding-set=-all"] + command
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        result = subprocess.run(command, capture_output=True, text=True, cwd="/",
                                env={**os.environ, "PYTHONPATH": root}, timeout=60)
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertEqual(result.stdout.count("\n"), 1)
        self.assertIn("interface 'lo': permission denied", result.stdout)
        self.assertIn("CAP_NET_RAW", result.stdout)


class Counter(protocol.DatagramProtocol):
    def datagramReceived(self, data, addr):
        pass


class LoopbackTests(TestCase):
    """The same path for real: pypcap on ``lo`` in the running reactor (root only)."""

    timeout = 30

    def setUp(self) -> None:
        require_root()

    def test_captures_datagrams_on_lo(self) -> defer.Deferred:
        """TPACKET_V3 blocks, the default."""
        return self.capture_on_lo(immediate=False)

    def test_captures_datagrams_on_lo_immediate(self) -> defer.Deferred:
        """Immediate mode (TPACKET_V2)."""
        return self.capture_on_lo(immediate=True)

    @defer.inlineCallbacks
    def capture_on_lo(self, immediate: bool) -> None:
        port = free_udp_port()
        count = 50
        marker = b"voipmon-live-test-%d" % os.getpid()
        seen: list[tuple[float, int, bytes]] = []
        done: defer.Deferred[None] = defer.Deferred()

        def sink(ts: float, linktype: int, frame: bytes) -> None:
            if marker in frame:
                seen.append((ts, linktype, frame))
                if len(seen) == count and not done.called:
                    done.callback(None)

        capture = LiveCapture(["lo"], [5060], FunctionSink(sink), reactor=reactor,
                              max_per_read=7,
                              status_interval=0, user_filter=f"udp port {port}",
                              immediate=immediate)
        capture.startService()
        self.addCleanup(lambda: capture.stopService() if capture.running else None)
        listener = reactor.listenUDP(port, Counter(), interface="127.0.0.1")
        self.addCleanup(listener.stopListening)
        sender = reactor.listenUDP(0, protocol.DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(sender.stopListening)
        for i in range(count):
            sender.write(marker + b" %03d" % i, ("127.0.0.1", port))
        timeout = reactor.callLater(10, done.cancel)
        yield done
        timeout.cancel()
        # ``done`` fired inside the sink, inside doRead: let that doRead return first.
        yield task.deferLater(reactor, 0, lambda: None)
        self.assertEqual([frame[-3:] for _, _, frame in seen],
                         [b"%03d" % i for i in range(count)])
        self.assertEqual({linktype for _, linktype, _ in seen}, {bpf.DLT_EN10MB})
        self.assertIn("udp port", capture.interfaces[0].expression)
        capture.stopService()
        stats = capture.stats()
        self.assertEqual(stats["interfaces"]["lo"]["up"], False)
        self.assertEqual(stats["kernel_dropped"], 0)
        self.assertEqual(stats["packets"], count)  # the user filter passes only ours
        self.assertGreaterEqual(stats["kernel_received"], count)
