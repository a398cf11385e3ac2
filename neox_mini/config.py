"""NeoXConfig: the handful of numbers that define a GPT-NeoX architecture, and nothing else.

Where a checkpoint came from and the dtype it is stored in are not architecture: they live in
`model.provenance` (see loading.py). Two ways in:
  * `NeoXConfig.from_hf(path_or_dict)` reads a Hugging Face `config.json`, in both the original
    Pythia style (`rotary_pct`, `rotary_emb_base`, `torch_dtype`) and the transformers 5.x style
    (`rope_parameters: {rope_theta, partial_rotary_factor}`, `dtype`), and refuses what this model
    does not implement.
  * `NeoXConfig.from_pythia("pythia-160m")` reads a row of the Pythia table (pythia.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import pythia
from .errors import ConfigError

# GELU variants by their Hugging Face `hidden_act` name. HF's "gelu" is the exact erf form; GPT-NeoX
# training used the tanh approximation (Megatron's fused bias_gelu). Anything else is refused.
GELU_BY_HF_ACT = {"gelu": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}

DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


# Every number of the config: (field, its config.json key, what it must be). Checked on every
# NeoXConfig, and on config.json before one is built, so a message names the key the file has.
VALUES = (
    ("vocab_size", "vocab_size", "count"),
    ("hidden_size", "hidden_size", "count"),
    ("num_layers", "num_hidden_layers", "count"),
    ("num_heads", "num_attention_heads", "count"),
    ("intermediate_size", "intermediate_size", "count"),
    ("max_position_embeddings", "max_position_embeddings", "count"),
    ("rotary_pct", "rotary_pct", "fraction"),
    ("rotary_base", "rotary_emb_base", "positive"),
    ("layer_norm_eps", "layer_norm_eps", "positive"),
    ("bos_token_id", "bos_token_id", "id"),
    ("eos_token_id", "eos_token_id", "id"),
    ("use_parallel_residual", "use_parallel_residual", "bool"),
)


def check_value(name: str, value: Any, kind: str) -> None:
    """Refuse a value of the wrong type or range, naming it (JSON gives strings, nulls, floats)."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {
        "count": isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        "id": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        "fraction": is_number and 0 < value <= 1,
        "positive": is_number and 0 < value < math.inf,
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        want = {
            "count": "a whole number >= 1",
            "id": "a whole number >= 0",
            "fraction": "a number in (0, 1]",
            "positive": "a finite number > 0",
            "bool": "true or false",
        }[kind]
        raise ConfigError(f"{name} must be {want}, got {value!r}")


class DuplicateKeyError(ValueError):
    """A JSON object that gives one key twice."""


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json.loads' object_pairs_hook: a key given twice is an error (json keeps the last silently)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise DuplicateKeyError(f"{key!r} is listed twice")
        seen.add(key)
    return dict(pairs)


@dataclass(frozen=True)
class NeoXConfig:
    vocab_size: int  # rows of embed_in / embed_out (padded: larger than the tokenizer's 50,277 ids)
    hidden_size: int  # C, the width of the residual stream
    num_layers: int
    num_heads: int  # nh
    intermediate_size: int  # F, the MLP width (4 C for every Pythia model)
    rotary_pct: float = 0.25  # fraction of each head's dims that get rotary position information
    rotary_base: float = 10000.0
    max_position_embeddings: int = 2048  # the context length the model was trained on
    layer_norm_eps: float = 1e-5
    use_parallel_residual: bool = True  # x + attn(ln1(x)) + mlp(ln2(x)), vs the sequential form
    bos_token_id: int = 0
    eos_token_id: int = 0
    gelu: str = "erf"  # "erf" (exact, what HF computes) or "tanh" (what NeoX training computed)

    def __post_init__(self):
        for field, _, kind in VALUES:
            check_value(field, getattr(self, field), kind)
        for field in ("bos_token_id", "eos_token_id"):
            if getattr(self, field) >= self.vocab_size:
                raise ConfigError(f"{field} {getattr(self, field)} is not below vocab_size {self.vocab_size}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.gelu not in ("erf", "tanh"):
            raise ConfigError(f"gelu must be 'erf' or 'tanh', not {self.gelu!r}")
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ConfigError(f"rotary_pct must be in (0, 1], not {self.rotary_pct}")
        if self.rotary_ndims % 2:
            raise ConfigError(
                f"rotary dims ({self.rotary_ndims} = {self.rotary_pct} x head size "
                f"{self.head_size}) must be even: rotate_half pairs dim i with i + R/2"
            )

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rotary_ndims(self) -> int:
        # int() truncation, as GPT-NeoX and transformers do: 0.25 * 64 = 16 dims of each 64-dim head.
        return int(self.head_size * self.rotary_pct)

    def replace(self, **changes) -> NeoXConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count by arithmetic. Non-embedding excludes embed_in AND the untied embed_out,
        which is how the Pythia model card counts (e.g. 160m: 85,056,000 of 162,322,944)."""
        C, F = self.hidden_size, self.intermediate_size
        layer_norms = 2 * 2 * C  # input_layernorm + post_attention_layernorm, weight and bias each
        attention = (C * 3 * C + 3 * C) + (C * C + C)  # query_key_value + dense
        mlp = (C * F + F) + (F * C + C)  # dense_h_to_4h + dense_4h_to_h
        body = self.num_layers * (layer_norms + attention + mlp) + 2 * C  # + final_layer_norm
        if non_embedding:
            return body
        return body + 2 * self.vocab_size * C  # embed_in + embed_out (untied)

    # ---------------------------------------------------------------- Hugging Face config.json

    @classmethod
    def from_hf(cls, path_or_dict: str | Path | dict[str, Any]) -> NeoXConfig:
        """Read a Hugging Face GPT-NeoX `config.json` (a path to the file or its folder, or a dict)."""
        if isinstance(path_or_dict, dict):
            hf, where = path_or_dict, "config"
        else:
            path = Path(path_or_dict)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise ConfigError(f"no config.json at {path}")
            try:
                hf = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_keys)
            except DuplicateKeyError as e:  # which of the two values was meant?
                raise ConfigError(f"{path}: {e}") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"{path} is not valid JSON: {e}") from None
            where = str(path)
        if not isinstance(hf, dict):
            raise ConfigError(f"{where}: expected a JSON object")

        def refuse(key, value, why):
            raise ConfigError(f"{where}: unsupported {key}={value!r}: {why}")

        def required(key):
            if key not in hf:
                raise ConfigError(f"{where}: missing required key {key!r}")
            return hf[key]

        model_type = hf.get("model_type", "gpt_neox")  # (compared, never hashed: any JSON value is safe)
        if model_type != "gpt_neox":
            refuse("model_type", model_type, "neox_mini implements GPT-NeoX only")
        act = hf.get("hidden_act", "gelu")
        if not isinstance(act, str) or act not in GELU_BY_HF_ACT:
            refuse("hidden_act", act, f"supported: {sorted(GELU_BY_HF_ACT)}")
        if hf.get("tie_word_embeddings", False):
            refuse("tie_word_embeddings", True, "GPT-NeoX has a separate, untied embed_out")
        if hf.get("attention_bias", True) is not True:
            refuse("attention_bias", hf["attention_bias"], "GPT-NeoX attention always has biases")

        # Rotary: transformers 5.x nests it in rope_parameters; older configs use flat keys.
        rope = hf.get("rope_parameters") or {}
        if not isinstance(rope, dict):
            refuse("rope_parameters", rope, "expected an object")
        if hf.get("rope_scaling") not in (None, {}):
            refuse("rope_scaling", hf["rope_scaling"], "only plain (unscaled) rotary is implemented")
        if rope.get("rope_type", "default") != "default":
            refuse("rope_parameters.rope_type", rope["rope_type"], "only 'default' rotary is implemented")
        rotary_pct = rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))
        rotary_base = rope.get("rope_theta", hf.get("rotary_emb_base", 10000))

        eos = hf.get("eos_token_id", 0)
        if isinstance(eos, list):
            if len(eos) != 1:
                refuse("eos_token_id", eos, "a single end-of-text id is expected")
            eos = eos[0]
        dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
        if not isinstance(dtype, str) or dtype not in DTYPE_NAMES:
            refuse("dtype", dtype, "expected float32, float16 or bfloat16")

        values = {
            "vocab_size": required("vocab_size"),
            "hidden_size": required("hidden_size"),
            "num_layers": required("num_hidden_layers"),
            "num_heads": required("num_attention_heads"),
            "intermediate_size": required("intermediate_size"),
            "rotary_pct": rotary_pct,
            "rotary_base": rotary_base,
            "max_position_embeddings": hf.get("max_position_embeddings", 2048),
            "layer_norm_eps": hf.get("layer_norm_eps", 1e-5),
            "use_parallel_residual": hf.get("use_parallel_residual", True),
            "bos_token_id": 0 if hf.get("bos_token_id") is None else hf["bos_token_id"],
            "eos_token_id": 0 if eos is None else eos,
        }
        for field, key, kind in VALUES:
            check_value(f"{where}: {key}", values[field], kind)
        values["rotary_pct"], values["rotary_base"] = float(rotary_pct), float(rotary_base)
        values["layer_norm_eps"] = float(values["layer_norm_eps"])
        try:
            return cls(**values, gelu=GELU_BY_HF_ACT[act])
        except ConfigError as e:  # a combination that does not work (heads, rotary dims, ids)
            raise ConfigError(f"{where}: {e}") from None

    def to_hf(self, dtype: str = "float32") -> dict[str, Any]:
        """This config as an original-Pythia-style `config.json` dict (what the Hub serves), for
        weights stored in `dtype` ("float32", "float16" or "bfloat16")."""
        return {
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": {"erf": "gelu", "tanh": "gelu_new"}[self.gelu],
            "rotary_pct": self.rotary_pct,
            "rotary_emb_base": self.rotary_base,
            "max_position_embeddings": self.max_position_embeddings,
            "layer_norm_eps": self.layer_norm_eps,
            "use_parallel_residual": self.use_parallel_residual,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": False,
            "initializer_range": 0.02,
            "use_cache": True,
            "torch_dtype": DTYPE_NAMES[dtype],
        }

    # ---------------------------------------------------------------- the Pythia table

    @classmethod
    def from_pythia(cls, name: str) -> NeoXConfig:
        """A Pythia size by any name `from_pretrained` accepts: "pythia-160m", "160m",
        "EleutherAI/pythia-160m-deduped", "pythia-160m-v0", "pythia-70m-seed3" (see pythia.parse_name)."""
        row = pythia.table()[pythia.parse_name(name).row]
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in fields})
