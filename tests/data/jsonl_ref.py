"""Independent reference for zinc-data's JSONL instruction data (tests/data/test_jsonl.sh).

  jsonl_ref.py OUTDIR

Trains two small tokenizers with the `tokenizers` library (byte-level BPE with the chat
special tokens, and a SentencePiece-style one with <s> and </s>), each saved as a folder
with tokenizer.json and tokenizer_config.json (eos_token), writes JSONL datasets and, for
every case, the version-3 shard zinc-data must write byte for byte: conversations rendered
by the Hugging Face chat templates themselves (their Jinja source, run by jinja2), encoded
whole with add_special_tokens=False as apply_chat_template does; the loss mask from the
tokens' character offsets (a token is a target when its characters meet an assistant
reply and its end-of-turn token); prompt/completion as TRL tokenizes them (prompt with
special tokens, completion without, then eos); samples packed whole into rows of the
block size, padded with eos, longer ones truncated. Writes OUTDIR/cases.txt: one line
"name tokenizer template block input.jsonl expected.bin" per case.
"""
import json
import os
import random
import struct
import sys

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# The templates as the model repositories' tokenizer_config.json hold them.
TEMPLATES = {
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
              "'<|im_end|>' + '\\n'}}{% endfor %}",
    "qwen2": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
             "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
             "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}",
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
              "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
              "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
              "{{ content }}{% endfor %}",
    "llama2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
              "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
              "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
              "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
              "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
              "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
              "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
              "{% endfor %}",
}
END = {"chatml": "<|im_end|>", "qwen2": "<|im_end|>", "llama3": "<|eot_id|>", "llama2": " </s>"}

out = sys.argv[1]
rng = random.Random(5)
words = ("the model reads a shard of tokens and learns to answer questions about zinc , which trains "
         "transformers over many ranks with ZeRO ; résumé naïve Größe 東京 🙂 42 3.14 don't it's").split()


def sentence(lo=3, hi=25):
    s = " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))
    r = rng.random()
    if r < 0.2:
        s = "  " + s + "\n"
    elif r < 0.3:
        s = s + "\n\n- " + sentence(2, 5)
    return s


specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>"]
corpus = [sentence(5, 60) for _ in range(3000)]


def save(tok, name, eos):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    json.dump({"eos_token": {"content": eos, "special": True}, "bos_token": "<s>"},
              open(os.path.join(d, "tokenizer_config.json"), "w"))
    return d


bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
bpe.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                   special_tokens=[("<|begin_of_text|>", bpe.token_to_id("<|begin_of_text|>"))])
bpe_dir = save(bpe, "bpe", "<|endoftext|>")
sp = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
sp.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
sp.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                decoders.Strip(" ", 1, 0)])
sp.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=700, show_progress=False, limit_alphabet=200,
                                                   special_tokens=["<unk>"] + specials + ["<0x%02X>" % b for b in range(256)]))
sp_dir = save(sp, "sp", "</s>")
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)


def conversation(sysmsg):
    m = [{"role": "system", "content": sentence()}] if sysmsg else []
    for _ in range(rng.randint(1, 3)):
        m.append({"role": "user", "content": sentence()})
        m.append({"role": "assistant", "content": sentence()})
    return m


def chat(tok, tmpl, msgs):
    """ids and loss flags of a conversation, from the template's text and the token offsets."""
    text = env.from_string(TEMPLATES[tmpl]).render(messages=msgs, bos_token="<s>" if tmpl == "llama2" else
                                                   "<|begin_of_text|>", eos_token="</s>")
    enc = tok.encode(text, add_special_tokens=False)
    spans, cur = [], 0
    for m in msgs:
        if m["role"] != "assistant":
            continue
        c = m["content"] if tmpl in ("chatml", "qwen2") else m["content"].strip()
        needle = (" " + c if tmpl == "llama2" else c) + END[tmpl]
        at = text.find(needle, cur)
        assert at >= 0, (needle, text)
        spans.append((at, at + len(needle)))
        cur = at + len(needle)
    loss = [any(s < b and e > a for a, b in spans) for s, e in enc.offsets]
    return enc.ids, loss


def record(tok, tmpl, eos, r):
    if "messages" in r:
        return chat(tok, tmpl, r["messages"]), False
    if "prompt" in r:
        if tmpl:
            return chat(tok, tmpl, [{"role": "user", "content": r["prompt"]},
                                    {"role": "assistant", "content": r["completion"]}]), False
        p = tok.encode(r["prompt"]).ids
        c = tok.encode(r["completion"], add_special_tokens=False).ids + [eos]
        return (p + c, [False] * len(p) + [True] * len(c)), False
    if "input_ids" in r:
        lab = r.get("labels", r["input_ids"])
        return (list(r["input_ids"]), [x != -100 for x in lab]), False
    ids = tok.encode(r["text"]).ids + [eos]
    return (ids, [True] * len(ids)), True


def shard(path, tok, tmpl, block, recs):
    eos = tok.token_to_id("</s>" if tok is sp else "<|endoftext|>")
    toks, flags = [], []
    for r in recs:
        (ids, loss), text = record(tok, tmpl, eos, r)
        if block and not text:
            ids, loss = ids[:block], loss[:block]
            used = len(toks) % block
            if used and used + len(ids) > block:
                toks += [eos] * (block - used)
                flags += [2] + [0] * (block - used - 1)
        toks += ids
        flags += [(2 if i == 0 else 0) | (1 if l else 0) for i, l in enumerate(loss)]
    w = 4 if tok.get_vocab_size() > 65536 else 2
    hdr = [20240520, 3, len(toks), w, block] + [0] * 251
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *hdr))
        f.write(struct.pack("<%d%s" % (len(toks), "H" if w == 2 else "I"), *toks))
        f.write(bytes(flags))
    return len(toks), sum(1 for i, f in enumerate(flags) if f == 1)


def jsonl(name, recs):
    p = os.path.join(out, name + ".jsonl")
    with open(p, "w") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=rng.random() < 0.5) + "\n")
            if rng.random() < 0.05:
                f.write("\n")  # blank lines are skipped
    return p


convs = [{"messages": conversation(rng.random() < 0.5)} for _ in range(40)]
pcs = [{"prompt": sentence(), "completion": sentence()} for _ in range(30)]
texts = [{"text": sentence(20, 200)} for _ in range(10)]
pre = []
for _ in range(10):
    ids = [rng.randrange(3, bpe.get_vocab_size()) for _ in range(rng.randint(5, 40))]
    pre.append({"input_ids": ids, "labels": [-100 if i < len(ids) // 2 else x for i, x in enumerate(ids)]})
long_conv = [{"messages": [{"role": "user", "content": sentence(100, 150)},
                           {"role": "assistant", "content": sentence(100, 150)}]}]
cases = [
    ("chatml", bpe, bpe_dir, "chatml", 128, convs),
    ("qwen2", bpe, bpe_dir, "qwen2", 256, convs[:20]),
    ("llama3", bpe, bpe_dir, "llama3", 200, convs + long_conv),
    ("llama2", sp, sp_dir, "llama2", 256, convs),
    ("pc_chatml", bpe, bpe_dir, "chatml", 96, pcs),
    ("pc_plain", bpe, bpe_dir, "", 64, pcs + pre),
    ("mixed", bpe, bpe_dir, "llama3", 64, texts + convs[:10] + pcs[:10] + pre),
    ("unpacked", sp, sp_dir, "llama2", 0, convs[:10]),
]
with open(os.path.join(out, "cases.txt"), "w") as f:
    for name, tok, d, tmpl, block, recs in cases:
        exp = os.path.join(out, name + ".expected.bin")
        n, t = shard(exp, tok, tmpl, block, recs)
        f.write("%s %s %s %d %s %s\n" % (name, d, tmpl or "-", block, jsonl(name, recs), exp))
        print("%s: %d records, %d tokens, %d targets" % (name, len(recs), n, t))
