"""The compiled core: Eigen from the pinned cmeel wheel, precisions, module facts."""
import re

import metastep as ms
from metastep import _core


def test_eigen_is_the_pinned_cmeel_version():
    # pyproject pins cmeel-eigen==3.4.1; a system Eigen must not be picked up silently.
    assert ms.EIGEN_VERSION == "3.4.1"
    assert "cmeel.prefix" in ms.build_info()["eigen_location"]


def test_pyproject_pin_matches_compiled_eigen():
    import pathlib
    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.exists():  # tests run from an installed package elsewhere
        return
    pin = re.search(r'"cmeel-eigen==([0-9.]+)"', pyproject.read_text())
    assert pin is not None
    assert pin.group(1) == ms.EIGEN_VERSION


def test_precisions_and_facts():
    assert ms.PRECISIONS == ("float32", "float64", "longdouble")
    info = ms.build_info()
    assert info["version"] == ms.__version__
    assert info["longdouble_mantissa_bits"] >= 64
    assert info["cuda_compiled"] in (True, False)
    count, reason = _core.cuda_device_count()
    assert count == 0 and reason
