"""Tests for voipmon.packet.bpf: the filter passes what the decoder needs and little else.

Frames are matched with libpcap's own BPF interpreter (pypcap's ``bpf``), on crafted
frames for each encapsulation and on every SIP frame of real captures.
"""

from __future__ import annotations

import os
import struct

import dpkt
import pcap
from twisted.trial.unittest import SynchronousTestCase

from voipmon.config import ConfigError, load_sensor_config
from voipmon.packet import bpf
from voipmon.test.common import data_path, shared_path

SRC = bytes([10, 0, 0, 1])
DST = bytes([10, 0, 0, 2])
OTHER = bytes([192, 0, 2, 9])
SRC6 = bytes(15) + b"\x01"
DST6 = bytes(15) + b"\x02"


def udp(sport: int, dport: int, body: bytes = b"x" * 12) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body


def tcp(sport: int, dport: int, body: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + body


def sctp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHII", sport, dport, 0, 0) + bytes(16)


def ipv4(proto: int, body: bytes, src: bytes = SRC, frag_offset: int = 0,
         more: bool = False) -> bytes:
    flags = (0x2000 if more else 0) | frag_offset
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, flags, 64, proto, 0,
                       src, DST) + body


def ipv6(nxt: int, body: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), nxt, 64, SRC6, DST6) + body


def eth(payload: bytes, ethertype: int = 0x0800, vlans: int = 0) -> bytes:
    head = b"\x02" * 6 + b"\x04" * 6
    for i in range(vlans):
        head += struct.pack("!HH", 0x8100, 100 + i)
    return head + struct.pack("!H", ethertype) + payload


def sll(payload: bytes, ethertype: int = 0x0800) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 6 + b"\0\0", ethertype) + payload


def mpls(payload: bytes) -> bytes:
    return struct.pack("!I", (16 << 12) | 0x100 | 64) + payload


def pppoe(payload: bytes) -> bytes:
    return struct.pack("!BBHHH", 0x11, 0, 1, len(payload) + 2, 0x0021) + payload


class Matcher:
    def __init__(self, expression: str, linktype: int = bpf.DLT_EN10MB) -> None:
        self.expression = expression
        self.program = pcap.bpf(expression.encode(), linktype)

    def __call__(self, frame: bytes) -> bool:
        return bool(self.program.filter(frame))


class PortsTests(SynchronousTestCase):
    def test_runs_are_merged_and_sorted(self) -> None:
        self.assertEqual(bpf.port_ranges([5062, 5060, 5061, 5080, 5060]),
                         [(5060, 5062), (5080, 5080)])

    def test_expression(self) -> None:
        self.assertEqual(bpf.port_expression([5060, 5070, 5071, 5072]),
                         "port 5060 or portrange 5070-5072")

    def test_no_ports(self) -> None:
        self.assertRaises(ValueError, bpf.port_expression, [])


class EthernetFilterTests(SynchronousTestCase):
    """The default filter on Ethernet, sipport 5060 and 5070-5072."""

    def setUp(self) -> None:
        self.match = Matcher(bpf.build_filter([5060, 5070, 5071, 5072]))

    def assertPasses(self, frame: bytes) -> None:
        self.assertTrue(self.match(frame), "frame should pass")

    def assertBlocks(self, frame: bytes) -> None:
        self.assertFalse(self.match(frame), "frame should be filtered out")

    def test_any_udp_passes(self) -> None:
        """RTP/RTCP ports come from SDP, so every UDP port must pass."""
        self.assertPasses(eth(ipv4(17, udp(40000, 40002))))
        self.assertPasses(eth(ipv4(17, udp(5060, 5060))))

    def test_tcp_only_on_sip_ports(self) -> None:
        self.assertPasses(eth(ipv4(6, tcp(33000, 5060))))
        self.assertPasses(eth(ipv4(6, tcp(5071, 33000))))
        self.assertBlocks(eth(ipv4(6, tcp(33000, 5061))))
        self.assertBlocks(eth(ipv4(6, tcp(33000, 443))))

    def test_sctp_on_sip_ports(self) -> None:
        self.assertPasses(eth(ipv4(132, sctp(5060, 5060))))
        self.assertBlocks(eth(ipv4(132, sctp(3868, 3868))))

    def test_other_protocols_blocked(self) -> None:
        self.assertBlocks(eth(bytes(28), ethertype=0x0806))  # ARP
        self.assertBlocks(eth(ipv4(1, bytes(8))))  # ICMP

    def test_ipv4_fragments_pass(self) -> None:
        """A later fragment has no TCP header, so a port test cannot see it."""
        self.assertPasses(eth(ipv4(6, bytes(40), frag_offset=185)))
        self.assertPasses(eth(ipv4(6, tcp(33000, 443), more=True)))

    def test_ipv6(self) -> None:
        self.assertPasses(eth(ipv6(17, udp(40000, 40002)), ethertype=0x86DD))
        self.assertPasses(eth(ipv6(6, tcp(33000, 5060)), ethertype=0x86DD))
        self.assertBlocks(eth(ipv6(6, tcp(33000, 80)), ethertype=0x86DD))
        self.assertPasses(eth(ipv6(44, bytes(8) + bytes(20)), ethertype=0x86DD))

    def test_tunnel_carriers_pass(self) -> None:
        self.assertPasses(eth(ipv4(47, bytes(8))))  # GRE, ERSPAN
        self.assertPasses(eth(ipv4(4, ipv4(6, tcp(1, 80)))))  # IP in IP
        self.assertPasses(eth(ipv4(17, udp(50000, 4789))))  # VXLAN
        self.assertPasses(eth(ipv4(17, udp(50000, 37008))))  # TZSP

    def test_vlan(self) -> None:
        self.assertPasses(eth(ipv4(6, tcp(33000, 5060)), vlans=1))
        self.assertBlocks(eth(ipv4(6, tcp(33000, 80)), vlans=1))
        self.assertPasses(eth(ipv4(17, udp(40000, 40002)), vlans=1))

    def test_qinq(self) -> None:
        self.assertPasses(eth(ipv4(6, tcp(33000, 5060)), vlans=2))
        self.assertBlocks(eth(ipv4(6, tcp(33000, 80)), vlans=2))

    def test_mpls_and_pppoe_pass_whole(self) -> None:
        self.assertPasses(eth(mpls(ipv4(6, tcp(1, 80))), ethertype=0x8847))
        self.assertPasses(eth(pppoe(ipv4(17, udp(5060, 5060))), ethertype=0x8864))
        self.assertPasses(eth(pppoe(ipv4(17, udp(5060, 5060))), ethertype=0x8864, vlans=2))


class UserFilterTests(SynchronousTestCase):
    def test_user_filter_applies_inside_vlans(self) -> None:
        match = Matcher(bpf.build_filter([5060], "host 10.0.0.1"))
        for vlans in (0, 1, 2):
            self.assertTrue(match(eth(ipv4(17, udp(4000, 4002)), vlans=vlans)), vlans)
            self.assertFalse(match(eth(ipv4(17, udp(4000, 4002), src=OTHER), vlans=vlans)),
                             vlans)
            self.assertFalse(match(eth(ipv4(6, tcp(4000, 80)), vlans=vlans)), vlans)

    def test_user_filter_is_anded(self) -> None:
        match = Matcher(bpf.build_filter([5060], "not udp port 53"))
        self.assertFalse(match(eth(ipv4(17, udp(53, 40000)))))
        self.assertTrue(match(eth(ipv4(17, udp(40000, 40002)))))
        self.assertFalse(match(eth(ipv4(6, tcp(40000, 80)))))

    def test_user_filter_excludes_opaque_mpls(self) -> None:
        """The user's filter cannot be applied inside MPLS, so such frames do not pass."""
        match = Matcher(bpf.build_filter([5060], "host 10.0.0.1"))
        self.assertFalse(match(eth(mpls(ipv4(17, udp(5060, 5060))), ethertype=0x8847)))

    def test_user_filter_with_vlan_takes_charge(self) -> None:
        expression = bpf.build_filter([5060], "vlan 100")
        self.assertTrue(expression.startswith("(vlan 100) and "))
        match = Matcher(expression)
        self.assertTrue(match(eth(ipv4(6, tcp(33000, 5060)), vlans=1)))
        self.assertFalse(match(eth(ipv4(6, tcp(33000, 80)), vlans=1)))
        self.assertFalse(match(eth(ipv4(6, tcp(33000, 5060)))))

    def test_syntax_error(self) -> None:
        error = self.assertRaises(bpf.FilterError, bpf.build_filter, [5060], "udp prt 5")
        self.assertIn("syntax error", error.reason)
        self.assertEqual(error.expression, "udp prt 5")

    def test_config_error_names_file_line_and_key(self) -> None:
        config = load_sensor_config(
            "sensor.conf",
            text="id_sensor = 1\nserver_destination = 127.0.0.1\n"
                 "server_password = x\nfilter = host 10.0.0.1 andd udp\n")
        error = self.assertRaises(ConfigError, bpf.filter_for_config, config)
        message = str(error)
        self.assertIn("sensor.conf:4: filter", message)
        self.assertIn("syntax error", message)
        self.assertIn("pcap-filter", message)

    def test_config_builds(self) -> None:
        config = load_sensor_config(
            "sensor.conf", text="id_sensor = 1\nserver_destination = 127.0.0.1\n"
                                "server_password = x\nsipport = 5060, 5080\n")
        self.assertIn("port 5060 or port 5080", bpf.filter_for_config(config))


class OtherLinkTypeTests(SynchronousTestCase):
    def test_linux_cooked(self) -> None:
        for linktype in (bpf.DLT_LINUX_SLL,):
            match = Matcher(bpf.build_filter([5060], "", linktype), linktype)
            self.assertTrue(match(sll(ipv4(17, udp(4000, 4002)))))
            self.assertTrue(match(sll(ipv4(6, tcp(4000, 5060)))))
            self.assertFalse(match(sll(ipv4(6, tcp(4000, 80)))))
            self.assertTrue(match(sll(pppoe(ipv4(17, udp(1, 2))), ethertype=0x8864)))

    def test_every_common_link_type_compiles(self) -> None:
        for linktype in (bpf.DLT_NULL, bpf.DLT_EN10MB, bpf.DLT_RAW, bpf.DLT_LOOP,
                         bpf.DLT_LINUX_SLL, bpf.DLT_LINUX_SLL2, bpf.DLT_IPV4, bpf.DLT_IPV6):
            expression = bpf.build_filter([5060], "", linktype)
            self.assertGreater(bpf.check_filter(expression, linktype), 0)
        self.assertNotIn("ip6", bpf.build_filter([5060], "", bpf.DLT_IPV4))

    def test_raw_ip(self) -> None:
        match = Matcher(bpf.build_filter([5060], "", bpf.DLT_RAW), bpf.DLT_RAW)
        self.assertTrue(match(ipv4(17, udp(4000, 4002))))
        self.assertFalse(match(ipv4(6, tcp(4000, 80))))


def frames(path: str):
    with open(path, "rb") as handle:
        head = handle.read(4)
        handle.seek(0)
        pcapng = head == b"\x0a\x0d\x0d\x0a"
        reader = dpkt.pcapng.Reader(handle) if pcapng else dpkt.pcap.Reader(handle)
        linktype = reader.datalink()
        for _ts, frame in reader:
            yield linktype, bytes(frame)


class CaptureFileTests(SynchronousTestCase):
    """Every SIP message of real captures passes the filter built for its SIP port."""

    def check(self, path: str, sipports: list[int], expect_sip: int) -> None:
        matchers: dict[int, Matcher] = {}
        sip = passed = 0
        for linktype, frame in frames(path):
            if linktype not in matchers:
                matchers[linktype] = Matcher(bpf.build_filter(sipports, "", linktype), linktype)
            if b"SIP/2.0" in frame:
                sip += 1
                self.assertTrue(matchers[linktype](frame),
                                f"{os.path.basename(path)}: a SIP frame was filtered out")
            passed += matchers[linktype](frame)
        self.assertEqual(sip, expect_sip)
        self.assertGreaterEqual(passed, sip)

    def test_bundled_sipp_captures(self) -> None:
        self.check(data_path("sipp_tcp_2calls_udp_486_2calls_lo.pcap"), [5070, 5062], 20)
        self.check(data_path("sipp_uac_pcap_rtp_echo_lo_3calls.pcap"), [5060], 18)

    def test_encapsulations(self) -> None:
        cases = [
            ("heplify__erspan_sip_ipv4_udp.pcapng", [5060], 140),   # GRE/ERSPAN
            ("ndpi__gre_sip.pcapng", [5060], 36),                   # VLAN, GRE, QinQ+PPPoE
            ("sipnab__DTMFsipinfo.pcap", [5060], 32),               # PPPoE
            ("heplify__sip_sctp.pcap", [5060], 4),                  # SCTP on Linux SLL
            ("heplify__sip_ipv6_udp.pcap", [5060], 6),              # IPv6
        ]
        for name, ports, count in cases:
            self.check(shared_path("pcaps", "public", name), ports, count)

    def test_tcp_on_a_configured_port(self) -> None:
        path = shared_path("pcaps", "public", "heplify__sip_ipv4_tcp_fragmented.pcap")
        matcher = Matcher(bpf.build_filter([6060]))
        total = sum(1 for _ in frames(path))
        self.assertEqual(sum(matcher(frame) for _lt, frame in frames(path)), total)
        default = Matcher(bpf.build_filter([5060]))
        self.assertEqual(sum(default(frame) for _lt, frame in frames(path)), 0)
