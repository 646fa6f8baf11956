"""Hand one message to session logic the way its channel does: through a Dispatcher."""

from __future__ import annotations

from voipmon.protocols.dispatch import CENTRAL, SENSOR, Dispatcher
from voipmon.protocols.wire import MessageType


def to_central(owner: object, kind: MessageType, payload: bytes) -> None:
    """A message from a sensor to the central's ``owner`` (a session)."""
    Dispatcher(CENTRAL, owner, peer="the sensor").dispatch(kind, payload)


def to_sensor(owner: object, kind: MessageType, payload: bytes) -> None:
    """A message from the central to the sensor's ``owner`` (an uplink)."""
    Dispatcher(SENSOR, owner, peer="the central").dispatch(kind, payload)
