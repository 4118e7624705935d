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
- `generate_until`: `dllmq.sampling.generate` (LLaDA's or Dream's sampler, chosen by the
  model's family, `arch_spec(model_type).family`), text cut at the first EOS/EoT token, then
  at the first stop sequence.

Settings are model args (`EvalSettings`). Per request, in rising precedence (`task_defaults`
is the one place the dllmq layers are merged): the defaults; the task's `generation_kwargs`
(and lm-eval's `--gen_kwargs`); for a Dream model the paper's Dream generation settings (128
new tokens, top-p 0.95); the defaults the model brings for the task (its `dllmq_defaults.yaml`,
`model_defaults`); the paper's per-task settings of a paper task
(`dllmq.tasks.lm_eval.paper_task_settings`: mc_num 128 / MMLU 1, GSM8K 256/256/32, ...; Dream:
its generation settings again); and last the model args the user gave explicitly. The paper
layers are off with task_settings=False. `max_gen_toks` is `gen_length`; steps and
block_length default to gen_length (the paper's general-task setting). A context longer than
max_length is an error naming the task, unless `truncate=True` (then left-truncated, as
lm-eval's HF model does). The chat template is applied only when lm-eval is told to
(`--apply_chat_template` / `simple_evaluate(apply_chat_template=True)`), never inferred from a
task name (the authors' wrapper did that). Unknown model args raise with the valid ones.

Data parallel: under `accelerate launch` each process loads the model on its device and lm-eval
splits requests by rank and gathers through `all_gather`/`gather_object` below.
Seeded: likelihood draws per request (above); requests are batched only within a block of
`doc_block` documents (lm-eval's doc_id) and each block's generation draws from its own
generator seeded by (seed, task, block), so the same settings give the same numbers on CPU
and a document's result does not depend on the documents outside its block (item-range
shards, `for_docs`, are bit-identical to one run; the data-parallel split of requests by rank
is not: sampled generation there depends on the rank's blocks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from . import load
from .likelihood import draw_masks, evaluate_masks, greedy_check
from .models import arch_spec, load_tokenizer
from .sampling import DreamSamplerConfig, LLaDASamplerConfig, generate

log = logging.getLogger(__name__)

NO_QUANT = "fp16"  # the recipe name meaning "leave the model as loaded"
# What the request batching and seeding computes, in every stored cell key (dllmq.sweep): a
# change of it changes stored numbers, so it is bumped and old rows are never served as new.
# 2: batches and generation generators per block of `doc_block` documents (item-range shards).
HARNESS_REVISION = 2
# The sampler settings each family takes besides the shared gen_length, steps and temperature:
# the one statement of "Dream has no block_length / remasking" (and LLaDA no alg, top_p, ...).
FAMILY_SAMPLER_KEYS = {"llada": ("block_length", "remasking", "cfg_scale"),
                       "dream": ("alg", "alg_temp", "eps", "top_p", "top_k")}
SAMPLER_KEYS = ("gen_length", "steps", "temperature",
                *dict.fromkeys(k for keys in FAMILY_SAMPLER_KEYS.values() for k in keys))


def foreign_settings(family: str) -> tuple[str, ...]:
    """The sampler settings only other families' samplers take, which this family's refuses
    (Dream: block_length, remasking, cfg_scale; cfg_scale stays valid for Dream's likelihood)."""
    if family not in FAMILY_SAMPLER_KEYS:
        raise KeyError(f"unknown sampler family {family!r}; known: {', '.join(FAMILY_SAMPLER_KEYS)}")
    own = FAMILY_SAMPLER_KEYS[family]
    return tuple(k for f, keys in FAMILY_SAMPLER_KEYS.items() if f != family
                 for k in keys if k not in own)


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
    max_length: context length (None: the model's max_position).
    truncate: left-truncate contexts longer than max_length, as lm-eval's HF model does (with a
      warning); False (default): such a request is an error naming the task and the lengths.
    seed: seeds the likelihood draws (per request) and generation (per block of documents).
    doc_block: documents per block (lm-eval's doc_id // doc_block, per task): requests are
      batched only within a block and each block's generation draws from its own generator,
      so a document's result depends on its block only, never on the other documents of the
      call (what makes item-range shards of a multiple of doc_block bit-identical to one run).
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
    truncate: bool = False
    seed: int = 1234
    doc_block: int = 32
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
        if self.doc_block < 1:
            raise ValueError(f"doc_block={self.doc_block} must be >= 1")
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
                    "device", "dtype", "max_batch_size", "task_settings", "progress")


def sampler_config(model_type: str, s: EvalSettings) -> LLaDASamplerConfig | DreamSamplerConfig:
    """The sampler config for a model of this config `model_type`; settings only another
    family's sampler takes must be unset (`foreign_settings`)."""
    family = arch_spec(model_type).family
    wrong = [k for k in foreign_settings(family)
             if (s.cfg_scale > 0 if k == "cfg_scale" else getattr(s, k) is not None)]
    if family == "dream" and wrong == ["cfg_scale"]:
        raise ValueError("Dream's sampler has no classifier-free guidance; cfg_scale > 0 applies "
                         "to Dream's likelihood only: evaluate generation tasks with cfg_scale=0")
    if wrong:
        own = ("gen_length", "steps", "temperature", *FAMILY_SAMPLER_KEYS[family])
        raise ValueError(f"{', '.join(wrong)} apply to another sampler, not the {family} "
                         f"sampler of {model_type} models; it takes {', '.join(own)}")
    steps = s.steps or s.gen_length
    if family == "llada":
        kw: dict[str, Any] = dict(gen_length=s.gen_length, steps=steps,
                                  block_length=s.block_length or s.gen_length,
                                  temperature=s.temperature, cfg_scale=s.cfg_scale)
        if s.remasking is not None:
            kw["remasking"] = s.remasking
        return LLaDASamplerConfig(**kw)
    kw = dict(max_new_tokens=s.gen_length, steps=steps, temperature=s.temperature,
              alg_temp=s.alg_temp, top_p=s.top_p, top_k=s.top_k)
    if s.alg is not None:
        kw["alg"] = s.alg
    if s.eps is not None:
        kw["eps"] = s.eps
    return DreamSamplerConfig(**kw)


def task_defaults(model_type: str, task: str | None, paper: bool = True,
                  defaults: ModelDefaults | None = None) -> dict[str, Any]:
    """The settings a task's requests get from dllmq, above the task's own generation_kwargs
    and below the settings given explicitly, in rising precedence: with `paper` for the Dream
    family the paper's Dream generation settings (128 new tokens, top-p 0.95) for any task,
    the model's own per-task defaults (`ModelDefaults.tasks`), then with `paper` the paper's
    per-task settings of a paper task (`paper_task_settings(task).model_settings(model_type)`).
    This is the one place these are merged (DLLMEvalLM.settings_for uses it)."""
    from .tasks.lm_eval import UnknownTaskError, dream_generation_settings, paper_task_settings

    family, paper_task = {}, {}
    if paper and task:
        if arch_spec(model_type).family == "dream":
            family = dream_generation_settings()
        with contextlib.suppress(UnknownTaskError):  # not a paper task: none
            paper_task = paper_task_settings(task).model_settings(model_type)
    own = {k: v for k, v in (defaults or ModelDefaults()).tasks.get(task or "", {}).items()
           if k in SETTING_NAMES}
    return {**family, **own, **paper_task}


def request_settings(base: EvalSettings, gen_kwargs: dict[str, Any],
                     explicit: frozenset[str] = frozenset()) -> tuple[EvalSettings, list[str]]:
    """Per-request settings from a task's generation_kwargs: (settings, stop sequences).
    Settings named in `explicit` (the model args the user gave, and what `task_defaults`
    fixed for the task) are kept as they are."""
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


def block_seed(seed: int, task: str | None, block: int | None) -> int:
    """The seed of one document block's generation draws (`EvalSettings.doc_block`)."""
    h = hashlib.sha256(f"{seed}|{task}|{block}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return None if dtype == "auto" else dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} is unknown; use one of auto, {', '.join(names)}")
    return names[dtype]


CALIB_KEYS = ("source", "samples", "seqlen", "seed")
DEFAULTS_FILE = "dllmq_defaults.yaml"  # next to a model's config.json: the model's own defaults


@dataclass(frozen=True)
class ModelDefaults:
    """What a model brings besides its weights (its `dllmq_defaults.yaml`; the shipped models
    have one): the calibration it gets unless told otherwise (CALIB_KEYS) and settings per task
    name (EvalSettings names, and `apply_chat_template`, which `python -m dllmq eval` passes to
    lm-eval). Explicit settings always win over these."""

    calibration: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tasks: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


def model_defaults(name_or_path: str | os.PathLike | None) -> ModelDefaults:
    """The defaults of a shipped model or local checkpoint directory (none for a Hub id or a
    directory without `dllmq_defaults.yaml`). A malformed file is an error naming it."""
    from pathlib import Path

    import yaml

    from .models.io import resolve, shipped_models

    if name_or_path is None or not (str(name_or_path) in shipped_models()
                                    or Path(name_or_path).expanduser().is_dir()):
        return ModelDefaults()
    path = resolve(name_or_path) / DEFAULTS_FILE
    if not path.is_file():
        return ModelDefaults()
    raw = yaml.safe_load(path.read_text()) or {}
    fields = {f.name for f in dataclasses.fields(ModelDefaults)}
    ok = (isinstance(raw, dict) and set(raw) <= fields
          and isinstance(raw.get("calibration", {}), dict)
          and set(raw.get("calibration", {})) <= set(CALIB_KEYS)
          and isinstance(raw.get("tasks", {}), dict)
          and all(isinstance(v, dict) and set(v) <= {*SETTING_NAMES, "apply_chat_template"}
                  for v in raw.get("tasks", {}).values()))
    if not ok:
        raise ValueError(f"{path}: expected keys calibration ({', '.join(CALIB_KEYS)}) and tasks "
                         "({task: {setting: value}}, settings as EvalSettings names them)")
    return ModelDefaults(**raw)


def check_calibration_override(override: Mapping[str, Any] | None, where: str = "calib") -> None:
    """Raise ValueError (one line) unless `override` is a calibration override: keys of
    CALIB_KEYS (for every recipe) and/or recipe names (`w4a16g128-awq`, or one variant
    `w4a16g128-awq:code`) mapping to such keys (for that recipe only)."""
    from .quant.recipes import RECIPES

    if override is None:
        return
    if not isinstance(override, Mapping):
        raise ValueError(f"{where}: must map {', '.join(CALIB_KEYS)} or recipe names to values")
    for k, v in override.items():
        if k in CALIB_KEYS:
            continue
        if str(k).partition(":")[0] not in RECIPES:
            raise ValueError(f"{where}: {k!r} is neither a calibration key ({', '.join(CALIB_KEYS)}) "
                             "nor a recipe name")
        if not isinstance(v, Mapping) or not set(v) <= set(CALIB_KEYS):
            raise ValueError(f"{where}: {k}: must map {', '.join(CALIB_KEYS)} to values, got {v!r}")


def resolve_calibration(recipe: str, model_name: str | None = None,
                        override: Mapping[str, Any] | None = None,
                        max_position: int | None = None) -> dict[str, Any] | None:
    """The calibration a named recipe gets, resolved once: `{"source", "nsamples", "seqlen",
    "seed"}`, or None when the recipe needs none (NO_QUANT, RTN). This dict is what quantizes
    the model, so it is also what a stored cell is keyed by.

    The policy, each layer overriding the keys it gives: the recipe's own (paper: 128 x 2048
    WikiText-2, AWQ 128 x 512 Pile-val), the model's defaults (`model_defaults(model_name)`: the
    shipped tiny models calibrate on the embedded corpus they were trained on), the override's
    plain keys (source, samples, seqlen, seed: for every recipe, as `eval --calib` gives them),
    then its entry for the recipe (`{w4a16g128-awq: {samples: 64}}`, the base name, then the
    variant's full name `w4a16g128-awq:code`): a grid changes one recipe's calibration only on
    purpose. None values in the override are unset. Windows longer than the model's context
    (`max_position`) are cut to it."""
    if recipe == NO_QUANT:
        return None
    from .quant.api import needs_calibration, resolve_recipe
    from .quant.recipes import get_calibration

    _, configs = resolve_recipe(recipe)
    if not any(needs_calibration(c) for c in configs):
        return None
    check_calibration_override(override)
    base = recipe.partition(":")[0]
    r = get_calibration(recipe)  # the variant's own (QuaRot ":code": 4096-token windows)
    o = dict(override or {})
    layers = [{"source": r.source, "samples": r.nsamples, "seqlen": r.seqlen, "seed": 0},
              model_defaults(model_name).calibration,
              {k: v for k, v in o.items() if k in CALIB_KEYS},
              o.get(base) or {}, (o.get(recipe) or {}) if recipe != base else {}]
    c: dict[str, Any] = {}
    for layer in layers:
        c.update({k: v for k, v in layer.items() if v is not None})
    seqlen = int(c["seqlen"])
    if max_position is not None and seqlen > max_position:
        log.info("calibration windows cut from %d to the model's context %d", seqlen, max_position)
        seqlen = max_position
    return {"source": str(c["source"]), "nsamples": int(c["samples"]), "seqlen": seqlen,
            "seed": int(c["seed"])}


def quantize_model(model, tokenizer, recipe: str, calib: str | Mapping[str, Any] | None = None,
                   nsamples: int | None = None, seqlen: int | None = None, seed: int | None = None,
                   model_name: str | None = None):
    """Quantize in place with a named recipe (NO_QUANT: nothing), calibrated as
    `resolve_calibration` says; `calib` is a source name (with nsamples, seqlen, seed) or a
    whole override mapping as a grid's `calib` holds it. Returns the summary."""
    if recipe == NO_QUANT:
        return None
    from .data import calibration_set
    from .quant.api import quantize_

    if isinstance(calib, Mapping):
        if (nsamples, seqlen, seed) != (None, None, None):
            raise ValueError("give the calibration as one mapping or as source, nsamples, seqlen "
                             "and seed, not both")
        override = calib
    else:
        override = {"source": calib, "samples": nsamples, "seqlen": seqlen, "seed": seed}
    spec = resolve_calibration(recipe, model_name, override, model.config.max_position)
    data = None
    if spec is not None:
        data = calibration_set(tokenizer, spec["source"], spec["nsamples"], spec["seqlen"],
                               seed=spec["seed"])
    return quantize_(model, recipe, data)


def _timed(method):
    """A request method that adds the seconds it runs to `self.request_s`: the model's share of
    a cell's time, apart from lm-eval's own (building requests, scoring), as `dllmq.plan`
    estimates them."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.request_s += time.perf_counter() - t0
    return run


@register_model("dllmq")
class DLLMEvalLM(LM):
    """An lm-eval LM over a dllmq model (LLaDA or Dream), quantized or not.

    Either `pretrained` (a shipped name, a local checkpoint or a Hub id; then `recipe` and
    the `calib*` args quantize it after loading) or a ready `model` + `tokenizer` (quantize
    it yourself with `dllmq.quant.quantize_`). `task_settings=False` turns off the paper's
    per-task settings (see the module docstring). `progress=False` hides the per-request
    progress bars (for a caller that shows its own, such as the sweep; lm-eval's CLI shows them
    unless given `--model_args progress=False`). Remaining keyword args: `EvalSettings`.
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
        calib_seed: int | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        max_batch_size: int | None = None,
        task_settings: bool = True,
        progress: bool = True,
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
        self.progress = progress
        self._per_task: dict[str | None, tuple[EvalSettings, frozenset[str]]] = {}
        self.defaults = model_defaults(pretrained) if model is None else ModelDefaults()
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
        self.docs: tuple[int, int] | None = None  # `for_docs`: compute only these documents
        self.request_s = 0.0  # seconds in the request methods (`_timed`)
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
        new.request_s = 0.0
        new.max_length = new.settings.max_length or self.model.config.max_position
        check_sampler(self.model.config.model_type, new.settings)
        return new

    def for_docs(self, start: int, stop: int) -> DLLMEvalLM:
        """A copy that computes only the requests of documents start <= doc_id < stop (an
        item-range shard; both multiples of doc_block, or stop the task's end) and answers the
        others with placeholders (log-likelihood 0, empty text) that the caller drops. lm-eval
        still builds every request, so few-shot contexts are those of the whole task."""
        if start < 0 or stop <= start:
            raise ValueError(f"document range [{start}, {stop}) is empty")
        if start % self.settings.doc_block:
            raise ValueError(f"a shard starts at document {start}, not a multiple of doc_block "
                             f"{self.settings.doc_block}")
        new = self.with_settings()
        new.docs = (start, stop)
        return new

    def _blocks(self, requests) -> dict[tuple, list[int]]:
        """{(task, doc_id // doc_block): indices of its requests}, in order, for the requests
        this LM computes (all, or those in `docs`). A request without a doc_id (a direct
        call, not through lm-eval) is in block (task, None)."""
        out: dict[tuple, list[int]] = {}
        b = self.settings.doc_block
        for i, r in enumerate(requests):
            d = getattr(r, "doc_id", None)
            if self.docs is not None and (d is None or not self.docs[0] <= d < self.docs[1]):
                continue
            out.setdefault((_task(r), None if d is None else d // b), []).append(i)
        return out

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

    def _too_long(self, n: int, total: int, longest: int, tasks: Sequence[str | None],
                  what: str) -> None:
        """Raise unless `truncate` is set: n of total requests do not fit max_length."""
        if self.settings.truncate:
            return
        names = ", ".join(sorted({t for t in tasks if t})) or "the task"
        raise ValueError(f"{n} of {total} {what} of {names} exceed max_length {self.max_length} "
                         f"(longest {longest} tokens): lower num_fewshot or the generation length, "
                         "raise max_length, or set truncate=true to left-truncate them (scores "
                         "then differ from the untruncated task)")

    def settings_for(self, task_name: str | None) -> EvalSettings:
        """The settings for one task's requests: `task_defaults` (the model's own per-task
        defaults, and with `task_settings` on the paper's per-task settings, Appendix A) over
        the model args' defaults, except for settings given explicitly, which always win. The
        settings fixed here also win over the task's generation_kwargs (`request_settings`)."""
        if task_name not in self._per_task:
            fixed = task_defaults(self.model.config.model_type, task_name, self.task_settings,
                                  self.defaults)
            fixed = {k: v for k, v in fixed.items() if k not in self.explicit}
            if fixed:
                log.debug("task %s: settings %s", task_name, fixed)
            self._per_task[task_name] = (self.settings.replace(**fixed),
                                         self.explicit | frozenset(fixed))
        return self._per_task[task_name][0]

    def _kept(self, task_name: str | None) -> frozenset[str]:
        """The settings a task's generation_kwargs may not change (explicit or fixed)."""
        self.settings_for(task_name)
        return self._per_task[task_name][1]

    # ---- the three request types ----------------------------------------------------
    def _mc_loglikelihood(self, pairs: list[tuple[list[int], list[int]]], desc: str,
                          disable_tqdm: bool = False,
                          settings: list[EvalSettings] | None = None,
                          tasks: Sequence[str | None] = (),
                          blocks: Sequence[list[int]] | None = None) -> list[float]:
        """`dllmq.likelihood`'s estimator (draws per request from `request_seed` with that
        request's mc_num, then the samples of up to 64 requests of one block of `blocks`
        (lists of indices into `pairs`; None: one block) packed into batches of batch_size
        rows); contexts left-truncated to fit."""
        s = self.settings
        per = settings or [s] * len(pairs)
        estimator = self.model.spec.family  # the likelihood's mask draw: "llada" | "dream"
        if estimator == "dream":
            # QDLM's dream_base.py `_encode_pair` appends EOS to every continuation; its forward
            # process never masks a sequence's last position, so EOS is what goes unscored.
            # Without it the last continuation token would never be scored (a one-token answer
            # would score 0 whatever it is).
            eos = self.model.config.eos_token_id
            pairs = [(ctx, [*cont, eos]) for ctx, cont in pairs]
        fitted = [(self._fit(ctx, cont), cont) for ctx, cont in pairs]
        long = [len(c) + len(t) for (f, _), (c, t) in zip(fitted, pairs, strict=True)
                if len(f) < len(c)]
        if long:
            self._too_long(len(long), len(pairs), max(long), tasks, "contexts")
            log.warning("%d of %d contexts left-truncated to fit max_length %d", len(long),
                        len(pairs), self.max_length)
        out: list[float] = [0.0] * len(fitted)
        chunk = 64  # requests per progress-bar step; each chunk's samples fill whole batches
        blocks = [list(range(len(fitted)))] if blocks is None else blocks
        bar = tqdm(total=sum(map(len, blocks)), desc=desc,
                   disable=disable_tqdm or not self.progress or self.rank != 0)
        for block in blocks:  # batches never mix blocks: a block's numbers are its own
            for i in range(0, len(block), chunk):
                idx = block[i:i + chunk]
                part = [fitted[j] for j in idx]
                draws = [draw_masks(len(c), len(t), per[j].mc_num,
                                    per[j].mc_batch or min(per[j].mc_num, per[j].batch_size),
                                    torch.Generator().manual_seed(request_seed(per[j].seed, c, t)),
                                    estimator) for j, (c, t) in zip(idx, part, strict=True)]
                lls = evaluate_masks(self.model, part, draws, s.cfg_scale, s.batch_size)
                for j, ll in zip(idx, lls, strict=True):
                    out[j] = ll
                bar.update(len(part))
        bar.close()
        return out

    @_timed
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Per document block (`_blocks`); requests outside `docs` get (0.0, False)."""
        blocks = list(self._blocks(requests).values())
        sel = [i for b in blocks for i in b]
        at = {i: k for k, i in enumerate(sel)}
        reqs = [requests[i] for i in sel]
        pairs = [self.encode_pair(*r.args) for r in reqs]
        lls = self._mc_loglikelihood(pairs, "dllmq loglikelihood", disable_tqdm,
                                     [self.settings_for(_task(r)) for r in reqs],
                                     [_task(r) for r in reqs],
                                     [[at[i] for i in b] for b in blocks])
        greedy = [False] * len(pairs)
        if self.settings.greedy_check:
            for b in blocks:
                part = [pairs[at[i]] for i in b]
                for i, g in zip(b, greedy_check(self.model, [(self._fit(c, t), t) for c, t in part],
                                                self.settings.cfg_scale), strict=True):
                    greedy[at[i]] = g
        out = [(0.0, False)] * len(requests)
        for k, i in enumerate(sel):
            out[i] = (lls[k], greedy[k])
        return out

    @_timed
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        pairs, owner, per, blocks = [], [], [], []
        for block in self._blocks(requests).values():  # requests outside `docs` score 0.0
            blocks.append([])
            for i in block:
                r = requests[i]
                (text,) = r.args
                tokens = self.tok_encode(text, add_special_tokens=False)
                for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                        token_list=tokens, prefix_token=self.prefix_token_id,
                        max_seq_len=self.max_length - 1, context_len=1)):  # ctx + cont <= max
                    blocks[-1].append(len(pairs))
                    pairs.append((list(ctx), list(cont)))
                    owner.append(i)
                    per.append(self.settings_for(_task(r)))
        lls = self._mc_loglikelihood(pairs, "dllmq rolling ELBO", disable_tqdm, per,
                                     blocks=blocks)
        totals = [0.0] * len(requests)
        for i, ll in zip(owner, lls, strict=True):
            totals[i] += ll
        return totals

    @_timed
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests grouped by document block (`_blocks`) then by their settings, batched by
        batch_size within a group (similar lengths together), each block decoded from its own
        generator seeded with `block_seed` (padded prompts decode as they would alone), so a
        document's text depends on its block only. Requests outside `docs` get ""."""
        c = self.model.config
        stop_ids = {c.eos_token_id} | ({c.eot_token_id} if c.eot_token_id is not None else set())
        cfgs = []
        prepared = []
        for r in requests:
            context, gen_kwargs = r.args
            s, until = request_settings(self.settings_for(_task(r)), gen_kwargs,
                                        self._kept(_task(r)))
            cfg = sampler_config(c.model_type, s)
            room = min(self.max_length, c.max_position) - cfg.new_tokens
            if room < 1:
                raise ValueError(f"generation of {cfg.new_tokens} tokens leaves no room for a "
                                 f"prompt in the context of {min(self.max_length, c.max_position)}")
            ids = self.tok_encode(context)
            prepared.append((ids, until, room))
            cfgs.append(cfg)
        long = [len(ids) for ids, _, room in prepared if len(ids) > room]
        if long:
            self._too_long(len(long), len(requests), max(long), [_task(r) for r in requests],
                           "prompts (with the tokens to generate)")
            log.warning("%d prompts left-truncated to fit max_length", len(long))
        prepared = [(ids[-room:] if len(ids) > room else ids, until) for ids, until, room in prepared]
        out: list[str] = [""] * len(requests)
        blocks = self._blocks(requests)
        bar = tqdm(total=sum(map(len, blocks.values())), desc="dllmq generate_until",
                   disable=disable_tqdm or not self.progress or self.rank != 0)
        bs = self.settings.batch_size
        for (task, block), members in blocks.items():
            gen = torch.Generator(self.device).manual_seed(
                block_seed(self.settings.seed, task, block))
            groups: dict[Any, list[int]] = {}
            for j in members:
                groups.setdefault(cfgs[j], []).append(j)
            for cfg, idx in groups.items():
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
    """Sampler settings valid for the architecture. cfg_scale is dllmq's guidance strength in
    LLaDA's formula, `un + (cfg_scale + 1) * (cond - un)`: 0 is no guidance, 1.0 weighs the
    conditional direction twice (not "guidance off" as a Hugging Face guidance_scale of 1
    would be). Dream's likelihood takes it while Dream's sampler has no guidance, so for Dream
    a cfg_scale > 0 raises only when a generation request meets it, in `sampler_config`."""
    dream = arch_spec(model_type).family == "dream"
    sampler_config(model_type, s.replace(cfg_scale=0.0) if dream else s)


def _task(request) -> str | None:
    return getattr(request, "task_name", None)
