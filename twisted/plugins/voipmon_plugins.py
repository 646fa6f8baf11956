"""twistd plugins for voipmon.

Each ServiceMaker names its tap module as a string, so ``twistd --help`` imports
nothing of voipmon; the module is imported only when its tapname is chosen.
"""

from twisted.application.service import ServiceMaker

voipmon_sensor = ServiceMaker(
    "voipmon sensor",
    "voipmon.sensor.tap",
    "Capture SIP/RTP, analyse calls, and send CDRs or packets to a voipmon central.",
    "voipmon-sensor",
)

voipmon_central = ServiceMaker(
    "voipmon central",
    "voipmon.central.tap",
    "Accept voipmon sensors over TLS, store their CDRs, and serve the HTTP API.",
    "voipmon-central",
)
