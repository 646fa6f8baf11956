"""twistd plugins for voipmon.

Each ServiceMaker names its tap module as a string, so ``twistd --help`` imports
nothing of voipmon; the module is imported only when its tapname is chosen.
"""

from twisted.application.service import ServiceMaker


class _Maker(ServiceMaker):
    """twistd prints a config problem found while parsing options as one line; it calls
    ``makeService`` outside that handling, so one found while building the service (a
    ``UsageError`` from the tap's ``makeService``) is printed the same way here."""

    def makeService(self, options):
        from twisted.python.usage import UsageError

        try:
            return super().makeService(options)
        except UsageError as exc:
            raise SystemExit(f"{self.tapname}: {exc}")


voipmon_sensor = _Maker(
    "voipmon sensor",
    "voipmon.sensor.tap",
    "Capture SIP/RTP, analyse calls, and send CDRs or packets to a voipmon central.",
    "voipmon-sensor",
)

voipmon_central = _Maker(
    "voipmon central",
    "voipmon.central.tap",
    "Accept voipmon sensors over TLS, store their CDRs, and serve the HTTP API.",
    "voipmon-central",
)
