"""Configuration: voipmonitor.conf files read into typed, validated settings.

- ``options``: the option table, the one source of truth for every key;
- ``kinds``: how a value's text is parsed and what it becomes (``Destination``...);
- ``settings``: the typed settings, generated from the table: one frozen dataclass per
  component that reads them, composed into ``SensorSettings`` and ``CentralSettings``;
- ``load``: the parser and validation (``load_sensor_config``/``load_central_config``);
- ``generate`` (``python -m voipmon.config``): settings.py, conf/ and
  docs/configuration.md from the table.
"""

from voipmon.config.kinds import ConfigError, Destination, is_loopback
from voipmon.config.load import (
    destinations,
    load_central_config,
    load_sensor_config,
    parse_text,
)
from voipmon.config.settings import CentralSettings, SensorSettings

__all__ = [
    "CentralSettings",
    "ConfigError",
    "Destination",
    "SensorSettings",
    "destinations",
    "is_loopback",
    "load_central_config",
    "load_sensor_config",
    "parse_text",
]
