"""The GPT-NeoX-20B tokenizer (used by every Pythia model): a thin wrapper over `tokenizers`.

Facts that matter: `<|endoftext|>` = 0 is both BOS and EOS; `<|padding|>` = 1; no BOS is added
unless asked (`bos=True`); runs of 2-24 spaces are single tokens (ids 50254..50276).
The tokenizer has 50,277 ids, fewer than the model's (padded) 50,304 / 50,432 / 50,688 rows.
"""

from __future__ import annotations

from pathlib import Path

EOS_ID = 0  # <|endoftext|>
BOS_ID = 0  # the same token: Pythia documents are separated by <|endoftext|>
PAD_ID = 1  # <|padding|>


class Tokenizer:
    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json: looked for {path}")
        self.path = path
        self._tok = HFTokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)  # 50277 ids: 0 .. 50276

    def encode(self, text: str, bos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [BOS_ID] + ids if bos else ids

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)
