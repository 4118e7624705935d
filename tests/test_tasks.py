"""The embedded task suite: splits disjoint and deterministic, difficulties as declared, math
worked correctly, code canonical solutions pass (and mutants fail), the tokenizer and its chat
template."""

import json
import re
from collections import Counter

import pytest
from dllmq.tasks import build_suite, code_problems, math_problems, normalise, qa, write_suite
from dllmq.tasks.corpus import build_corpus
from dllmq.tasks.execution import check_completions
from dllmq.tasks.tokenizer import (
    BOS,
    EOS,
    EOT,
    MASK,
    SPECIAL_TOKENS,
    corpus_texts,
    train_bpe,
    train_tokenizer,
)

TEXT_FIELD = {"qa": "question", "math": "question", "code": "prompt"}


@pytest.fixture(scope="module")
def suite():
    return build_suite(0)


@pytest.fixture(scope="module")
def corpus(suite):
    return build_corpus(0, stdlib_chars=200_000, suite=suite)


@pytest.mark.parametrize("category", ["qa", "math", "code"])
def test_splits_disjoint_by_key_and_text(suite, category):
    splits = suite.items[category]
    field = TEXT_FIELD[category]
    train_keys = {it.key for it in splits["train"]}
    train_texts = {normalise(it.row[field]) for it in splits["train"]}
    for held in ("test", "fewshot"):
        assert not train_keys & {it.key for it in splits[held]}
        assert not train_texts & {normalise(it.row[field]) for it in splits[held]}
    assert not {it.key for it in splits["test"]} & {it.key for it in splits["fewshot"]}
    assert len({it.row["id"] for s in splits.values() for it in s}) == sum(map(len, splits.values()))


def test_corpus_holds_no_test_question(suite, corpus):
    asked = {normalise(m.group(1)) for d in corpus.pretrain
             for m in [re.match(r"Question: (.*)\nAnswer:", d, re.S)] if m}
    sft_prompts = {normalise(p.removeprefix("Complete the function.\n")) for p, _ in corpus.sft}
    code_prompts = {d[: d.index('"""\n', d.index('"""') + 3) + 4] for d in corpus.source("code")}
    assert len(asked) > 20000 and len(code_prompts) == len(suite.rows("code", "train"))
    seen = asked | sft_prompts
    for category in ("qa", "math", "code"):
        for row in suite.rows(category, "test") + suite.rows(category, "fewshot"):
            text = row[TEXT_FIELD[category]]
            assert normalise(text) not in seen
            assert text not in code_prompts


def test_qa_test_facts_are_stated_in_corpus(suite, corpus):
    world, docs = suite.world, corpus.source("facts")
    paragraph = {d.split(" ", 1)[0]: d for d in world.facts()}
    assert set(paragraph.values()) <= set(docs)
    for it in suite.items["qa"]["test"]:
        rel, subject = it.key
        gold = it.row["choices"][it.row["gold"]]
        if it.row["difficulty"] == 1:
            assert gold in paragraph[subject]
        else:   # 2-hop: subject -> home town -> answer, each hop stated
            town = world.people[subject][0]
            assert f"lives in {town}." in paragraph[subject] and gold in paragraph[town]
    variants = docs[len(paragraph):]
    assert len(variants) == 4 * len(paragraph) and len(set(variants)) > 0.9 * len(variants)
    for doc in variants:   # restated facts are the same facts
        name = doc.split(" ", 1)[0].removesuffix("'s")
        values = world.people.get(name) or world.towns[name]
        assert all(v in doc for v in values)


def test_same_seed_same_bytes_other_seed_differs(tmp_path, suite):
    a = write_suite(tmp_path / "a", suite=suite)
    b = write_suite(tmp_path / "b", seed=0)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert code_problems.generate(1, max_train_per_family=1)["test"][0].row != \
        suite.rows("code", "test")[0]
    assert math_problems.generate(1, n_train=50)["test"][0].row["question"] != \
        math_problems.generate(0, n_train=50)["test"][0].row["question"]
    assert qa.generate(1)[0].facts() != qa.generate(0)[0].facts()


def test_jsonl_schema(tmp_path, suite):
    write_suite(tmp_path, suite=suite)
    schema = {"qa": {"id", "question", "choices", "gold", "difficulty"},
              "math": {"id", "question", "answer", "target", "difficulty"},
              "code": {"id", "prompt", "entry_point", "test", "canonical_solution", "difficulty"}}
    for category, keys in schema.items():
        for split in ("train", "fewshot", "test"):
            rows = [json.loads(line) for line in (tmp_path / f"{category}_{split}.jsonl").open()]
            assert rows and all(set(r) == keys for r in rows)


def test_difficulty_distribution_as_declared(suite):
    qa_levels = [r["difficulty"] for r in suite.rows("qa", "test")]
    assert qa_levels[:4] == [1, 2, 1, 2] and Counter(qa_levels) == {1: 800, 2: 800}
    assert all(len(r["choices"]) == 4 and len(set(r["choices"])) == 4 for r in suite.rows("qa", "test"))
    math_levels = [r["difficulty"] for r in suite.rows("math", "test")]
    assert math_levels[:8] == [1, 2, 3, 4, 1, 2, 3, 4] and Counter(math_levels) == {d: 2500 for d in (1, 2, 3, 4)}
    code_levels = [r["difficulty"] for r in suite.rows("code", "test")]
    assert code_levels[:6] == [1, 2, 3, 1, 2, 3] and Counter(code_levels) == {d: 200 for d in (1, 2, 3)}
    for r in suite.rows("code", "test"):   # the declared level matches the body's shape
        body = r["canonical_solution"]
        loop, branch = re.search(r"^ +for ", body, re.M), re.search(r"^ +if ", body, re.M)
        assert bool(loop) == (r["difficulty"] == 3)
        assert r["difficulty"] != 2 or branch
        assert r["difficulty"] != 1 or (not branch and body.count("\n") == 1)


_LINE = re.compile(r"^(-?\d+) ([-+*/]) (\d+) = (-?\d+)$")


@pytest.mark.parametrize("split", ["train", "test", "fewshot"])
def test_math_worked_steps_are_correct(suite, split):
    for row in suite.rows("math", split):
        *steps, final = row["answer"].split("\n")
        assert len(steps) == row["difficulty"]
        for line in steps:
            a, op, b, c = _LINE.match(line).groups()
            a, b, c = int(a), int(b), int(c)
            assert c == {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] and 0 <= c <= 999
            assert op != "/" or a % b == 0
        assert final == f"#### {row['target']}" and steps[-1].endswith(f"= {row['target']}")


def test_code_canonical_pass_and_mutants_fail(suite):
    rows = suite.rows("code", "test")[:54]   # levels interleaved: every family appears
    assert {r["entry_point"] for r in rows} == {f.name for f in code_problems.FAMILIES}
    canonical = check_completions(rows, [r["canonical_solution"] for r in rows], workers=2)
    assert all(r.passed for r in canonical), [r.reason for r in canonical if not r.passed]

    def mutate(body):   # a parameter one larger (every use of the first non-zero number),
        first = re.search(r"(?<![\w.])[1-9]\d*", body)   # else the quoted letters rotated
        out = body if not first else re.sub(rf"(?<![\w.]){first.group()}(?!\d)",
                                            str(int(first.group()) + 1), body)
        if out == body:
            out = re.sub(r"'([a-z]+)'", lambda m: repr(m.group(1)[1:] + "z"), body)
        return out
    mutants = [mutate(r["canonical_solution"]) for r in rows]
    assert all(m != r["canonical_solution"] for m, r in zip(mutants, rows, strict=True))
    results = check_completions(rows, mutants, workers=2)
    assert not any(r.passed for r in results)


def test_code_test_variants_unseen_in_training(suite):
    train = {it.key for it in suite.items["code"]["train"]}
    test = [it.key for it in suite.items["code"]["test"]]
    assert len(set(test)) == len(test) and not train & set(test)
    assert len({k[0] for k in test}) == len(code_problems.FAMILIES)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, corpus):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(train_tokenizer(corpus, tmp_path_factory.mktemp("tok"),
                                                         vocab_size=2048))


def test_tokenizer_roundtrip_specials_and_chat_template(tokenizer, corpus, suite):
    tok = tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.mask_token) == (BOS, EOS, EOS, MASK)
    assert len(tok) == 2048
    samples = [corpus.pretrain[-1], suite.rows("code", "test")[0]["prompt"], "Ünïcode ✓ 12345\t\n"]
    for text in samples:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert tok.tokenize("1234") == ["1", "2", "3", "4"]   # digits one per token
    chat = [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "    return 1\n"}]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text == (f"{BOS}<|start_header_id|>user<|end_header_id|>\n\nWhere?{EOT}"
                    f"<|start_header_id|>assistant<|end_header_id|>\n\n    return 1\n{EOT}")
    prompt = tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok.encode(prompt, add_special_tokens=False)[:2] == [0, 4]   # specials stay whole


def test_tokenizer_training_is_deterministic(corpus):
    texts = corpus_texts(corpus)[::20]
    a, b = train_bpe(texts, 512), train_bpe(texts, 512)
    assert a.to_str() == b.to_str()
    assert train_bpe(texts[::-1][:500], 512).to_str() != a.to_str()


def test_prompt_and_answer_lengths_fit(tokenizer, suite):
    n = lambda s: len(tokenizer.encode(s, add_special_tokens=False))
    for split in ("train", "test"):
        math_rows, code_rows = suite.rows("math", split)[:4000], suite.rows("code", split)
        assert max(n("Question: " + r["question"] + "\nAnswer:") for r in math_rows) < 96
        assert max(n(r["answer"]) for r in math_rows) < 64
        assert max(n(r["prompt"]) for r in code_rows) < 96
        assert max(n(r["canonical_solution"]) for r in code_rows) < 64


def _digest(rows) -> str:
    import hashlib

    return hashlib.sha256("\n".join(json.dumps(r, sort_keys=True) for r in rows).encode()).hexdigest()[:16]


# the splits the shipped tiny models were trained on (and the held-out prefix the default run
# scores): growing a held-out split must never change them
TRAINED_ON = {("qa", "train"): "95792a0e87f52ae6", ("qa", "fewshot"): "15e15a400b003e53",
              ("math", "train"): "7855d16d1e3f53db", ("math", "fewshot"): "dea64d9949d5f8ad",
              ("code", "train"): "a6c06945cfe1c061", ("code", "fewshot"): "2b1c36fc90c285cc"}


def test_held_out_growth_leaves_training_splits_and_prefix_unchanged(suite):
    for (category, split), digest in TRAINED_ON.items():
        assert _digest(suite.rows(category, split)) == digest, (category, split)
    math_test = suite.rows("math", "test")
    assert len(math_test) >= 1000
    assert _digest(math_test[:400]) == "6faf0be130c08ed5"   # the 400 items of the first release
    assert Counter(r["difficulty"] for r in math_test) == {d: len(math_test) // 4 for d in (1, 2, 3, 4)}
    assert Counter(r["difficulty"] for r in math_test[400:440]) == {d: 10 for d in (1, 2, 3, 4)}
