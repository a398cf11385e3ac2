"""The GPT-NeoX-20B tokenizer (used by every Pythia model): a thin wrapper over `tokenizers`.

Facts that matter: `<|endoftext|>` = 0 is both BOS and EOS; `<|padding|>` = 1; no BOS is added
unless asked (`bos=True`); runs of 2-24 spaces are single tokens (ids 50254..50276).
The tokenizer has 50,277 ids, fewer than the model's (padded) 50,304 / 50,432 / 50,688 rows:
ids >= 50,277 are embedding rows no text maps to, and `decode` refuses them.

Streaming: the tokenizer is byte-level, so one character can be split over several tokens
("😀" is [14931, 235, 211]; each alone decodes to "�"). `StreamDecoder` holds such pieces back
until the character is complete, so streamed text never shows a broken character.
"""

from __future__ import annotations

from pathlib import Path

from .errors import MissingTokenizerError, TokenizerError

EOS_ID = 0  # <|endoftext|>
BOS_ID = 0  # the same token: Pythia documents are separated by <|endoftext|>
PAD_ID = 1  # <|padding|>

REPLACEMENT_CHAR = "\ufffd"  # what decoding an incomplete UTF-8 sequence gives


def find_tokenizer_file(path: str | Path) -> Path:
    """tokenizer.json itself, or the one inside a folder; the error says exactly where it looked."""
    path = Path(path)
    candidate = path / "tokenizer.json" if path.is_dir() else path
    if not candidate.is_file():
        raise MissingTokenizerError(
            f"no tokenizer.json: looked for {candidate} (pass --tokenizer PATH, or "
            f"put the GPT-NeoX-20B tokenizer.json next to the weights)"
        )
    return candidate


class Tokenizer:
    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        self.path = find_tokenizer_file(path)
        try:
            self._tok = HFTokenizer.from_file(str(self.path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise TokenizerError(f"{self.path} is not a valid tokenizer.json: {e}") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)  # 50277 ids: 0 .. 50276

    def encode(self, text: str, bos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [BOS_ID] + ids if bos else ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """The text of the ids; skip_special_tokens drops <|endoftext|> and <|padding|>."""
        ids = [int(i) for i in ids]
        # tokenizers silently decodes an unknown id to "" (e.g. a padded-vocab row like 50300):
        # refuse it instead, since it means the ids did not come from this tokenizer.
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range: the tokenizer has ids 0..{self.vocab_size - 1}")
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Turns a stream of token ids into a stream of text pieces that never split a character.

    Pending ids are decoded together; while their text ends in U+FFFD (the bytes so far end inside
    a UTF-8 sequence) nothing is emitted. Once the text ends cleanly it is emitted and the pending
    ids are dropped: byte-level BPE decoding is a concatenation of bytes, so decoding the tokens in
    such pieces gives exactly the text of decoding them all at once. `flush()` emits what is left
    (a genuinely invalid sequence then shows as U+FFFD, as a one-shot decode would show it).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, token_id: int) -> str:
        self.pending.append(int(token_id))
        text = self.tokenizer.decode(self.pending)
        if text.endswith(REPLACEMENT_CHAR):
            return ""  # a character is still incomplete: wait for its next byte(s)
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text
