"""What every role's settings carry besides their groups: where each key came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from voipmon.config.kinds import ConfigError
from voipmon.config.options import OPTIONS_BY_NAME


@dataclass(frozen=True)
class Origin:
    path: str
    line: int | None

    def __str__(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"


def message(where: str, key: str, value: object, problem: str, allowed: str | None) -> str:
    """``file:line: key = 'value': problem; allowed: ...``, the shape of every config error."""
    text = f"{where}: {key}"
    if value not in (None, "", (), []):
        shown = value if isinstance(value, str) else str(value)
        text += f" = {shown!r}"
    text += f": {problem}"
    if allowed:
        text += f"; allowed: {allowed}"
    return text


@dataclass(frozen=True, kw_only=True)
class LoadedSettings:
    """The file the settings came from, its warnings, and each key's origin and value, so
    checks made after loading (a certificate that cannot be read...) name file and line."""

    path: str = ""
    warnings: tuple[str, ...] = ()
    origins: Mapping[str, Origin] = field(default_factory=dict, repr=False, compare=False)
    values: Mapping[str, object] = field(default_factory=dict, repr=False, compare=False)

    def where(self, key: str) -> str:
        """``file:line`` of the key, or just the file when it took its default."""
        origin = self.origins.get(key)
        return str(origin) if origin else self.path

    def error(self, key: str, problem: str, allowed: str | None = None) -> ConfigError:
        """A ConfigError about ``key`` for checks made after loading (e.g. a missing file);
        the value is shown as the config file writes it."""
        value = self.values.get(key)
        option = OPTIONS_BY_NAME.get(key)
        shown = option.kind.render(value) if option is not None else value
        return ConfigError(message(self.where(key), key, shown, problem, allowed))
