"""neox_mini: a from-scratch GPT-NeoX in pure PyTorch that runs the whole Pythia suite.

from neox_mini import from_pretrained, generate, Tokenizer
model = from_pretrained("pythia-160m", revision="step3000")   # or a checkpoint folder
"""

from .config import NeoXConfig
from .errors import (
    CheckpointError,
    ConfigError,
    KnownIssueWarning,
    MissingTokenizerError,
    NeoxMiniError,
    ParityError,
    ResolveError,
    RevisionError,
    TokenizerError,
    UnknownModelError,
)
from .generation import generate
from .loading import from_pretrained
from .model import GPTNeoX
from .tokenizer import Tokenizer

__all__ = [
    "GPTNeoX",
    "NeoXConfig",
    "from_pretrained",
    "generate",
    "Tokenizer",
    "NeoxMiniError",
    "ConfigError",
    "CheckpointError",
    "ResolveError",
    "RevisionError",
    "UnknownModelError",
    "TokenizerError",
    "MissingTokenizerError",
    "ParityError",
    "KnownIssueWarning",
]
__version__ = "0.1.0"
