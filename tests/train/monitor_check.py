"""An independent reader of zinc's monitors, standard library only.

    monitor_check.py TB_DIR CSV_DIR METRICS.jsonl [--fp16] [--eval]

Reads every TensorBoard event file in TB_DIR in name order (as TensorBoard does), checking the TFRecord framing
(both masked crc32c), decoding the Event protobufs by hand (wire types, not a schema
library) and applying SessionLog START purges as TensorBoard does; reads the csv_monitor
files of CSV_DIR; and checks both against train.metrics_file: the same tags, one value per
sample count, the steps = the metrics lines' "samples", the values = theirs (float32 in
TensorBoard, the printed digits in the CSV). Exit 1 with the first difference.
"""
import csv
import glob
import json
import math
import os
import struct
import sys

# CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, bit by bit
_T = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    _T.append(c)


def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c = _T[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked(b):
    c = crc32c(b)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def varint(b, i):
    v = s = 0
    while True:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << s
        s += 7
        if not x & 0x80:
            return v, i


def fields(b):
    """(field number, wire type, value) of a message"""
    i, out = 0, []
    while i < len(b):
        k, i = varint(b, i)
        f, w = k >> 3, k & 7
        if w == 0:
            v, i = varint(b, i)
        elif w == 1:
            v = b[i:i + 8]
            i += 8
        elif w == 5:
            v = b[i:i + 4]
            i += 4
        elif w == 2:
            n, i = varint(b, i)
            v = b[i:i + n]
            i += n
        else:
            fail("wire type %d" % w)
        out.append((f, w, v))
    if i != len(b):
        fail("a message overruns its bytes")
    return out


def records(path):
    raw = open(path, "rb").read()
    i = 0
    while i < len(raw):
        if len(raw) - i < 12:
            fail("%s: a torn record header at %d" % (path, i))
        hdr = raw[i:i + 8]
        (n,) = struct.unpack("<Q", hdr)
        (hc,) = struct.unpack("<I", raw[i + 8:i + 12])
        if hc != masked(hdr):
            fail("%s: length crc at %d" % (path, i))
        data = raw[i + 12:i + 12 + n]
        (dc,) = struct.unpack("<I", raw[i + 12 + n:i + 16 + n])
        if len(data) != n or dc != masked(data):
            fail("%s: data crc at %d" % (path, i))
        yield data
        i += 16 + n


def read_tb(d):
    # in name order, as TensorBoard reads them (the time stamp after the prefix)
    files = sorted(glob.glob(os.path.join(d, "events.out.tfevents.*")),
                   key=lambda p: int(os.path.basename(p).split(".")[3]))
    if not files:
        fail("no event file in " + d)
    scalars = {}  # tag -> {step: value}
    for p in files:
        first = True
        for rec in records(p):
            ev = {"step": 0}
            for f, w, v in fields(rec):
                if f == 1 and w == 1:
                    ev["wall_time"] = struct.unpack("<d", v)[0]
                elif f == 2 and w == 0:
                    ev["step"] = v
                elif f == 3 and w == 2:
                    ev["file_version"] = v.decode()
                elif f == 5 and w == 2:
                    ev["summary"] = v
                elif f == 6 and w == 2:
                    ev["session_log"] = dict((ff, vv) for ff, _, vv in fields(v))
            if first:
                if ev.get("file_version") != "brain.Event:2":
                    fail("%s: first record is not file_version brain.Event:2" % p)
                if not ev.get("wall_time", 0) > 1e9:
                    fail("%s: no wall_time in the first record" % p)
                first = False
                continue
            if "session_log" in ev:
                if ev["session_log"].get(1) == 1:  # START: drop what came at or past its step
                    for t in scalars:
                        scalars[t] = {s: x for s, x in scalars[t].items() if s < ev["step"]}
                continue
            if "summary" not in ev:
                fail("%s: an event with neither summary nor session_log" % p)
            for f, w, v in fields(ev["summary"]):
                val = dict((ff, vv) for ff, _, vv in fields(v))
                tag = val[1].decode()
                x = struct.unpack("<f", val[2])[0]
                if ev["step"] in scalars.setdefault(tag, {}):
                    fail("tag %s: step %d twice" % (tag, ev["step"]))
                scalars[tag][ev["step"]] = x
    return scalars, len(files)


def read_csv(d):
    out = {}
    for p in glob.glob(os.path.join(d, "*.csv")):
        rows = list(csv.reader(open(p)))
        name = os.path.basename(p)[:-4]
        if not rows or rows[0][0] != "step" or len(rows[0]) != 2:
            fail("%s: the header is not step,NAME: %r" % (p, rows[:1]))
        steps = [int(r[0]) for r in rows[1:]]
        if len(set(steps)) != len(steps) or steps != sorted(steps):
            fail("%s: steps repeat or go back: %s" % (p, steps))
        out[name] = (rows[0][1], {int(r[0]): r[1] for r in rows[1:]})
    return out


def main():
    tb_dir, csv_dir, metrics = sys.argv[1:4]
    fp16 = "--fp16" in sys.argv
    lines = [json.loads(l) for l in open(metrics)]
    want = {
        "Train/Samples/train_loss": "loss",
        "Train/Samples/lr": "lr",
        "Train/Samples/grad_norm": "grad_norm",
        "Train/Samples/tokens_per_s": "tokens_per_s",
        "Train/Samples/step_ms": "step_ms",
        "Train/Samples/tflops": "model_tflops",
        "Train/Samples/model_state_bytes": "model_state_bytes",
        "Train/Samples/device_mem_peak_bytes": "device_mem_peak",
        "Train/Samples/comm_bytes": "comm_bytes",
        "Train/Samples/act_peak_bytes": "act_peak_bytes",
    }
    if fp16:
        want["Train/Samples/loss_scale"] = "loss_scale"
    if "--eval" in sys.argv:
        want["Train/Samples/eval_loss"] = "eval_loss"
    tb, nfiles = read_tb(tb_dir)
    cs = read_csv(csv_dir)
    for tag, key in want.items():
        ref = {l["samples"]: l[key] for l in lines if l.get(key) is not None}
        if not ref:
            fail("metrics file has no %s" % key)
        got = tb.get(tag)
        if got is None:
            fail("tensorboard has no tag %s (has %s)" % (tag, sorted(tb)))
        if sorted(got) != sorted(ref):
            fail("tensorboard %s steps %s, metrics samples %s" % (tag, sorted(got), sorted(ref)))
        # metrics_file prints these three with 3 decimals, the monitors keep every digit
        atol = 6e-4 if key in ("tokens_per_s", "step_ms", "model_tflops") else 0.0
        for s, v in ref.items():
            f32 = struct.unpack("<f", struct.pack("<f", v))[0]
            if got[s] != f32 and not math.isclose(got[s], f32, rel_tol=1e-6, abs_tol=atol):
                fail("tensorboard %s at %d: %r, metrics %r" % (tag, s, got[s], v))
        name = tag.replace("/", "_").replace(" ", "_")
        if name not in cs:
            fail("no csv file %s.csv (have %s)" % (name, sorted(cs)))
        header, rows = cs[name]
        if header != tag.split("/")[-1]:
            fail("%s.csv header %s" % (name, header))
        if sorted(rows) != sorted(ref):
            fail("csv %s steps %s, metrics samples %s" % (name, sorted(rows), sorted(ref)))
        for s, v in ref.items():
            if not math.isclose(float(rows[s]), v, rel_tol=1e-8, abs_tol=atol):
                fail("csv %s at %d: %s, metrics %r" % (name, s, rows[s], v))
    if not fp16 and "Train/Samples/loss_scale" in tb:
        fail("loss_scale logged without fp16")
    print("monitors: %d event file(s), %d tags, %d steps each, equal to the metrics file; csv %d files"
          % (nfiles, len(tb), len(lines), len(cs)))


main()
