"""metastep: learning to learn step sizes, with exact and range-safe meta-gradients."""
from . import _core

__version__ = _core.__version__
