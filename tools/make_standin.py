"""Random-weight stand-ins for the paper's checkpoints: LLaDA-8B- and Dream-7B-shaped models
with the shipped tiny tokenizer, for running the `paper` preset's code on a GPU with no
checkpoint (params/paper-check.yaml).

    python tools/make_standin.py                       # CUDA: /tmp/dllmq-standin/{llada-8b,dream-7b}
    python tools/make_standin.py --tiny --out DIR      # CPU, 2-block shapes (a smoke test)

Each model has the real architecture's shapes (hidden size, FFN width, heads, KV heads, vocab,
Dream's q/k/v bias), N(0, 0.02^2) weights (bench/bench_models.py's init), bf16, and the special
ids (mask, BOS, EOS, end of turn) of the tokenizer it is saved with: `tiny-llada-instruct`'s,
which has a chat template. `llada-8b-instruct` is a symbolic link to `llada-8b`, so the base
and instruct roles are two model names (two rows in the tables) for one set of weights.
The numbers such a model produces mean nothing: it proves code paths, not accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_models import dream_7b, llada_8b, random_model_on  # noqa: E402
from dllmq.models import load_tokenizer, save_pretrained  # noqa: E402
from dllmq.models.io import read_config, resolve  # noqa: E402

TOKENIZER = "tiny-llada-instruct"


def standin_config(cfg, tiny: bool):
    """cfg with the special ids of TOKENIZER's model (and small shapes when tiny)."""
    ref = read_config(resolve(TOKENIZER))
    cfg = cfg.replace(mask_token_id=ref.mask_token_id, bos_token_id=ref.bos_token_id,
                      eos_token_id=ref.eos_token_id, pad_token_id=ref.pad_token_id,
                      eot_token_id=ref.eot_token_id)
    if tiny:
        cfg = cfg.replace(num_layers=2, hidden_size=256, intermediate_size=512, num_heads=4,
                          num_kv_heads=4 if cfg.model_type == "llada" else 2, vocab_size=4096)
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/dllmq-standin"))
    ap.add_argument("--tiny", action="store_true", help="CPU, 2-block shapes (smoke test)")
    ap.add_argument("--only", choices=("llada", "dream"), help="make one of the two")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("make_standin: no CUDA device; run with --tiny on CPU")
    tok = load_tokenizer(TOKENIZER)
    for name, cfg in (("llada-8b", llada_8b()), ("dream-7b", dream_7b())):
        if args.only and not name.startswith(args.only):
            continue
        t0 = time.perf_counter()
        model = random_model_on(standin_config(cfg, args.tiny), device, torch.bfloat16)
        dest = args.out / name
        save_pretrained(model, dest)
        tok.save_pretrained(dest)
        del model
        print(f"{dest}: {sum(f.stat().st_size for f in dest.glob('*.safetensors')) / 2**30:.1f} GiB "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
    link = args.out / "llada-8b-instruct"
    if (args.out / "llada-8b").is_dir() and not link.exists():
        os.symlink("llada-8b", link)
    return 0


if __name__ == "__main__":
    sys.exit(main())
