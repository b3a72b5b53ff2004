"""ref.py OUTDIR SRC... - the independent reference of tests/tokenizer/test_tokenizer.sh.

Builds a corpus of at least 1 MB (this repository's sources and docs, plus prose in
several scripts, emoji, digits and whitespace runs made from a fixed seed), trains BPE
tokenizers on it with the `tokenizers` library -- byte-level: GPT-2 style (ByteLevel's own
split pattern), Llama-3 style (a Split regex with Unicode classes, ByteLevel without its
regex, ignore_merges), ByteLevel with add_prefix_space; SentencePiece style: Llama-2's
(Prepend and Replace normalizers, byte_fallback with <0xXX> tokens for the characters
past a 300-character alphabet, unk fused) and Mistral's (Metaspace, prepend first, split)
-- all with added special tokens, and writes OUTDIR/docs.bin
((u32 length, bytes) per document), OUTDIR/<name>.json and OUTDIR/<name>.ids ((u32
count, i32 ids) per document, encode(add_special_tokens=False)), and one line per
tokenizer with its single-thread MB/s."""
import os, random, struct, sys, time
from tokenizers import Tokenizer, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

out, srcs = sys.argv[1], sys.argv[2:]
rng = random.Random(1234)
docs = []
for path in srcs:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    for i in range(0, len(text), 4000):
        docs.append(text[i:i + 4000])
scripts = [(0x41, 0x7A), (0xC0, 0x17F), (0x391, 0x3C9), (0x410, 0x44F), (0x5D0, 0x5EA), (0x627, 0x64A),
           (0x905, 0x939), (0xE01, 0xE2E), (0x3041, 0x3096), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x1F600, 0x1F64F)]
specials = ["<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>"]
spaces = [" ", "  ", "\t", "\n", "\n\n", "   \n", "\r\n", "\u3000", "\u00a0", "    "]
while sum(len(d.encode()) for d in docs) < 1_300_000:
    words = []
    for _ in range(rng.randint(20, 300)):
        lo, hi = rng.choice(scripts)
        w = "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 9)))
        r = rng.random()
        if r < 0.1:
            w = str(rng.randint(0, 10 ** rng.randint(1, 9)))
        elif r < 0.15:
            w = rng.choice(["'s", "'ll", "don't", "I'M", "x'D", "...", "!?", "$(x)", "a_b", "\\n"])
        elif r < 0.17:
            w = rng.choice(specials)
        words.append(w)
        words.append(rng.choice(spaces) if rng.random() < 0.3 else " ")
    docs.append("".join(words))
with open(os.path.join(out, "docs.bin"), "wb") as f:
    for d in docs:
        b = d.encode("utf-8")
        f.write(struct.pack("<I", len(b)) + b)

def train(name, tok, sp=False, template=None):
    if sp:
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        tr = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<unk>"] + specials + ["<0x%02X>" % b for b in range(256)],
                                 limit_alphabet=300, show_progress=False)
    else:
        tok.decoder = decoders.ByteLevel()
        tr = trainers.BpeTrainer(vocab_size=3000, special_tokens=specials,
                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, tr)
    if template:  # the post-processor: special tokens around a text (add_special_tokens=True)
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(s, tok.token_to_id(s)) for s in specials if s in template])
        with open(os.path.join(out, name + ".sids"), "wb") as f:
            for d in docs:
                ids = tok.encode(d).ids
                f.write(struct.pack("<I", len(ids)) + struct.pack("<%di" % len(ids), *ids))
    tok.save(os.path.join(out, name + ".json"))
    t0 = time.perf_counter()
    encs = [tok.encode(d, add_special_tokens=False).ids for d in docs]
    dt = time.perf_counter() - t0
    with open(os.path.join(out, name + ".ids"), "wb") as f:
        for ids in encs:
            f.write(struct.pack("<I", len(ids)) + struct.pack("<%di" % len(ids), *ids))
    n = sum(len(d.encode()) for d in docs)
    print("%s: tokenizers %s, %d documents, %d bytes, %d tokens, single-thread %.2f MB/s" % (
        name, __import__("tokenizers").__version__, len(docs), n, sum(map(len, encs)), n / 1e6 / dt))

gpt2 = Tokenizer(models.BPE())
gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
train("gpt2", gpt2)
l3 = Tokenizer(models.BPE(ignore_merges=True))
pat = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
l3.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pat), behavior="isolated", invert=False),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
train("llama3", l3, template="<|begin_of_text|> $A <|eot_id|>")
rb = Tokenizer(models.BPE())
rb.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
train("prefix", rb)
l2 = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
l2.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
train("llama2", l2, sp=True)
ms = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
ms.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
train("mistral", ms, sp=True)
