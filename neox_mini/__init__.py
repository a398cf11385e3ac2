"""neox_mini: a from-scratch GPT-NeoX in pure PyTorch that runs the whole Pythia suite."""

from .config import ConfigError, NeoXConfig
from .model import GPTNeoX
from .checkpoint import CheckpointError
from .generate import generate

__all__ = ["NeoXConfig", "GPTNeoX", "generate", "ConfigError", "CheckpointError"]
__version__ = "0.1.0"
