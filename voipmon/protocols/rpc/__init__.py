"""Requests from the central to a sensor over the channel the sensor opened.

``messages``: the REQUEST, ANSWER, CREDIT and CANCEL layouts and codecs. ``requester``: the
central's side (ids, pending requests, timeouts, credit from the consumer's backpressure).
``responder``: the sensor's side (the management port's command registry, answers
streamed in bounded chunks within credit). All pure: the channel frames and carries them,
its ``OutputScheduler`` (voipmon.protocols.scheduler) interleaves the answers with records,
and its ``Dispatcher`` (voipmon.protocols.dispatch) hands them over decoded.
"""
