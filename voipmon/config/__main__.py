"""``python -m voipmon.config``: print or write what the option table generates."""

from __future__ import annotations

import argparse
import os
import sys

from voipmon.config.generate import ROOT, conf_text, docs_text, generated, settings_source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voipmon.config", description=__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--conf", choices=("sensor", "central"),
                       help="print conf/voipmon-ROLE.conf")
    which.add_argument("--settings", action="store_true",
                       help="print voipmon/config/settings.py")
    which.add_argument("--docs", action="store_true", help="print docs/configuration.md")
    which.add_argument("--write", action="store_true",
                       help="rewrite every generated file in the tree")
    args = parser.parse_args(argv)
    if args.write:
        for relpath, text in generated().items():
            path = os.path.join(ROOT, relpath)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            print(relpath)
        return 0
    sys.stdout.write(conf_text(args.conf) if args.conf else
                     settings_source() if args.settings else docs_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
