"""neox_mini: a from-scratch GPT-NeoX in pure PyTorch that runs the whole Pythia suite.

from neox_mini import from_pretrained, generate, Tokenizer
model = from_pretrained("pythia-160m", revision="step3000")   # or a checkpoint folder
"""

from importlib import import_module
from typing import TYPE_CHECKING

from .errors import (
    CheckpointError,
    ConfigError,
    DoesNotFitError,
    KnownIssueWarning,
    MissingTokenizerError,
    NeoxMiniError,
    NonFiniteError,
    ParityError,
    ResolveError,
    RevisionError,
    TokenizerError,
    UnknownModelError,
)

__version__ = "0.1.0"

# The rest of the public API and the module each name lives in, imported on first use (PEP 562's
# module __getattr__): `neox-mini configs`, `revisions` and `--help` then start in a tenth of a
# second instead of waiting ~2 s for torch.
_LAZY = {
    "NeoXConfig": "config",
    "GPTNeoX": "model",
    "from_pretrained": "loading",
    "generate": "generation",
    "Tokenizer": "tokenizer",
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from .config import NeoXConfig
    from .generation import generate
    from .loading import from_pretrained
    from .model import GPTNeoX
    from .tokenizer import Tokenizer


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


__all__ = [
    "NeoXConfig",
    "GPTNeoX",
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
    "NonFiniteError",
    "ParityError",
    "DoesNotFitError",
    "KnownIssueWarning",
]
