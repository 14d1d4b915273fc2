"""The public API re-exported by ``nerncompress`` resolves, and the package imports without side effects."""

import subprocess
import sys

import nerncompress


def test_every_public_name_resolves():
    for name in nerncompress.__all__:
        assert getattr(nerncompress, name) is not None, name


def test_import_is_cheap_and_prints_nothing():
    code = "import sys, nerncompress; assert 'torch' not in sys.modules; print(nerncompress.__version__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == nerncompress.__version__
    assert result.stderr == ""
