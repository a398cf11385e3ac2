"""Run under torchrun by test_distributed.py: load each checkpoint folder tensor-parallel over the
ranks and write what the single-process model is compared with (logits, greedy tokens, score).

    torchrun --nproc-per-node N tests/tensor_parallel_worker.py OUT FOLDER...
"""

import sys
from pathlib import Path

import torch

from neox_mini import distributed
from neox_mini.generation import generate
from neox_mini.scoring import score_ids

INPUTS = dict(logit_ids=(2, 23), prompt=7, new_tokens=32, score_tokens=200, window=64)


def outputs(model) -> dict:
    """What the test compares; the inputs depend on the vocabulary only, so both sides see the same."""
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, INPUTS["logit_ids"], generator=g)
    prompt = torch.randint(0, V, (1, INPUTS["prompt"]), generator=g)
    scored = torch.randint(0, V, (INPUTS["score_tokens"],), generator=g).tolist()
    with torch.inference_mode():
        logits = model(ids)
    greedy = generate(model, prompt, INPUTS["new_tokens"])
    score = score_ids(model, scored, window=INPUTS["window"], stride=INPUTS["window"] // 2)
    return {"logits": logits, "greedy": greedy, "nll": score.nll, "tokens": score.tokens}


def main() -> None:
    out, folders = Path(sys.argv[1]), sys.argv[2:]
    mesh = distributed.init_mesh()
    results = {}
    for folder in folders:
        model = distributed.load_folder(folder, mesh=mesh)
        results[folder] = {**outputs(model), "provenance": model.provenance}
    torch.save(results, out / f"rank{mesh.get_local_rank()}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
