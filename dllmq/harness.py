"""The lm-eval model for masked diffusion LLMs: `DLLMEvalLM`, registered as `dllmq`.

    lm = DLLMEvalLM("tiny-llada-instruct", recipe="w4a16g128-gptq", mc_num=32)
    lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"])
    # or, from a shell (registers `dllmq` with lm-eval, then runs lm-eval's own CLI):
    python -m dllmq lm_eval --model dllmq --model_args pretrained=tiny-llada-instruct,mc_num=32 ...

- `loglikelihood`: the Monte Carlo estimator of `dllmq.likelihood` (LLaDA's lm-eval
  `get_loglikelihood`, ML-GSAI/LLaDA eval_llada.py; Dream's from QDLM), the samples of many
  requests packed into full batches. Unlike upstream (one global RNG stream), each request's
  masks are drawn from its own generator seeded by (seed, its tokens): its estimate does not
  depend on the other requests of the call, their order, or the data-parallel split.
  `is_greedy` is the official `suffix_greedy_prediction` check when `greedy_check=True`, else
  False (the official default recommendation: no paper metric uses it).
- `loglikelihood_rolling` (WikiText perplexity): lm-eval's disjoint rolling windows, each
  window's continuation scored by the same estimator. The estimator is an ELBO, a lower bound
  on log p in expectation, so the perplexity it gives is an upper bound on the model's own
  (LLaDA reports perplexity the same way). The official LLaDA harness does not implement it.
- `generate_until`: `dllmq.sampling.generate` (LLaDA's or Dream's sampler, chosen from the
  model's `model_type`), text cut at the first EOS/EoT token, then at the first stop sequence.

Settings are model args (`EvalSettings`). Per request, in rising precedence: the defaults, the
paper's per-task settings for the request's task (`dllmq.tasks.lm_eval.paper_task_settings`:
mc_num 128 / MMLU 1, GSM8K 256/256/32, ...; off with task_settings=False), the task's
`generation_kwargs` (and lm-eval's `--gen_kwargs`), and last the model args the user gave
explicitly. `max_gen_toks` is `gen_length`; steps and block_length default to gen_length (the
paper's general-task setting). The chat template is applied only when lm-eval is told to
(`--apply_chat_template` / `simple_evaluate(apply_chat_template=True)`), never inferred from a
task name (the authors' wrapper did that). Unknown model args raise with the valid ones.

Data parallel: under `accelerate launch` each process loads the model on its device and lm-eval
splits requests by rank and gathers through `all_gather`/`gather_object` below.
Seeded: likelihood draws per request (above); generation draws from a fresh generator seeded
with `seed` per call, so the same settings give the same numbers on CPU (sampled generation,
temperature > 0, depends on the batch a prompt lands in; greedy decoding does not).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from . import load
from .likelihood import draw_masks, evaluate_masks, greedy_check
from .models import load_tokenizer
from .sampling import DreamSamplerConfig, LLaDASamplerConfig, generate

log = logging.getLogger(__name__)

NO_QUANT = "fp16"  # the recipe name meaning "leave the model as loaded"
SAMPLER_KEYS = ("gen_length", "steps", "block_length", "temperature", "remasking", "alg",
                "alg_temp", "eps", "top_p", "top_k")
LLADA_ONLY = ("block_length", "remasking")
DREAM_ONLY = ("alg", "alg_temp", "eps", "top_p", "top_k")


@dataclass(frozen=True)
class EvalSettings:
    """Everything besides the model that changes the numbers. None = the default described.

    mc_num: Monte Carlo samples per likelihood request (paper: 128; MMLU 1).
    mc_batch: the official estimator's group of stratified samples (its `batch_size`; None:
      min(mc_num, batch_size), which is the official 32 for mc_num 128 and 1 for mc_num 1).
    batch_size: rows per forward pass (likelihood samples of many requests packed together;
      prompts per generation batch).
    cfg_scale: unsupervised classifier-free guidance, likelihood and LLaDA sampling.
    greedy_check: run the official suffix-greedy check for `is_greedy` (slow; LAMBADA only).
    max_length: context length (None: the model's max_position); longer contexts are
      left-truncated with a warning, as lm-eval's HF model does.
    seed: seeds the torch.Generator of every call.
    Sampler (gen_length 256 = lm-eval's max_gen_toks default; steps and block_length None =
    gen_length; the rest None = the sampler's default): LLaDA uses block_length, remasking;
    Dream uses alg, alg_temp, eps, top_p, top_k.
    """

    mc_num: int = 128
    mc_batch: int | None = None
    batch_size: int = 32
    cfg_scale: float = 0.0
    greedy_check: bool = False
    max_length: int | None = None
    seed: int = 1234
    gen_length: int = 256
    steps: int | None = None
    block_length: int | None = None
    temperature: float = 0.0
    remasking: str | None = None
    alg: str | None = None
    alg_temp: float | None = None
    eps: float | None = None
    top_p: float | None = None
    top_k: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # lm-eval passes 0 for 0.0, "5" never (it casts)
            v = getattr(self, f.name)
            if v is not None and "float" in str(f.type) and isinstance(v, int) \
                    and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))
        if self.mc_num < 1 or self.batch_size < 1 or (self.mc_batch or 1) < 1:
            raise ValueError(f"mc_num={self.mc_num}, mc_batch={self.mc_batch} and batch_size="
                             f"{self.batch_size} must be >= 1")
        if self.cfg_scale < 0 or self.temperature < 0:
            raise ValueError("cfg_scale and temperature must be >= 0 (0 disables them)")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length={self.max_length} must be >= 2")
        if self.gen_length < 1:
            raise ValueError(f"gen_length={self.gen_length} must be >= 1")

    def replace(self, **changes: Any) -> EvalSettings:
        return dataclasses.replace(self, **changes)


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(EvalSettings))
CONSTRUCTOR_ARGS = ("pretrained", "recipe", "calib", "calib_samples", "calib_seqlen", "calib_seed",
                    "device", "dtype", "max_batch_size", "task_settings")


def sampler_config(model_type: str, s: EvalSettings) -> LLaDASamplerConfig | DreamSamplerConfig:
    """The sampler config for the model's architecture; settings of the other one must be unset."""
    if model_type == "llada":
        wrong = [k for k in DREAM_ONLY if getattr(s, k) is not None]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} apply to Dream's sampler, not LLaDA's; "
                             f"LLaDA takes gen_length, steps, block_length, temperature, "
                             "cfg_scale, remasking")
        kw: dict[str, Any] = dict(gen_length=s.gen_length, steps=s.steps or s.gen_length,
                                  block_length=s.block_length or s.gen_length,
                                  temperature=s.temperature, cfg_scale=s.cfg_scale)
        if s.remasking is not None:
            kw["remasking"] = s.remasking
        return LLaDASamplerConfig(**kw)
    wrong = [k for k in LLADA_ONLY if getattr(s, k) is not None]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} apply to LLaDA's sampler, not Dream's; Dream takes "
                         "gen_length, steps, temperature, alg, alg_temp, eps, top_p, top_k")
    if s.cfg_scale:
        raise ValueError("Dream's sampler has no classifier-free guidance; cfg_scale > 0 applies "
                         "to Dream's likelihood only: evaluate generation tasks with cfg_scale=0")
    kw = dict(max_new_tokens=s.gen_length, steps=s.steps or s.gen_length,
              temperature=s.temperature, alg_temp=s.alg_temp, top_p=s.top_p, top_k=s.top_k)
    if s.alg is not None:
        kw["alg"] = s.alg
    if s.eps is not None:
        kw["eps"] = s.eps
    return DreamSamplerConfig(**kw)


def request_settings(base: EvalSettings, gen_kwargs: dict[str, Any],
                     explicit: frozenset[str] = frozenset()) -> tuple[EvalSettings, list[str]]:
    """Per-request settings from a task's generation_kwargs: (settings, stop sequences).
    Settings named in `explicit` (the model args the user gave) are kept as they are."""
    kw = dict(gen_kwargs)
    until = kw.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    if "max_gen_toks" in kw:
        n = kw.pop("max_gen_toks")
        if "gen_length" in kw and kw["gen_length"] != n:
            raise ValueError(f"generation_kwargs give max_gen_toks={n} and gen_length="
                             f"{kw['gen_length']}; give one of them")
        kw["gen_length"] = n
    do_sample = kw.pop("do_sample", None)
    unknown = sorted(set(kw) - set(SAMPLER_KEYS) - {"cfg_scale"})
    if unknown:
        raise ValueError(f"generation_kwargs {unknown} are not understood by dllmq; valid: until, "
                         f"max_gen_toks, do_sample, cfg_scale, {', '.join(SAMPLER_KEYS)}")
    if do_sample is False:
        kw["temperature"] = 0.0
    elif do_sample and not kw.get("temperature", base.temperature):
        raise ValueError("do_sample=True with temperature 0 is contradictory; set temperature > 0")
    return base.replace(**{k: v for k, v in kw.items() if k not in explicit}), until


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The text before the earliest occurrence of any stop sequence."""
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def request_seed(seed: int, context: list[int], continuation: list[int]) -> int:
    """The seed of one likelihood request's mask draws: a hash of (seed, tokens), so a request's
    estimate does not depend on which other requests share the call, their order, the data
    parallel split or the limit."""
    h = hashlib.sha256(f"{seed}|{context}|{continuation}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return None if dtype == "auto" else dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} is unknown; use one of auto, {', '.join(names)}")
    return names[dtype]


def default_calib_source(name_or_path: str | None) -> str | None:
    """The shipped tiny models calibrate on the embedded corpus they were trained on (offline,
    and the text their tokenizer knows); other models on the recipe's own source (None)."""
    from .models.io import shipped_models

    return "embedded" if name_or_path is not None and str(name_or_path) in shipped_models() else None


def resolve_calibration(recipe: str, model_name: str | None = None,
                        override: Mapping[str, Any] | None = None,
                        max_position: int | None = None) -> dict[str, Any] | None:
    """The calibration a named recipe gets, resolved once: `{"source", "nsamples", "seqlen",
    "seed"}`, or None when the recipe needs none (NO_QUANT, RTN). This dict is what quantizes
    the model, so it is also what a stored cell is keyed by.

    The policy: the recipe's own (paper: 128 x 2048 WikiText-2, AWQ 128 x 512 Pile-val), the
    embedded corpus for a shipped model (`model_name`), then `override` (keys source, samples,
    seqlen, seed). Windows longer than the model's context (`max_position`) are cut to it."""
    if recipe == NO_QUANT:
        return None
    from .quant.api import needs_calibration, resolve_recipe
    from .quant.recipes import get_calibration

    _, configs = resolve_recipe(recipe)
    if not any(needs_calibration(c) for c in configs):
        return None
    r = get_calibration(recipe)  # the variant's own (QuaRot ":code": 4096-token windows)
    o = dict(override or {})
    source = o.get("source") or default_calib_source(model_name) or r.source
    seqlen = int(o.get("seqlen") or r.seqlen)
    if max_position is not None and seqlen > max_position:
        log.info("calibration windows cut from %d to the model's context %d", seqlen, max_position)
        seqlen = max_position
    return {"source": source, "nsamples": int(o.get("samples") or r.nsamples), "seqlen": seqlen,
            "seed": int(o.get("seed", 0))}


def quantize_model(model, tokenizer, recipe: str, calib: str | None = None,
                   nsamples: int | None = None, seqlen: int | None = None, seed: int = 0,
                   model_name: str | None = None):
    """Quantize in place with a named recipe (NO_QUANT: nothing), calibrated as
    `resolve_calibration` says. Returns the summary."""
    if recipe == NO_QUANT:
        return None
    from .data import calibration_set
    from .quant.api import quantize_

    spec = resolve_calibration(recipe, model_name,
                               {"source": calib, "samples": nsamples, "seqlen": seqlen,
                                "seed": seed}, model.config.max_position)
    data = None
    if spec is not None:
        data = calibration_set(tokenizer, spec["source"], spec["nsamples"], spec["seqlen"],
                               seed=spec["seed"])
    return quantize_(model, recipe, data)


@register_model("dllmq")
class DLLMEvalLM(LM):
    """An lm-eval LM over a dllmq model (LLaDA or Dream), quantized or not.

    Either `pretrained` (a shipped name, a local checkpoint or a Hub id; then `recipe` and
    the `calib*` args quantize it after loading) or a ready `model` + `tokenizer` (quantize
    it yourself with `dllmq.quant.quantize_`). `task_settings=False` turns off the paper's
    per-task settings (see the module docstring). Remaining keyword args: `EvalSettings`.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        model=None,
        tokenizer=None,
        recipe: str = NO_QUANT,
        calib: str | None = None,
        calib_samples: int | None = None,
        calib_seqlen: int | None = None,
        calib_seed: int = 0,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        max_batch_size: int | None = None,
        task_settings: bool = True,
        **settings: Any,
    ):
        super().__init__()
        unknown = sorted(set(settings) - set(SETTING_NAMES))
        if unknown:
            raise TypeError(f"unknown dllmq model arg(s) {', '.join(unknown)}; valid: "
                            f"{', '.join(CONSTRUCTOR_ARGS + SETTING_NAMES)}")
        if isinstance(settings.get("batch_size"), str):
            if not settings["batch_size"].isdigit():
                raise ValueError(f"batch_size={settings['batch_size']!r}: dllmq takes an integer "
                                 "batch size (no auto sizing)")
            settings["batch_size"] = int(settings["batch_size"])
        if max_batch_size is not None:
            raise ValueError("max_batch_size applies to batch_size=auto, which dllmq does not do; "
                             "give an integer batch_size")
        self.settings = EvalSettings(**settings)
        self.explicit = frozenset(settings)  # given by the user: no task setting overrides these
        self.task_settings = task_settings
        self._per_task: dict[str | None, EvalSettings] = {}
        self.accelerator = self._distributed()
        if self.accelerator is not None:  # its CPU device prints as cpu:0, which safetensors rejects
            d = self.accelerator.device
            device = "cpu" if d.type == "cpu" else str(d)
        if device is not None and torch.device(device).type == "cuda" \
                and not torch.cuda.is_available():
            raise ValueError(f"device {device} was asked for (lm-eval's CLI default is cuda:0) but "
                             "CUDA is not available; pass --device cpu")
        if (model is None) == (pretrained is None):
            raise ValueError("give either pretrained=<name or path> or model=<DLLM> (with "
                             "tokenizer=...), not both or neither")
        if model is None:
            model = load(pretrained, device=device, dtype=parse_dtype(dtype))
            tokenizer = tokenizer or load_tokenizer(pretrained)
            quantize_model(model, tokenizer, recipe, calib, calib_samples, calib_seqlen,
                           seed=calib_seed, model_name=pretrained)
        else:
            if recipe != NO_QUANT:
                raise ValueError("recipe applies with pretrained=...; quantize a model object "
                                 "yourself with dllmq.quant.quantize_ before passing it")
            if tokenizer is None:
                raise ValueError("model=... needs tokenizer=... as well")
            if device is not None:
                model = model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.pretrained = pretrained
        self.max_length = self.settings.max_length or model.config.max_position
        # fail now, not after an hour of likelihoods: the sampler settings must be valid
        check_sampler(model.config.model_type, self.settings)

    # ---- set-up ----------------------------------------------------------------------
    def _distributed(self):
        """An Accelerator when launched with several processes (`accelerate launch`)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        from accelerate import Accelerator

        acc = Accelerator()
        self._rank, self._world_size = acc.process_index, acc.num_processes
        log.info("data parallel: rank %d of %d on %s", self._rank, self._world_size, acc.device)
        return acc

    def with_settings(self, **changes: Any) -> DLLMEvalLM:
        """A copy sharing the model and tokenizer, with some settings changed."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.settings = self.settings.replace(**changes)
        new.explicit = self.explicit | frozenset(changes)
        new._per_task = {}
        new.max_length = new.settings.max_length or self.model.config.max_position
        check_sampler(self.model.config.model_type, new.settings)
        return new

    # ---- lm-eval plumbing -----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def eot_token_id(self) -> int:
        return self.model.config.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        c = self.model.config
        return c.bos_token_id if c.bos_token_id is not None else c.eos_token_id

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or "dllmq").replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        template = getattr(self.tokenizer, "chat_template", None)
        if chat_template and not template:
            raise ValueError(f"--apply_chat_template was given but tokenizer {self.tokenizer_name} "
                             "has no chat template; drop the flag (base models)")
        return template

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def gather_object(self, obj, dst: int = 0):
        if self.accelerator is None:
            return [obj]
        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # ---- tokenisation -----------------------------------------------------------------
    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids; special tokens (BOS) added as the tokenizer does, unless the text already
        starts with BOS (chat-templated prompts) or add_special_tokens says otherwise."""
        if add_special_tokens is None:
            bos = getattr(self.tokenizer, "bos_token", None)
            add_special_tokens = not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split (trailing context spaces move to the continuation; the whole string
        is encoded and the context's tokens cut off), as LLaDA's eval_llada.py `_encode_pair`."""
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        cont = whole[len(ctx):]
        if whole[:len(ctx)] != ctx:
            raise ValueError(f"the tokenizer merges context and continuation across "
                             f"{context[-20:]!r} | {continuation[:20]!r}; cannot split the request")
        if not ctx:
            ctx = [self.prefix_token_id]
        if not cont:
            raise ValueError(f"continuation {continuation!r} encodes to no tokens")
        return ctx, cont

    def _fit(self, ctx: list[int], cont: list[int]) -> list[int]:
        if len(cont) >= self.max_length:
            raise ValueError(f"a continuation of {len(cont)} tokens does not fit the context of "
                             f"{self.max_length}; raise max_length or shorten the task's targets")
        room = self.max_length - len(cont)
        return ctx[-room:] if len(ctx) > room else ctx

    def settings_for(self, task_name: str | None) -> EvalSettings:
        """The settings for one task's requests: the paper's per-task settings (Appendix A,
        `dllmq.tasks.lm_eval.paper_task_settings`: mc_num, or gen_length/steps/block_length)
        where the task has them and `task_settings` is on, except for settings given
        explicitly as model args, which always win."""
        if task_name not in self._per_task:
            s = self.settings
            if self.task_settings and task_name:
                from .tasks.lm_eval import UnknownTaskError, paper_task_settings

                try:
                    fixed = paper_task_settings(task_name).model_settings(
                        self.model.config.model_type)
                except UnknownTaskError:
                    fixed = {}  # not a paper task: the model's settings as given
                fixed = {k: v for k, v in fixed.items() if k not in self.explicit}
                if fixed:
                    log.info("task %s: paper settings %s", task_name, fixed)
                    s = s.replace(**fixed)
            self._per_task[task_name] = s
        return self._per_task[task_name]

    # ---- the three request types ----------------------------------------------------
    def _mc_loglikelihood(self, pairs: list[tuple[list[int], list[int]]], desc: str,
                          disable_tqdm: bool = False,
                          settings: list[EvalSettings] | None = None) -> list[float]:
        """`dllmq.likelihood`'s estimator (draws per request from `request_seed` with that
        request's mc_num, then all samples packed into batches of batch_size rows); contexts
        left-truncated to fit."""
        s = self.settings
        per = settings or [s] * len(pairs)
        estimator = "dream" if self.model.config.model_type == "Dream" else "llada"
        if estimator == "dream":
            # QDLM's dream_base.py `_encode_pair` appends EOS to every continuation; its forward
            # process never masks a sequence's last position, so EOS is what goes unscored.
            # Without it the last continuation token would never be scored (a one-token answer
            # would score 0 whatever it is).
            eos = self.model.config.eos_token_id
            pairs = [(ctx, [*cont, eos]) for ctx, cont in pairs]
        fitted = [(self._fit(ctx, cont), cont) for ctx, cont in pairs]
        truncated = sum(len(f) < len(c) for (f, _), (c, _) in zip(fitted, pairs, strict=True))
        if truncated:
            log.warning("%d of %d contexts left-truncated to fit max_length %d", truncated,
                        len(pairs), self.max_length)
        out: list[float] = []
        chunk = 64  # requests per progress-bar step; each chunk's samples fill whole batches
        bar = tqdm(total=len(fitted), desc=desc, disable=disable_tqdm or self.rank != 0)
        for i in range(0, len(fitted), chunk):
            part = fitted[i:i + chunk]
            draws = [draw_masks(len(c), len(t), r.mc_num, r.mc_batch or min(r.mc_num, r.batch_size),
                                torch.Generator().manual_seed(request_seed(r.seed, c, t)),
                                estimator) for (c, t), r in zip(part, per[i:i + chunk], strict=True)]
            out.extend(evaluate_masks(self.model, part, draws, s.cfg_scale, s.batch_size))
            bar.update(len(part))
        bar.close()
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*r.args) for r in requests]
        lls = self._mc_loglikelihood(pairs, "dllmq loglikelihood", disable_tqdm,
                                     [self.settings_for(_task(r)) for r in requests])
        if not self.settings.greedy_check:
            return [(ll, False) for ll in lls]
        greedy = greedy_check(self.model, [(self._fit(c, t), t) for c, t in pairs],
                              self.settings.cfg_scale)
        return list(zip(lls, greedy, strict=True))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        pairs, owner, per = [], [], []
        for i, r in enumerate(requests):
            (text,) = r.args
            tokens = self.tok_encode(text, add_special_tokens=False)
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length - 1, context_len=1)):  # ctx + cont <= max
                pairs.append((list(ctx), list(cont)))
                owner.append(i)
                per.append(self.settings_for(_task(r)))
        lls = self._mc_loglikelihood(pairs, "dllmq rolling ELBO", disable_tqdm, per)
        totals = [0.0] * len(requests)
        for i, ll in zip(owner, lls, strict=True):
            totals[i] += ll
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests grouped by their settings, batched by batch_size, each batch decoded with
        one generator draw sequence (padded prompts decode as they would alone)."""
        c = self.model.config
        stop_ids = {c.eos_token_id} | ({c.eot_token_id} if c.eot_token_id is not None else set())
        groups: dict[tuple, list[int]] = {}
        prepared = []
        for i, r in enumerate(requests):
            context, gen_kwargs = r.args
            s, until = request_settings(self.settings_for(_task(r)), gen_kwargs, self.explicit)
            cfg = sampler_config(c.model_type, s)
            room = min(self.max_length, c.max_position) - cfg.new_tokens
            if room < 1:
                raise ValueError(f"generation of {cfg.new_tokens} tokens leaves no room for a "
                                 f"prompt in the context of {min(self.max_length, c.max_position)}")
            ids = self.tok_encode(context)
            if len(ids) > room:
                log.warning("prompt of %d tokens left-truncated to %d", len(ids), room)
                ids = ids[-room:]
            prepared.append((ids, until))
            groups.setdefault((cfg,), []).append(i)
        out: list[str | None] = [None] * len(requests)
        gen = torch.Generator(self.device).manual_seed(self.settings.seed)
        bar = tqdm(total=len(requests), desc="dllmq generate_until",
                   disable=disable_tqdm or self.rank != 0)
        bs = self.settings.batch_size
        for (cfg,), idx in groups.items():
            idx = sorted(idx, key=lambda j: -len(prepared[j][0]))  # similar lengths together
            for k in range(0, len(idx), bs):
                batch = idx[k:k + bs]
                tokens = generate(self.model, [prepared[j][0] for j in batch], cfg,
                                  generator=gen).tokens.tolist()
                for j, toks in zip(batch, tokens, strict=True):
                    end = next((n for n, t in enumerate(toks) if t in stop_ids), len(toks))
                    text = self.tokenizer.decode(toks[:end], skip_special_tokens=True)
                    out[j] = cut_at_stops(text, prepared[j][1])
                    self.cache_hook.add_partial("generate_until", requests[j].args, out[j])
                bar.update(len(batch))
        bar.close()
        return out


def check_sampler(model_type: str, s: EvalSettings) -> None:
    """Sampler settings valid for the architecture. Dream's likelihood may use cfg_scale (the
    paper's Dream setting, CFG 1.0) while its sampler has none: that raises only when a
    generation request meets it, in `sampler_config`."""
    sampler_config(model_type, s.replace(cfg_scale=0.0) if model_type == "Dream" else s)


def _task(request) -> str | None:
    return getattr(request, "task_name", None)
