"""The GPT-NeoX-20B tokenizer wrapper: the ids Pythia expects, errors, and streaming decode."""

import random
import shutil

import pytest

from neox_mini import MissingTokenizerError, NeoxMiniError, TokenizerError
from neox_mini.tokenizer import BOS_ID, EOS_ID, PAD_ID, REPLACEMENT_CHAR, Tokenizer


@pytest.fixture(scope="module")
def tok(tokenizer):
    return tokenizer


# Ids checked against transformers' GPTNeoXTokenizerFast (see shared/tokenizer/.../SOURCE.md).
KNOWN = {
    "Hello, I am": [12092, 13, 309, 717],
    "My favorite food is": [3220, 7583, 2739, 310],
    "Hello world!": [12092, 1533, 2],
    "a  b   c    d": [66, 50276, 67, 50275, 68, 50274, 69],
    "<|endoftext|>Hi<|padding|>": [0, 12764, 1],
}


@pytest.mark.parametrize("text", list(KNOWN))
def test_known_ids_and_round_trip(tok, text):
    assert tok.encode(text) == KNOWN[text]
    assert tok.decode(KNOWN[text]) == text


def test_special_ids_vocab_and_bos(tok):
    assert tok.vocab_size == 50277
    assert (EOS_ID, BOS_ID, PAD_ID) == (0, 0, 1)
    assert tok.encode("<|endoftext|>") == [EOS_ID]
    assert tok.encode("<|padding|>") == [PAD_ID]
    # No BOS unless asked; bos=True prepends exactly id 0.
    assert tok.encode("Hello, I am", bos=True) == [0, 12092, 13, 309, 717]
    assert tok.encode("", bos=True) == [0]
    assert tok.encode("") == []


def test_runs_of_spaces_are_single_tokens(tok):
    for n in range(2, 25):
        assert tok.encode(" " * n) == [50278 - n], n


def test_same_ids_as_transformers(tok, tokenizer_json):
    from transformers import PreTrainedTokenizerFast

    ref = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json))
    text = "Ünïcödé 中文 🤗 tabs\tand\n\nnewlines    spaces <s> 1234567 \u0645\u0631\u062d\u0628\u0627"
    assert tok.encode(text) == ref(text, add_special_tokens=False)["input_ids"]


def test_decode_refuses_ids_outside_the_tokenizer(tok):
    for bad in (50277, 50303, -1):  # 50277.. are padded embedding rows: no text maps to them
        with pytest.raises(ValueError, match=f"token id {bad} is out of range: the tokenizer has ids 0..50276"):
            tok.decode([12092, bad])


def test_encode_needs_text(tok):
    with pytest.raises(TypeError, match="encode takes a str, got bytes"):
        tok.encode(b"Hello")


def test_missing_tokenizer_says_where_it_looked(tmp_path):
    assert issubclass(MissingTokenizerError, FileNotFoundError) and issubclass(TokenizerError, NeoxMiniError)
    with pytest.raises(MissingTokenizerError, match=f"no tokenizer.json: looked for {tmp_path / 'tokenizer.json'}"):
        Tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"looked for {tmp_path / 'nope.json'}"):
        Tokenizer(tmp_path / "nope.json")


def test_folder_and_file_paths_and_corrupt_file(tmp_path, tokenizer_json):
    shutil.copyfile(tokenizer_json, tmp_path / "tokenizer.json")
    assert Tokenizer(tmp_path).encode("Hello, I am") == KNOWN["Hello, I am"]
    bad = tmp_path / "bad" / "tokenizer.json"
    bad.parent.mkdir()
    bad.write_text('{"not": "a tokenizer"}')
    with pytest.raises(ValueError, match=f"{bad} is not a valid tokenizer.json"):
        Tokenizer(bad.parent)


# ----------------------------------------------------------------------------- streaming


def stream(tok, ids):
    decoder = tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    return pieces + [decoder.flush()]


def test_stream_holds_a_character_split_over_tokens(tok):
    ids = tok.encode("I😀 it")
    assert ids == [42, 14931, 235, 211, 352]  # the emoji is three byte-tokens, each "�" alone
    assert all(tok.decode([i]) == REPLACEMENT_CHAR for i in ids[1:4])
    pieces = stream(tok, ids)
    assert pieces == ["I", "", "", "😀", " it", ""]  # nothing until the character is complete
    # A token can also end in the first byte of a character: " �" is held back as well.
    ids = tok.encode("I 😀 it")
    assert ids == [42, 49042, 211, 352] and tok.decode([49042]) == " " + REPLACEMENT_CHAR
    assert stream(tok, ids) == ["I", "", " 😀", " it", ""]


def test_stream_equals_one_shot_decode_on_random_ids(tok):
    """Whatever the ids (also invalid UTF-8: lone continuation bytes, truncated sequences), the
    streamed pieces add up to the one-shot decode, and no piece but the last ends mid-character."""
    rng = random.Random(0)
    byte_tokens = [i for i in range(tok.vocab_size) if tok.decode([i]) == REPLACEMENT_CHAR]
    assert len(byte_tokens) > 100  # the partial-UTF-8 byte tokens exist and get mixed in below
    for _ in range(200):
        ids = [
            rng.choice(byte_tokens) if rng.random() < 0.4 else rng.randrange(tok.vocab_size)
            for _ in range(rng.randrange(1, 30))
        ]
        pieces = stream(tok, ids)
        assert "".join(pieces) == tok.decode(ids)
        assert not any(p.endswith(REPLACEMENT_CHAR) for p in pieces[:-1])


def test_stream_of_multilingual_text(tok):
    text = "naïve café — 東京 مرحبا 👩‍👩‍👧 ok"
    ids = tok.encode(text)
    pieces = stream(tok, ids)
    assert "".join(pieces) == text
    assert REPLACEMENT_CHAR not in "".join(pieces)
