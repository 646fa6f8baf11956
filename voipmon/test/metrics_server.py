"""A tiny metrics server for the tests: a central's /metrics over a fake fleet
(voipmon.test.metrics_fakes, on a frozen task.Clock, so its figures are known to the test),
served by voipmon.metrics.resource on a loopback port the kernel picks.

    python -m voipmon.test.metrics_server --sensors 4

prints ``metrics server listening on 127.0.0.1:PORT`` and serves until terminated.
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import reactor
from twisted.internet.task import Clock

from voipmon.metrics.collectors import central_registry
from voipmon.metrics.fleet import Fleet
from voipmon.metrics.resource import metrics_site
from voipmon.test.metrics_fakes import FakeCentral, FakeSensor, fake_fleet

START = 1_700_000_000.0


def fleet_of(sensors: int) -> tuple[Fleet, FakeCentral, list[FakeSensor]]:
    """The server's fleet: the same every time for the same number of sensors."""
    clock = Clock()
    clock.advance(START)
    return fake_fleet(clock, sensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=4)
    options = parser.parse_args()
    fleet, central, _ = fleet_of(options.sensors)
    port = reactor.listenTCP(0, metrics_site(central_registry(fleet, central.registry)),
                             interface="127.0.0.1")
    print(f"metrics server listening on 127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
