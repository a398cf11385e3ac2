"""The opt-in compiled decode step (fast.compile_decode) computes what the uncompiled one does.

fp32: the same logits at the fp32 tolerance step by step, and identical greedy tokens, in both
modes; int8: within the int8 tolerance of the uncompiled int8 model. Weights frozen into a compiled
step (int8, and fp32 in mode "max-autotune") are copies: edits must reach it all the same. The
warm-up must leave nothing to compile for a new prompt length or cache length (dynamo is told to
fail on a recompile). No timing is asserted here (scripts/bench.py --only compile measures it).
Compiling costs ~10 s the first time per test process (a frozen fp32 step ~50 s: inductor times
its kernels); the compiled code lands in this session's own cache folder (conftest.py).
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers import random_ids, tiny

from neox_mini import fast, generate
from neox_mini.parity import TOLERANCES, difference
from neox_mini.synthetic import random_model


@pytest.fixture(scope="module")
def model():
    """A tiny model with its decode step compiled for one row."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # compiled graphs of other tests' models do not count against the cache limit
    model = random_model(tiny(), seed=3)
    graphs = counters["stats"]["unique_graphs"]
    seconds = fast.compile_decode(model, batch_size=1)
    assert model.compiled_decode and seconds > 0
    if hasattr(torch.compiler.config, "dynamic_sources"):  # dynamo told position and length vary: one graph
        assert counters["stats"]["unique_graphs"] == graphs + 1
    return model


@torch.inference_mode()
def decode_logits(model, ids: torch.Tensor, compiled: bool) -> torch.Tensor:
    """Teacher-forced decoding: prefill ids[:, :4], then feed ids[:, 4:] one at a time -> [B, T - 4, V].
    Under inference_mode, as generate decodes (the graph is guarded on it)."""
    ids = ids.clone()  # an inference tensor, as generate's sampled tokens are
    model.compiled_decode = compiled
    try:
        fast.prepare_decode(model, ids.shape[0])  # as generate does before decoding
        model.setup_kv_cache(ids.shape[0], ids.shape[1] + 1)  # a slot to spare, as generate has
        fast.forward(model, ids[:, :4])
        steps = [fast.decode(model, ids[:, pos : pos + 1], pos) for pos in range(4, ids.shape[1])]
        return torch.cat(steps, 1)
    finally:
        model.compiled_decode = True
        model.clear_kv_cache()


def test_same_logits_and_no_recompile(model):
    ids = random_ids(model.config, batch=1, length=30, seed=1)
    eager = decode_logits(model, ids, compiled=False)
    with torch._dynamo.config.patch(error_on_recompile=True):  # the warm-up covered every position and length
        compiled = decode_logits(model, ids, compiled=True)
        shorter = decode_logits(model, ids[:, :11], compiled=True)
    d = difference("decode logits", compiled, eager)
    assert d.rel_error <= TOLERANCES["float32"], d
    d = difference("decode logits, shorter cache", shorter, eager[:, :7])
    assert d.rel_error <= TOLERANCES["float32"], d


def assert_same_greedy_tokens(model, seed: int) -> None:
    """24 greedy tokens after a 9-token prompt: the same compiled and uncompiled."""
    ids = random_ids(model.config, batch=1, length=9, seed=seed)
    compiled = generate(model, ids, 24, vocab_limit=model.config.vocab_size)
    model.compiled_decode = False
    try:
        eager = generate(model, ids, 24, vocab_limit=model.config.vocab_size)
    finally:
        model.compiled_decode = True
    assert torch.equal(compiled, eager)


def test_greedy_tokens_identical(model):
    assert_same_greedy_tokens(model, seed=2)


@pytest.fixture(scope="module")
def int8_model():
    """A tiny int8 model with its decode step compiled, its weights frozen into it."""
    model = random_model(tiny(), seed=4).quantize("int8")
    fast.compile_decode(model)
    assert fast.compile_options(model)["freezing"]
    return model


def test_int8_within_int8_tolerance(int8_model):
    ids = random_ids(int8_model.config, batch=1, length=20, seed=3)
    d = difference("int8 decode logits", decode_logits(int8_model, ids, True), decode_logits(int8_model, ids, False))
    assert d.rel_error <= TOLERANCES["int8"], d


def int8pack_calls_in_decode(model) -> int:
    """How many times 8 compiled decode steps call ATen's int8 product (the rest is inductor's own)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model.setup_kv_cache(1, 12)
    token = torch.zeros(1, 1, dtype=torch.long)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for pos in range(1, 9):
                fast.decode(model, token, pos)
    finally:
        model.clear_kv_cache()
    return sum(event.count for event in prof.key_averages() if event.key == "aten::_weight_int8pack_mm")


def test_int8_products_are_inductors_template(int8_model):
    """Where inductor has its int8 template (x86 with AVX2 or AVX-512), every decode product is that
    template, even for shapes where timing alone would have picked ATen's kernel (INT8_OPTIONS)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        pytest.skip(f"inductor's int8 template needs AVX2 or AVX-512; this CPU: {capability}")
    assert fast._int8_template_usable
    assert fast.compile_options(int8_model)["max_autotune_gemm_backends"] == "CPP"
    assert int8pack_calls_in_decode(int8_model) == 0


def compile_frozen(model) -> None:
    """compile_decode in mode max-autotune, and check that the weights were frozen into the step that generations run:
    inductor repacks float weights for MKL only when they are constants of the graph."""
    from torch._dynamo.utils import counters

    before = counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"]
    fast.compile_decode(model, mode="max-autotune")
    assert fast.compile_options(model)["freezing"]
    assert counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"] > before, "no weight was frozen"
    ids = random_ids(model.config, batch=1, length=12, seed=8)
    with torch._dynamo.config.patch(error_on_recompile=True):  # the step compiled is the one that runs
        decode_logits(model, ids, True)


@pytest.fixture(scope="module")
def frozen_model():
    """A tiny fp32 model with its decode step compiled in mode max-autotune: weights frozen into it."""
    torch._dynamo.reset()  # a process that has not compiled the step yet
    model = random_model(tiny(), seed=6)
    compile_frozen(model)
    return model


def test_max_autotune_after_default_is_frozen(frozen_model):
    """After a default compile, dynamo already treats positions and cache lengths as variables, and
    the unfrozen graph it made is a graph generations could run: the step they run in mode
    max-autotune must still be a frozen one (compiled by its own compiled object)."""
    fast.compile_decode(frozen_model)
    compile_frozen(frozen_model)


def test_max_autotune_same_logits_and_tokens(frozen_model):
    ids = random_ids(frozen_model.config, batch=1, length=20, seed=5)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = decode_logits(frozen_model, ids, True)
    d = difference("max-autotune decode logits", compiled, decode_logits(frozen_model, ids, False))
    assert d.rel_error <= TOLERANCES["float32"], d
    assert_same_greedy_tokens(frozen_model, seed=6)


@pytest.mark.parametrize("which", ["int8_model", "frozen_model"])
def test_frozen_weights_edited_or_replaced_are_seen(which, request):
    """A compiled step with frozen weights holds copies of them: an edit in place, and a weight
    replaced, must reach the next generation all the same."""
    model = request.getfixturevalue(which)
    tolerance = TOLERANCES["int8" if model.quantization else "float32"]
    ids = random_ids(model.config, batch=1, length=12, seed=4)
    before = decode_logits(model, ids, True)
    head = model.embed_out
    changes = {
        "edited in place": lambda: head.weight.neg_(),
        "replaced": (
            (lambda: setattr(head, "scale", head.scale * 3))
            if model.quantization
            else (lambda: setattr(head, "weight", torch.nn.Parameter(head.weight * 3)))
        ),
    }
    for change, edit in changes.items():
        with torch.no_grad():
            edit()
        compiled, eager = decode_logits(model, ids, True), decode_logits(model, ids, False)
        d = difference(f"{which} decode logits, LM head {change}", compiled, eager)
        assert d.rel_error <= tolerance, d
        assert difference("before and after", compiled, before).rel_error > 0.5  # the change is not lost in rounding
        before = compiled


def test_compile_again_after_an_edit_sees_it(int8_model):
    """compile_decode on a model whose frozen weights were edited since its last compile: the
    warm-up must not reuse the stale step (and then record the new weights as compiled)."""
    ids = random_ids(int8_model.config, batch=1, length=12, seed=11)
    with torch.no_grad():
        int8_model.embed_out.weight.neg_()
    fast.compile_decode(int8_model)
    d = difference(
        "int8 decode logits, compiled again",
        decode_logits(int8_model, ids, True),
        decode_logits(int8_model, ids, False),
    )
    assert d.rel_error <= TOLERANCES["int8"], d


def test_unknown_mode_refused():
    model = random_model(tiny(), seed=7)
    with pytest.raises(ValueError, match="compile mode 'fast'"):
        fast.compile_decode(model, mode="fast")
    assert not model.compiled_decode


def test_tensor_parallel_refused():
    model = random_model(tiny(), seed=5)
    model.shard_group = object()  # as distributed.py leaves a split model
    with pytest.raises(ValueError, match="tensor parallelism"):
        fast.compile_decode(model)
    assert not model.compiled_decode


def test_int8_without_template_falls_back_to_aten(monkeypatch):
    """On a CPU where inductor's template has no int8 kernel, inductor finds no choice for the
    products (only the template is allowed): decode compiles again with ATen's kernel allowed, and
    the step computes what the uncompiled one does. The CPU is simulated by telling inductor the
    template does not apply (its own check, patched)."""
    import torch._inductor.lowering  # noqa: F401 -- loads quantized_lowerings completely first
    import torch._inductor.quantized_lowerings as lowerings

    torch._dynamo.reset()
    monkeypatch.setattr(lowerings, "use_cpp_gemm_template", lambda *args, **kwargs: False)
    monkeypatch.setattr(fast, "_int8_template_usable", True)  # restored afterwards, whatever happens here
    model = random_model(tiny(), seed=9).quantize("int8")
    fast.compile_decode(model)
    assert not fast._int8_template_usable
    assert fast.compile_options(model)["max_autotune_gemm_backends"] == "CPP,ATEN"
    assert int8pack_calls_in_decode(model) == 8 * (4 * model.config.num_layers + 1)
    ids = random_ids(model.config, batch=1, length=12, seed=10)
    compiled, eager = decode_logits(model, ids, True), decode_logits(model, ids, False)
    d = difference("int8 decode logits, ATen's kernel", compiled, eager)
    assert d.rel_error <= TOLERANCES["int8"], d


def test_int8_graph_cache_is_keyed_by_the_weights(int8_model):
    """An int8 model's compiled graphs are cached with the layout inductor made from its weights, so
    their key holds a digest of the weights: with int8_model's graphs in the cache, a model of the
    same shape with other weights compiles its own (the cache handed it int8_model's before), and
    compiled again, its own come back from the cache. dynamo's reset stands for a new process."""
    from torch._dynamo.utils import counters

    other = random_model(tiny(), seed=13).quantize("int8")
    ids = random_ids(other.config, batch=1, length=12, seed=14)
    miss, hit = "fxgraph_cache_miss", "fxgraph_cache_hit"
    for outcome, other_outcome in ((miss, hit), (hit, miss)):
        torch._dynamo.reset()
        before = {name: counters["inductor"][name] for name in (outcome, other_outcome)}
        fast.compile_decode(other)
        after = {name: counters["inductor"][name] for name in (outcome, other_outcome)}
        assert after[outcome] > before[outcome] and after[other_outcome] == before[other_outcome], (before, after)
        compiled, eager = decode_logits(other, ids, True), decode_logits(other, ids, False)
        d = difference(f"int8 decode logits after a cache {outcome[-4:]}", compiled, eager)
        assert d.rel_error <= TOLERANCES["int8"], d


@pytest.mark.parametrize("named", [None, "default", "/elsewhere"])
def test_inductor_cache_is_ours_unless_named(named, monkeypatch):
    """compile_decode points inductor's cache into $NEOX_MINI_CACHE unless TORCHINDUCTOR_CACHE_DIR
    names another folder. Inductor's default folder counts as unnamed: inductor writes it into the
    variable as soon as anything asks where its cache is (importing transformers' models does)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    value = {None: None, "default": default_cache_dir()}.get(named, named)
    if value is None:
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", value)
    fast.use_our_inductor_cache()
    ours = str(fast.cache_root() / "inductor")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == (named if named == "/elsewhere" else ours)


def test_the_vector_width_is_stated_to_inductor(monkeypatch):
    """cpp.simdlen, the width inductor would pick by itself, is passed as an option so that it is part
    of the key of inductor's graph cache, which otherwise misses it: a graph compiled for AVX-512
    came back in a process with ATen held to AVX2 (ATEN_CPU_CAPABILITY) and decoded garbage."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    given = []
    monkeypatch.setattr(torch, "compile", lambda fn, options: given.append(options) or fn)
    monkeypatch.setattr(fast, "_compiled_forwards", {})
    fast.compiled_forward({"freezing": True})
    isa = pick_vec_isa()
    assert given == [{"freezing": True, **({"cpp.simdlen": isa.bit_width()} if isa else {})}]
