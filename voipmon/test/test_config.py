"""Tests for voipmon.config: the voipmonitor.conf parser, the option table and validation."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from voipmon import config
from voipmon.config import (
    ConfigError,
    Destination,
    generate,
    load,
    load_central_config,
    load_sensor_config,
    options,
    parse_text,
    settings,
)

GOOD_SENSOR = """\
[general]
# a comment
; another comment
id_sensor = 7
server_destination = c1.example, 192.0.2.5:6000; [2001:db8::1]:7000
server_password = s3cr#t  # the '#' inside is part of the password
"""

GOOD_CENTRAL = """\
server_bind = 0.0.0.0
server_password = secret
"""

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sensor(text: str, **kw):
    return load_sensor_config("test.conf", text, **kw)


def central(text: str, **kw):
    return load_central_config("test.conf", text, **kw)


class ParserTests(SynchronousTestCase):
    def test_key_value_comments_and_sections(self) -> None:
        """Comments, blank lines and section headers are skipped; keys are lower-cased."""
        entries = parse_text("[general]\n\n# x = 1\n; y = 2\nID_Sensor = 3\n")
        self.assertEqual([(e.key, e.value, e.line) for e in entries], [("id_sensor", "3", 5)])

    def test_trailing_comment_needs_whitespace(self) -> None:
        """'a#b' keeps its '#', 'a  # note' drops the note."""
        entries = parse_text("k = a#b\nj = a  # note\nq = \"quoted value\"\n")
        self.assertEqual([e.value for e in entries], ["a#b", "a", "quoted value"])

    def test_line_without_equals_is_an_error(self) -> None:
        """A line that is not key = value names its line number."""
        with self.assertRaises(ConfigError) as cm:
            sensor("id_sensor = 1\nthis is not valid\n")
        self.assertEqual(str(cm.exception),
                         "test.conf:2: expected 'key = value', found 'this is not valid'")

    def test_good_sensor(self) -> None:
        """A minimal sensor config parses, with defaults for the rest."""
        cfg = sensor(GOOD_SENSOR)
        self.assertEqual(cfg.channel.id_sensor, 7)
        self.assertEqual(cfg.channel.server_password, "s3cr#t")
        self.assertEqual(cfg.channel.server_destination, (
            Destination("c1.example"), Destination("192.0.2.5", 6000),
            Destination("2001:db8::1", 7000)))
        self.assertEqual([str(d) for d in config.destinations(cfg.channel)],
                         ["c1.example:60024", "192.0.2.5:6000", "[2001:db8::1]:7000"])
        self.assertEqual(cfg.channel.server_type_compress, "zstd")
        self.assertEqual(cfg.analysis.sipport, (5060,))
        self.assertIs(cfg.channel.packetbuffer_sender, False)
        self.assertEqual(cfg.warnings, ())
        self.assertEqual(cfg.where("id_sensor"), "test.conf:4")
        self.assertEqual(cfg.where("savertp"), "test.conf")

    def test_config_is_frozen(self) -> None:
        """Config objects cannot be changed after validation."""
        cfg = sensor(GOOD_SENSOR)
        with self.assertRaises(AttributeError):
            cfg.channel.id_sensor = 9
        with self.assertRaises(AttributeError):
            cfg.channel = cfg.channel

    def test_booleans(self) -> None:
        """yes/no/true/false/1/0/on/off are all understood."""
        for text, value in [("yes", True), ("TRUE", True), ("1", True), ("on", True),
                            ("no", False), ("False", False), ("0", False), ("off", False)]:
            cfg = sensor(GOOD_SENSOR + f"packetbuffer_sender = {text}\n")
            self.assertIs(cfg.channel.packetbuffer_sender, value, text)

    def test_repeated_list_keys_accumulate(self) -> None:
        """sipport and interface add up over repeated lines, with ranges and de-duplication."""
        cfg = sensor(GOOD_SENSOR + "sipport = 5060\nsipport = 5070-5072, 5060\n"
                     "interface = eth0\ninterface = eth1,eth2\n")
        self.assertEqual(cfg.analysis.sipport, (5060, 5070, 5071, 5072))
        self.assertEqual(cfg.capture.interface, ("eth0", "eth1", "eth2"))

    def test_repeated_scalar_key_last_wins_with_warning(self) -> None:
        """A repeated scalar keeps the last value and says which line it overrode."""
        cfg = sensor(GOOD_SENSOR + "name_sensor = a\nname_sensor = b\n")
        self.assertEqual(cfg.channel.name_sensor, "b")
        self.assertEqual(cfg.warnings,
                         ("test.conf:8: name_sensor repeated; this value overrides line 7",))

    def test_unknown_key_warns_with_nearest(self) -> None:
        """An unknown key is a warning that suggests the closest known key."""
        cfg = sensor(GOOD_SENSOR + "server_destinaton_port = 1\nfoo_bar_baz = 1\n")
        self.assertEqual(cfg.warnings, (
            "test.conf:7: unknown key 'server_destinaton_port' ignored; "
            "did you mean 'server_destination_port'?",
            "test.conf:8: unknown key 'foo_bar_baz' ignored",
        ))

    def test_other_role_key_warns(self) -> None:
        """A central-only key in a sensor config is ignored with a warning."""
        cfg = sensor(GOOD_SENSOR + "mysqlhost = db\n")
        self.assertEqual(cfg.warnings,
                         ("test.conf:7: mysqlhost is a central option; the sensor ignores it",))

    def test_compression_aliases(self) -> None:
        """VoIPmonitor's 'no' and 'zip' spellings map to none and gzip."""
        self.assertEqual(sensor(GOOD_SENSOR + "server_type_compress = no\n")
                         .channel.server_type_compress, "none")
        self.assertEqual(sensor(GOOD_SENSOR + "server_type_compress = ZIP\n")
                         .channel.server_type_compress, "gzip")

    def test_good_central(self) -> None:
        """A minimal central config uses SQLite by default."""
        cfg = central(GOOD_CENTRAL)
        self.assertEqual(cfg.channel.server_bind_port, 60024)
        self.assertEqual(cfg.store.mysqlhost, "")
        self.assertEqual(cfg.channel.client_server_connect_maximum_time_diff_s, 2.0)
        self.assertEqual(cfg.http.http_bind, "127.0.0.1")

    def test_overrides(self) -> None:
        """Overrides given in code win over the file and are reported as the command line."""
        cfg = sensor(GOOD_SENSOR, overrides=[("id_sensor", "9")])
        self.assertEqual(cfg.channel.id_sensor, 9)
        self.assertEqual(cfg.where("id_sensor"), "command line")


class ValidationTests(SynchronousTestCase):
    def assertConfigError(self, func, text: str, expected: str) -> None:
        with self.assertRaises(ConfigError) as cm:
            func(text)
        self.assertIsInstance(cm.exception, usage.UsageError)
        self.assertEqual(str(cm.exception), expected)

    def test_id_sensor_out_of_range(self) -> None:
        """id_sensor must be 1..65535; the message names file, line, key, value and range."""
        for bad in ("0", "65536", "-1", "abc", "1.5"):
            self.assertConfigError(
                sensor, GOOD_SENSOR.replace("id_sensor = 7", f"id_sensor = {bad}"),
                f"test.conf:4: id_sensor = '{bad}': invalid value; allowed: an integer 1..65535")

    def test_id_sensor_missing(self) -> None:
        """A sensor without id_sensor is refused."""
        self.assertConfigError(
            sensor, GOOD_SENSOR.replace("id_sensor = 7\n", ""),
            "test.conf: id_sensor is missing; allowed: an integer 1..65535 "
            "(Unique id of this sensor (1..65535), stored in cdr.id_sensor)")

    def test_port_out_of_range(self) -> None:
        """Ports must be 1..65535, in plain keys, in lists and in destinations."""
        self.assertConfigError(
            sensor, GOOD_SENSOR + "server_destination_port = 70000\n",
            "test.conf:7: server_destination_port = '70000': invalid value; "
            "allowed: an integer 1..65535")
        self.assertConfigError(
            central, GOOD_CENTRAL + "server_bind_port = 0\n",
            "test.conf:3: server_bind_port = '0': invalid value; allowed: an integer 1..65535")
        self.assertConfigError(
            sensor, GOOD_SENSOR + "sipport = 5060, 99999\n",
            "test.conf:7: sipport = '5060, 99999': invalid value; "
            "allowed: ports 1..65535 or ranges like 5060-5070, comma-separated")

    def test_unknown_compression(self) -> None:
        """Only zstd, gzip, lzo and none are accepted."""
        self.assertConfigError(
            sensor, GOOD_SENSOR + "server_type_compress = snappy\n",
            "test.conf:7: server_type_compress = 'snappy': invalid value; "
            "allowed: one of zstd, gzip, lzo, none")

    def test_empty_password(self) -> None:
        """An empty server_password is refused on both roles; a missing one too."""
        self.assertConfigError(
            sensor, GOOD_SENSOR.replace("s3cr#t  # the '#' inside is part of the password", ""),
            "test.conf:6: server_password: invalid value; allowed: a non-empty text")
        self.assertConfigError(
            central, "server_bind = ::\n",
            "test.conf: server_password is missing; allowed: a non-empty text "
            "(Shared secret; both sides prove they know it; it never crosses the wire)")

    def test_bad_destination(self) -> None:
        """Unparseable server_destination entries are refused with the allowed forms."""
        allowed = ("allowed: a comma/semicolon list of host or host:port "
                   "([v6addr]:port for IPv6)")
        for bad in ("host:0", "host:abc", "[2001:db8::1", "[nothost]:5", "host:1:2:x",
                    "a/b", "[::1]x", ":60024"):
            text = GOOD_SENSOR.replace("c1.example, 192.0.2.5:6000; [2001:db8::1]:7000", bad)
            self.assertConfigError(
                sensor, text,
                f"test.conf:5: server_destination = '{bad}': invalid value; {allowed}")

    def test_empty_destination(self) -> None:
        """A sensor with an empty or missing server_destination is refused."""
        text = GOOD_SENSOR.replace("c1.example, 192.0.2.5:6000; [2001:db8::1]:7000", "")
        self.assertConfigError(sensor, text, "test.conf:5: server_destination: must not be empty; "
                               "allowed: a comma/semicolon list of host or host:port "
                               "([v6addr]:port for IPv6)")

    def test_bare_ipv6_destination(self) -> None:
        """A bare IPv6 address without brackets is accepted as a host without port."""
        text = GOOD_SENSOR.replace("c1.example, 192.0.2.5:6000; [2001:db8::1]:7000", "::1")
        self.assertEqual(sensor(text).channel.server_destination, (Destination("::1"),))

    def test_both_server_and_client(self) -> None:
        """server_bind with server_destination is refused in either role."""
        expected = ("test.conf:5: server_destination is set together with server_bind "
                    "(test.conf:7): a sniffer cannot be both server and client")
        self.assertConfigError(sensor, GOOD_SENSOR + "server_bind = 0.0.0.0\n", expected)
        self.assertConfigError(central, GOOD_CENTRAL + "server_destination = c1\n",
                               "test.conf:3: server_destination is set together with "
                               "server_bind (test.conf:1): a sniffer cannot be both server "
                               "and client")

    def test_missing_file(self) -> None:
        """A missing config file gets one clear line."""
        path = self.mktemp()
        with self.assertRaises(ConfigError) as cm:
            load_sensor_config(path)
        self.assertEqual(str(cm.exception), f"{path}: config file not found")

    def test_directory(self) -> None:
        """A directory given as config is refused clearly."""
        path = self.mktemp()
        os.mkdir(path)
        with self.assertRaises(ConfigError) as cm:
            load_sensor_config(path)
        self.assertEqual(str(cm.exception), f"{path}: is a directory, not a config file")

    def test_unreadable_file(self) -> None:
        """An unreadable config file is refused clearly."""
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(GOOD_SENSOR)
        os.chmod(path, 0)
        self.addCleanup(os.chmod, path, stat.S_IRUSR | stat.S_IWUSR)
        if os.geteuid() == 0:
            # root reads any file: make open() fail the way it fails for other users.
            def denied(name, *args, **kwargs):
                raise PermissionError(13, "Permission denied", name)

            load.open = denied  # shadows the builtin inside voipmon.config.load only
            self.addCleanup(delattr, load, "open")
        with self.assertRaises(ConfigError) as cm:
            load_sensor_config(path)
        self.assertEqual(str(cm.exception), f"{path}: cannot read config file: permission denied")

    def test_not_utf8(self) -> None:
        """A binary file is refused with the byte offset."""
        path = self.mktemp()
        with open(path, "wb") as handle:
            handle.write(b"id_sensor = 1\n\xff\xfe")
        with self.assertRaises(ConfigError) as cm:
            load_sensor_config(path)
        self.assertIn("config file is not valid UTF-8", str(cm.exception))
        self.assertIn("at byte 14", str(cm.exception))

    def test_error_helper_for_later_checks(self) -> None:
        """Config.error builds the same message shape for checks made after loading."""
        cfg = central(GOOD_CENTRAL + "http_bind = 0.0.0.0\n")
        err = cfg.error("http_bind", "needs http_user", "loopback or credentials")
        self.assertEqual(str(err), "test.conf:3: http_bind = '0.0.0.0': needs http_user; "
                         "allowed: loopback or credentials")

    def test_is_loopback(self) -> None:
        """Loopback detection covers v4, v6 and localhost only."""
        for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
            self.assertTrue(config.is_loopback(host), host)
        for host in ("0.0.0.0", "::", "10.0.0.1", "example.com"):
            self.assertFalse(config.is_loopback(host), host)


class ExampleConfTests(SynchronousTestCase):
    """conf/ carries every option of its role, commented, with its default."""

    def check(self, role: str, filename: str) -> None:
        path = os.path.join(ROOT, "conf", filename)
        with open(path) as handle:
            text = handle.read()
        for opt in options.options_for(role):
            self.assertTrue(re.search(rf"^#?\s*{re.escape(opt.name)}\s*=", text, re.M),
                            f"{filename} does not document {opt.name}")

    def test_sensor_example(self) -> None:
        """conf/voipmon-sensor.conf documents every sensor key."""
        self.check("sensor", "voipmon-sensor.conf")

    def test_central_example(self) -> None:
        """conf/voipmon-central.conf documents every central key."""
        self.check("central", "voipmon-central.conf")

    def test_examples_parse(self) -> None:
        """The shipped examples load without error or warning."""
        for filename, loader in (("voipmon-sensor.conf", load_sensor_config),
                                 ("voipmon-central.conf", load_central_config)):
            cfg = loader(os.path.join(ROOT, "conf", filename))
            self.assertEqual(cfg.warnings, (), filename)


class GeneratedFilesTests(SynchronousTestCase):
    """The option table is the one source of settings.py, conf/ and the reference page."""

    def test_generated_files_are_current(self) -> None:
        """Each file in the tree is what ``python -m voipmon.config --write`` writes."""
        for relpath, text in generate.generated().items():
            with open(os.path.join(ROOT, relpath), encoding="utf-8") as handle:
                self.assertEqual(handle.read(), text,
                                 f"{relpath} is stale: run python -m voipmon.config --write")

    def test_groups_hold_every_option_once(self) -> None:
        """Each role's settings hold every option of the role in exactly one group, with
        the table's default, and nothing else."""
        for role, cls in (("sensor", config.SensorSettings),
                          ("central", config.CentralSettings)):
            seen: list[str] = []
            for group in options.groups_for(role):
                group_type = cls.__dataclass_fields__[group.attr].type
                self.assertEqual(group_type, group.name)
                fields = settings.GROUP_CLASSES[group.name].__dataclass_fields__
                self.assertEqual(list(fields), [o.attr for o in options.members(group)])
                for opt in options.members(group):
                    if not opt.required:
                        self.assertEqual(fields[opt.attr].default, opt.default, opt.name)
                seen += list(fields)
            self.assertEqual(sorted(seen), sorted(o.attr for o in options.options_for(role)))

    def test_main_prints_each_file(self) -> None:
        """``python -m voipmon.config --conf sensor`` prints conf/voipmon-sensor.conf."""
        result = subprocess.run([sys.executable, "-m", "voipmon.config", "--conf", "sensor"],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, generate.conf_text("sensor"))


class TwistdCommandTests(SynchronousTestCase):
    """The real ``twistd`` command refuses bad configs with one clear line and exit 1."""

    def run_twistd(self, tapname: str, text: str) -> subprocess.CompletedProcess:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as handle:
            handle.write(text)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        return subprocess.run([twistd, "-n", tapname, "--config", path],
                              capture_output=True, text=True, timeout=60, cwd=ROOT), path

    def test_bad_configs_exit_nonzero_with_message(self) -> None:
        """Each bad-config case prints its message and exits non-zero, without a traceback."""
        cases = [
            ("voipmon-sensor", GOOD_SENSOR.replace("id_sensor = 7", "id_sensor = 0"),
             "{path}:4: id_sensor = '0': invalid value; allowed: an integer 1..65535"),
            ("voipmon-sensor", GOOD_SENSOR + "server_bind = 0.0.0.0\n",
             "a sniffer cannot be both server and client"),
            ("voipmon-central", GOOD_CENTRAL + "server_bind_port = 65536\n",
             "{path}:3: server_bind_port = '65536': invalid value; allowed: an integer 1..65535"),
        ]
        for tapname, text, expected in cases:
            result, path = self.run_twistd(tapname, text)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(expected.format(path=path), result.stderr + result.stdout)
            self.assertNotIn("Traceback", result.stderr)

    def test_problem_found_while_building_exits_with_one_line(self) -> None:
        """A config problem makeService finds (a spool the CDR queue cannot use) is one
        line and a non-zero exit too, before anything starts."""
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as handle:
            handle.write("a file, not a directory")
        for tapname, text in (("voipmon-sensor", GOOD_SENSOR + "interface = lo\n"),
                              ("voipmon-central", GOOD_CENTRAL)):
            result, path = self.run_twistd(tapname, text + f"spooldir = {blocker}\n")
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(f"{tapname}: {path}:", result.stderr)
            self.assertIn(f"spooldir = {blocker}: cannot", result.stderr)
            self.assertNotIn("Traceback", result.stderr)

    def test_plugins_listed(self) -> None:
        """``twistd --help`` lists both tapnames."""
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        result = subprocess.run([twistd, "--help"], capture_output=True, text=True, timeout=60,
                                cwd=ROOT)
        self.assertIn("voipmon-sensor", result.stdout)
        self.assertIn("voipmon-central", result.stdout)
