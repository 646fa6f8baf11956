"""voipmon: distributed VoIP monitoring (SIP/RTP sensors and a central collector)."""

__version__ = "0.1.0"
