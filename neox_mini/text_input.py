"""Text a user hands over (a file, stdin, an argument), decoded as strict UTF-8: a bad byte is an
error naming where it is, never a replacement character that silently changes the tokens."""

from __future__ import annotations

from pathlib import Path


def utf8_text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{what} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} is invalid ({e.reason})"
        ) from None


def read_text_file(path: str | Path) -> str:
    """The text of a UTF-8 file that exists and is not empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    text = utf8_text(path.read_bytes(), str(path))
    if not text:
        raise ValueError(f"{path} is empty: nothing to score")
    return text
