"""The seam between the engine and the analysers of SIP that is not a call.

``RegisterTracker`` (REGISTER) and ``SipMsgTracker`` (OPTIONS, SUBSCRIBE, NOTIFY, MESSAGE)
provide ``INonCallAnalyser``. The engine will hand each of them every parsed message whose
method (a request's own, an answer's CSeq method) is in its ``methods``, call ``advance``
with capture time once a second, before that second's messages, and ``finish`` at the end
of input. They emit records through the callable they were built with and never raise.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class INonCallAnalyser(Interface):
    """Follows SIP that is not part of a call, in capture time."""

    methods = Attribute("frozenset of the SIP methods it follows")

    def on_message(datagram, msg):
        """``msg`` (a ``SipMessage``) arrived in ``datagram`` (a ``Datagram``)."""

    def advance(now):
        """Capture time is ``now``: time out and write what is due."""

    def finish():
        """End of input: write what is still folding; leave undecided what is."""

    def counters():
        """Its counters (``voipmon.counters.ICounters``)."""


__all__ = ["INonCallAnalyser"]
