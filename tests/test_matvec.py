"""matvec.py: every method computes F.linear; the fastest is measured once per product and
machine, kept in a file, and a bad file is measured over, never trusted."""

import json
import time

import pytest
import torch
import torch.nn.functional as F
from helpers import random_ids, tiny

from neox_mini import fast, matvec
from neox_mini.parity import TOLERANCES, difference
from neox_mini.synthetic import random_model

FP32 = TOLERANCES["float32"]
ONEDNN = ["onednn"] if "onednn" in matvec.METHODS else []  # a candidate where PyTorch has oneDNN


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """No choice made yet, and a cache folder of this test's own."""
    monkeypatch.setenv("NEOX_MINI_CACHE", str(tmp_path))
    monkeypatch.setattr(matvec, "_choices", None)
    return tmp_path / "matvec.json"


@pytest.mark.parametrize("rows", [1, 2, 7, 8])
@pytest.mark.parametrize("out_features", [64, 1024, 1001])
def test_every_method_equals_f_linear(rows, out_features):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(1, rows, 96, generator=g)
    w, b = torch.randn(out_features, 96, generator=g), torch.randn(out_features, generator=g)
    for bias in (b, None):
        want = F.linear(x, w, bias)
        for name in matvec.candidates(rows, out_features):
            d = difference(f"{name}, {rows} rows x {out_features}", matvec.METHODS[name](x, w, bias), want)
            assert not d.over(FP32), str(d)


@pytest.mark.parametrize("rows", [1, 3])
def test_a_bound_product_computes_what_its_method_computes(fresh, rows):
    """matvec.bound: the chosen method with the weight's views made once, the same numbers as the
    method called with the weight; None before a choice is made."""
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(1, rows, 96, generator=g)
    w, b = torch.randn(1024, 96, generator=g), torch.randn(1024, generator=g)
    assert matvec.bound(w, b, rows) is None
    for bias in (b, None):
        for name in matvec.candidates(rows, 1024):
            matvec.load_choices()[matvec.choice_key(w.dtype, w.shape, rows)] = name
            assert torch.equal(matvec.bound(w, bias, rows)(x), matvec.METHODS[name](x, w, bias)), name


def test_many_rows_are_a_plain_matrix_product(fresh, monkeypatch):
    monkeypatch.setattr(matvec, "fastest", lambda *a: pytest.fail("a product of 9 rows was timed"))
    x, w = torch.randn(9, 32), torch.randn(64, 32)
    assert torch.equal(matvec.linear(x, w), F.linear(x, w))
    assert not fresh.exists()


def test_the_choice_is_measured_once_and_kept(fresh, monkeypatch):
    x, w = torch.randn(1, 1, 256), torch.randn(4096, 256)
    got = matvec.linear(x, w)
    assert not difference("linear", got, F.linear(x, w)).over(FP32)
    stored = json.loads(fresh.read_text())[matvec.machine()]
    key = matvec.choice_key(w.dtype, w.shape, 1)
    assert stored[key] in matvec.candidates(1, 4096)
    # A new process reads the file instead of measuring again.
    monkeypatch.setattr(matvec, "_choices", None)
    monkeypatch.setattr(matvec, "fastest", lambda *a: pytest.fail("measured again"))
    matvec.linear(x, w)
    assert matvec.choice_key(w.dtype, w.shape, 1) == key and matvec.load_choices()[key] == stored[key]


def test_a_choice_made_with_other_kernels_is_measured_again(fresh, monkeypatch):
    """A candidate whose code changed keeps its name: KERNELS tells its old choices apart."""
    x, w = torch.randn(1, 1, 256), torch.randn(4096, 256)
    key = matvec.choice_key(w.dtype, w.shape, 1)
    before = matvec.machine().replace(f"kernels {matvec.KERNELS}", f"kernels {matvec.KERNELS - 1}")
    fresh.write_text(json.dumps({before: {key: "split-2"}}))
    monkeypatch.setattr(matvec, "fastest", lambda *a: "linear")
    matvec.linear(x, w)
    assert matvec.load_choices()[key] == "linear"
    assert json.loads(fresh.read_text())[before] == {key: "split-2"}  # another version's entry is kept


@pytest.mark.parametrize("content", ["{not json", '["a list"]', '{"%s": {"float32 64x32 rows=1 threads=1": "rm -rf"}}'])
def test_a_bad_cache_file_is_measured_over(fresh, content):
    fresh.write_text(content.replace("%s", matvec.machine()))
    x, w = torch.randn(1, 32), torch.randn(64, 32)
    assert not difference("linear", matvec.linear(x, w), F.linear(x, w)).over(FP32)
    assert all(v in matvec.METHODS for v in json.loads(fresh.read_text())[matvec.machine()].values())


def step_shapes(model) -> list[tuple[int, int]]:
    return sorted({tuple(m.weight.shape) for m in model.modules() if type(m) is torch.nn.Linear})


def assert_one_method_everywhere(model, rows: int, method: str) -> None:
    """A whole-step winner other than the per-product choices: `method` for every product it can
    compute, F.linear for the others."""
    choices = matvec.load_choices()
    for shape in step_shapes(model):
        expected = method if method in matvec.candidates(rows, shape[0]) else "linear"
        assert choices[matvec.choice_key(torch.float32, shape, rows)] == expected, (shape, method)


def assert_decodes_as_the_model(model, what: str) -> None:
    ids = random_ids(model.config, batch=1, length=5)
    with torch.inference_mode():
        d = difference(f"decode after the choice ({what})", fast.forward(model, ids), model(ids))
        assert not d.over(FP32), str(d)


def test_float_decode_kernels_are_chosen_once_over_whole_steps(fresh, monkeypatch):
    model = random_model(tiny(), seed=0)
    assert fast.choose_float_decode_kernels(model, 2) > 0
    assert all(block.attention.kv_cache is None for block in model.gpt_neox.layers)  # the caches as they were
    choices = matvec.load_choices()
    step = choices[matvec.float_step_key(torch.float32, step_shapes(model), 2)]
    assert step in ("per-product", "linear", *(f"split-{k}" for k in matvec.SPLITS))
    for shape in step_shapes(model):
        assert choices[matvec.choice_key(torch.float32, shape, 2)] in matvec.candidates(2, shape[0])
    if step != "per-product":
        assert_one_method_everywhere(model, 2, step)
    # Kept on disk: a new process (here: the choices read again) does not time the steps again.
    monkeypatch.setattr(matvec, "_choices", None)
    monkeypatch.setattr(fast, "forward", lambda *a, **k: pytest.fail("timed again"))
    assert fast.choose_float_decode_kernels(model, 2) == 0.0


def slowed(method):
    def slow(*args):
        time.sleep(0.001)
        return method(*args)

    return slow


def whole_step_choice(model, rows: int, alone, slow: list[str], monkeypatch) -> str:
    """The whole-step choice for `rows` rows (its winner's name), as if each product's own choice had
    been alone(shape), with the methods in `slow` made slow."""
    choices = matvec.load_choices()
    for shape in step_shapes(model):
        choices[matvec.choice_key(torch.float32, shape, rows)] = alone(shape)
    for method in slow:
        monkeypatch.setitem(matvec.METHODS, method, slowed(matvec.METHODS[method]))
    fast.choose_float_decode_kernels(model, rows)
    return choices[matvec.float_step_key(torch.float32, step_shapes(model), rows)]


def test_f_linear_everywhere_wins_over_per_product_choices_that_decode_slower(fresh, monkeypatch):
    """F.linear for every product (what transformers runs) is the floor: per-product choices that
    make whole steps slower are replaced by it."""
    model = random_model(tiny(), seed=0)
    splits = [f"split-{k}" for k in matvec.SPLITS]

    def alone(shape):  # a split had won each product alone (the 1001-row LM head: F.linear)
        return "split-2" if shape[0] % 2 == 0 else "linear"

    # Every split and oneDNN slow.
    assert whole_step_choice(model, 1, alone, splits + ONEDNN, monkeypatch) == "linear"
    assert_one_method_everywhere(model, 1, "linear")
    assert_decodes_as_the_model(model, "F.linear everywhere")


def test_one_method_everywhere_wins_over_per_product_choices_that_decode_slower(fresh, monkeypatch):
    """A method that won its product alone may lose inside whole steps (torch.mv on an AMD Zen 4):
    each batched product for every product it can compute competes too, F.linear where it cannot."""
    model = random_model(tiny(), seed=0)
    # torch.mv had won every product alone; it, F.linear and oneDNN slow: only a split everywhere is fast.
    step = whole_step_choice(model, 1, lambda shape: "mv", ["mv", "linear"] + ONEDNN, monkeypatch)
    assert step.startswith("split-"), step
    assert_one_method_everywhere(model, 1, step)
    assert_decodes_as_the_model(model, f"{step} everywhere")


@pytest.mark.skipif(not ONEDNN, reason="this PyTorch is built without oneDNN: no oneDNN candidate")
def test_onednn_everywhere_competes_in_whole_steps(fresh, monkeypatch):
    """oneDNN's product on the plain weight (which ran 8-row products of 160m 1.4x faster than the
    batched one on an AMD Zen 4) competes for every product, in a batch of 4 here."""
    model = random_model(tiny(), seed=0)
    # F.linear had won every product alone; it and every split slow.
    slow = ["linear", *(f"split-{k}" for k in matvec.SPLITS)]
    assert whole_step_choice(model, 4, lambda shape: "linear", slow, monkeypatch) == "onednn"
    assert_one_method_everywhere(model, 4, "onednn")
    assert_decodes_as_the_model(model, "oneDNN everywhere")


def test_a_compiled_step_traces_this_machines_choice(fresh, monkeypatch):
    """compile_decode's step runs each float product by the method chosen on this machine (here
    forced: the batched product over 2 blocks where the rows divide), as a library call, and
    computes what the uncompiled step does."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # compile_decode names it: undone after
    model = random_model(tiny(), seed=4)
    choices = matvec.load_choices()
    for shape in step_shapes(model):  # the 1001-row LM head: F.linear
        choices[matvec.choice_key(torch.float32, shape, 1)] = "split-2" if shape[0] % 2 == 0 else "linear"
    choices[matvec.float_step_key(torch.float32, step_shapes(model), 1)] = "per-product"
    with torch._inductor.config.patch(fx_graph_cache=False):  # a graph from the cache shows no code
        _, code = run_and_get_code(fast.compile_decode, model, 1)
    code = "\n".join(code)
    # The layers' products (with a bias) are batched; the LM head's (no bias) is F.linear's mm.
    assert "extern_kernels.baddbmm" in code and "extern_kernels.addmm" not in code, code
    assert "extern_kernels.mm(" in code, code
    ids = random_ids(model.config, batch=1, length=8, seed=2)
    with torch.inference_mode():
        model.setup_kv_cache(1, 9)
        fast.forward(model, ids[:, :7])
        compiled = fast.decode(model, ids[:, 7:], 7)
        model.compiled_decode = False
        fast.forward(model, ids[:, :7])
        eager = fast.decode(model, ids[:, 7:], 7)
        model.clear_kv_cache()
    d = difference("compiled step with split-2 products", compiled, eager)
    assert not d.over(FP32), str(d)


def test_what_a_compiled_step_traces(fresh, monkeypatch):
    """torch.mv becomes inductor's own loop when compiled: F.linear (the same BLAS product) instead.
    Products of many rows, products not chosen yet, and frozen weights (inductor times its own
    kernels against F.linear's): F.linear."""
    import torch._inductor.config as inductor_config

    choices = matvec.load_choices()
    traced = {(64, 32): "split-4", (96, 32): "mv", (128, 32): "linear", (192, 32): "onednn"}
    for shape, method in traced.items():
        choices[matvec.choice_key(torch.float32, shape, 1)] = method
    expected = {(64, 32): "split-4", (96, 32): "linear", (128, 32): "linear", (160, 32): "linear", (192, 32): "linear"}
    for shape, method in expected.items():
        assert matvec.method_when_compiled(torch.float32, shape, 1) == method
    assert matvec.method_when_compiled(torch.float32, (64, 32), matvec.MAX_ROWS + 1) == "linear"
    monkeypatch.setattr(inductor_config, "freezing", True)
    assert matvec.method_when_compiled(torch.float32, (64, 32), 1) == "linear"
