"""Test helpers for eval/sweep tests: a character tokenizer, tiny model directories and tiny
local lm-eval tasks (JSONL + YAML), all built in a temporary directory (no shipped weights)."""

from __future__ import annotations

import json
from pathlib import Path

from dllmq.models import random_model, save_pretrained, tiny_config

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,?!:;'-+=*/()\n\"<>[]_#"
SPECIALS = {"<unk>": 59, "<eot>": 60, "<bos>": 61, "<eos>": 62, "<mask>": 63}
CHAT_TEMPLATE = ("<bos>{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<eot>{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def make_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(CHARS[:59])}
    vocab.update(SPECIALS)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", 61)])
    from tokenizers import decoders

    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", mask_token="<mask>", pad_token="<eos>",
                                   additional_special_tokens=["<eot>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(model_type: str = "llada", seed: int = 0, scale: float = 10.0, **cfg):
    """A random tiny model whose weights are scaled up so its outputs depend on the input
    (at the default init every prompt decodes to the same token)."""
    import torch

    cfg.setdefault("max_position", 256)
    model = random_model(tiny_config(model_type, eot_token_id=60, **cfg), seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model


def make_model_dir(path: Path, model_type: str = "llada", seed: int = 0, **cfg) -> Path:
    model = make_model(model_type, seed, **cfg)
    save_pretrained(model, path)
    make_tokenizer().save_pretrained(path)
    return path


def write_tasks(root: Path, n_docs: int = 6) -> Path:
    """Three tiny tasks under root/tasks: tiny_mc (multiple choice, acc), tiny_gen
    (generate_until, exact_match), tiny_ppl (loglikelihood_rolling, word_perplexity)."""
    tdir = root / "tasks"
    tdir.mkdir(parents=True, exist_ok=True)
    mc = [{"question": f"what is {i} plus 1?", "choices": [str(i + 1), str(i + 2), "no"],
           "label": 0} for i in range(n_docs)]
    gen = [{"question": f"say {w}", "answer": w} for w in ("yes", "no", "up", "down", "a", "b")]
    ppl = [{"text": f"the cat sat on mat number {i}. it was fine."} for i in range(3)]
    for name, rows in (("mc", mc), ("gen", gen[:n_docs]), ("ppl", ppl)):
        (tdir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def dataset(name: str) -> str:
        return (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n"
                f"    test: {tdir / (name + '.jsonl')}\ntest_split: test\n")

    (tdir / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n" + dataset("mc") + "output_type: multiple_choice\n"
        "doc_to_text: \"Q: {{question}}\\nA:\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n")
    (tdir / "tiny_gen.yaml").write_text(
        "task: tiny_gen\n" + dataset("gen") + "output_type: generate_until\n"
        "doc_to_text: \"{{question}}:\"\ndoc_to_target: \"{{answer}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\", \".\"]\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    (tdir / "tiny_ppl.yaml").write_text(
        "task: tiny_ppl\n" + dataset("ppl") + "output_type: loglikelihood_rolling\n"
        "doc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    return tdir


def grid_env(root: Path, n_docs: int = 6) -> dict:
    """What the sweep, plan and executor tests share: a tiny LLaDA model directory, the tiny
    tasks (`write_tasks`) and a TaskManager indexing only them."""
    from lm_eval.tasks import TaskManager

    tasks = write_tasks(root, n_docs=n_docs)
    return {"root": root, "model": make_model_dir(root / "tiny-llada"), "tasks": tasks,
            "tm": TaskManager(include_path=str(tasks), include_defaults=False)}
