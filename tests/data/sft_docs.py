"""Builds the fine-tuning example's inputs (tests/data/test_finetune.sh) from this
repository's own documentation, nothing downloaded:

  sft_docs.py OUTDIR README.md bench/RESULTS.md ...

OUTDIR/tok: a byte-level BPE tokenizer trained by the `tokenizers` library on the files,
with ChatML's special tokens, and a tokenizer_config.json naming <|im_end|> as eos;
OUTDIR/train.jsonl and OUTDIR/valid.jsonl: one conversation per paragraph of the files —
the user asks about the paragraph's heading, the assistant answers with the paragraph
(every fifth held out).
"""
import json
import os
import re
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

out, files = sys.argv[1], sys.argv[2:]
texts = [open(f, encoding="utf-8").read() for f in files]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1000, show_progress=False,
                                                   special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
os.makedirs(os.path.join(out, "tok"), exist_ok=True)
tok.save(os.path.join(out, "tok", "tokenizer.json"))
json.dump({"eos_token": "<|im_end|>", "model_max_length": 256}, open(os.path.join(out, "tok", "tokenizer_config.json"), "w"))
convs = []
for name, text in zip(files, texts):
    head, k = None, 0
    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if block.startswith("#"):
            head, k = block.splitlines()[0].lstrip("#").strip(), 0
        elif head and block and not block.startswith("|") and not block.startswith("```"):
            k += 1
            answer = " ".join(block.split())[:300]
            convs.append({"messages": [
                {"role": "system", "content": "You answer questions about zinc's documentation."},
                {"role": "user", "content": "What does %s say under \"%s\" (part %d)?" % (os.path.basename(name), head, k)},
                {"role": "assistant", "content": answer}]})
with open(os.path.join(out, "train.jsonl"), "w") as t, open(os.path.join(out, "valid.jsonl"), "w") as v:
    for i, c in enumerate(convs):
        (v if i % 5 == 4 else t).write(json.dumps(c) + "\n")
print("%d conversations from %d files, a %d-token tokenizer" % (len(convs), len(files), tok.get_vocab_size()))
