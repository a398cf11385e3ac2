"""The errors neox_mini raises. Every one derives from NeoxMiniError, so `except NeoxMiniError`
catches anything that is the input's fault (a bad name, config, checkpoint or reference file) and
lets real bugs through. Each also derives from ValueError, which is what it is."""


class NeoxMiniError(Exception):
    """Base class of every neox_mini error; its message names the file, key or tensor concerned."""


class ConfigError(NeoxMiniError, ValueError):
    """A config value this model does not implement, or a name not in the Pythia table."""


class CheckpointError(NeoxMiniError, ValueError):
    """A checkpoint that cannot be loaded: the message names the file and tensor(s) concerned."""


class ResolveError(NeoxMiniError, ValueError):
    """A model name, revision or folder that cannot be found (or fetched)."""


class RevisionError(ResolveError):
    """A step name that is malformed or not one of the 154 published checkpoints."""


class UnknownModelError(ConfigError, ResolveError):
    """A name that looks like a Pythia model but is not one: both a config and a resolve problem,
    since `NeoXConfig.from_pythia` and `from_pretrained` read names with the same parser."""


class TokenizerError(NeoxMiniError, ValueError):
    """A tokenizer.json that cannot be read."""


class MissingTokenizerError(TokenizerError, FileNotFoundError):
    """No tokenizer.json where one was looked for (the message says where)."""


class NonFiniteError(NeoxMiniError, ArithmeticError):
    """The model computed NaN or infinite logits: the output is not a result (bad weights, or an
    overflow in half precision)."""


class ParityError(NeoxMiniError, ValueError):
    """The parity check cannot run: a bad or mismatched reference file, a missing package, bad inputs."""


class DoesNotFitError(NeoxMiniError, MemoryError):
    """The weights would not fit the memory of the device(s): refused before anything is read."""


class KnownIssueWarning(UserWarning):
    """The revision being loaded is on the known-issues list (neox_mini/known_issues.toml)."""
