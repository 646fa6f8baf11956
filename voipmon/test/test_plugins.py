"""The twistd plugin file: both tapnames are found, and listing them imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from voipmon.central import tap as central_tap
from voipmon.sensor import tap as sensor_tap


class PluginTests(SynchronousTestCase):
    def test_both_tapnames_found(self) -> None:
        """getPlugins(IServiceMaker) yields voipmon-sensor and voipmon-central."""
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("voipmon-sensor", makers)
        self.assertIn("voipmon-central", makers)
        self.assertIs(makers["voipmon-sensor"].options, sensor_tap.Options)
        self.assertIs(makers["voipmon-central"].options, central_tap.Options)

    def test_plugin_file_is_lazy(self) -> None:
        """Discovering the plugins does not import voipmon's tap modules."""
        code = (
            "import sys\n"
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "names = [m.tapname for m in getPlugins(IServiceMaker)]\n"
            "assert 'voipmon-sensor' in names, names\n"
            "heavy = [m for m in sys.modules if m.startswith('voipmon.')]\n"
            "print(','.join(heavy))\n"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "")
