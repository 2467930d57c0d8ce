"""Hostile checkpoint directories, made by the thousand from one good checkpoint.

Each mutation takes a copy of a valid checkpoint directory and a random generator and damages it
the way a bad disk, a bad download or an attacker would. `check_directory` opens the result the way
every command does (open the checkpoint, load its weights and tokenizer, describe it) and says how
that ended: "ok" or "clean" (a ColmError, which the CLI prints as one line); anything else raises.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def header_of(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def write_with_header(path: Path, header: dict, body: bytes) -> None:
    meta = json.dumps(header).encode()
    meta += b" " * (-len(meta) % 8)
    path.write_bytes(len(meta).to_bytes(8, "little") + meta + body)


def truncate(d: Path, rng: random.Random) -> str:
    f = d / WEIGHTS
    size = f.stat().st_size
    cut = rng.choice([0, 1, 7, 8, 9, rng.randrange(size)])
    os.truncate(f, cut)
    return f"truncated to {cut} bytes"


def bit_flip(d: Path, rng: random.Random) -> str:
    f = d / rng.choice([WEIGHTS, WEIGHTS, CONFIG])
    data = bytearray(f.read_bytes())
    # the header is where a flip changes meaning; the body is only numbers
    header_end = 8 + int.from_bytes(data[:8], "little") if f.name == WEIGHTS else len(data)
    flips = rng.randint(1, 4)
    for _ in range(flips):
        at = rng.randrange(min(header_end, len(data)))
        data[at] ^= 1 << rng.randrange(8)
    f.write_bytes(bytes(data))
    return f"{flips} bit(s) flipped in {f.name}"


def huge_header_size(d: Path, rng: random.Random) -> str:
    f = d / WEIGHTS
    data = f.read_bytes()
    claim = rng.choice([2**40, 2**63 - 1, 2**64 - 1, len(data) + 1, 2**31])
    f.write_bytes(claim.to_bytes(8, "little") + data[8:])
    return f"header claims {claim} bytes"


def huge_tensor(d: Path, rng: random.Random) -> str:
    f = d / WEIGHTS
    header, body = header_of(f)
    name = rng.choice([k for k in header if k != "__metadata__"])
    info = header[name]
    what = rng.choice(["shape", "offsets", "negative", "dtype"])
    if what == "shape":
        info["shape"] = [2**20, 2**20, 2**10]
    elif what == "offsets":
        info["data_offsets"] = [0, 2**42]
    elif what == "negative":
        info["shape"] = [-1] + info["shape"][1:]
    else:
        info["dtype"] = rng.choice(["F64", "I64", "U8", "BOOL", "F8_E4M3", "XYZ"])
    write_with_header(f, header, body)
    return f"tensor {name}: {what}"


def mismatched_index(d: Path, rng: random.Random) -> str:
    header, _ = header_of(d / WEIGHTS)
    names = [k for k in header if k != "__metadata__"]
    weight_map = {n: WEIGHTS for n in names}
    what = rng.choice(["missing shard", "dropped name", "extra name", "not a dict", "not json", "wrong file"])
    if what == "missing shard":
        weight_map[names[0]] = "model-00002-of-00002.safetensors"
    elif what == "dropped name":
        weight_map.pop(rng.choice(names))
    elif what == "extra name":
        weight_map["layers.99.attn.q.weight"] = WEIGHTS
    elif what == "wrong file":
        weight_map[names[0]] = "../" + WEIGHTS
    index = {"metadata": {}, "weight_map": weight_map}
    if what == "not a dict":
        index = {"weight_map": rng.choice([[1, 2], "x", 3, None])}
    text = json.dumps(index) if what != "not json" else '{"weight_map": {'
    (d / "model.safetensors.index.json").write_text(text)
    return f"index: {what}"


CONFIG_VALUES = [
    None,
    True,
    -1,
    0,
    2**63,
    10**400,
    1e308,
    float("nan"),
    "x",
    "",
    [],
    [1],
    [-3],
    ["a"],
    {},
    {"a": 1},
    [2**40],
    1.5,
    [0],
    [1.5],
]


def config_wrong_type(d: Path, rng: random.Random) -> str:
    config = json.loads((d / CONFIG).read_text())
    key = rng.choice(sorted(config))
    config[key] = rng.choice(CONFIG_VALUES)
    (d / CONFIG).write_text(json.dumps(config))  # NaN is written as bare NaN, which Python's json reads
    return f"config {key} = {config[key]!r}"


def config_not_an_object(d: Path, rng: random.Random) -> str:
    text = rng.choice(["[]", "null", "3", '"x"', "{", "", "\x00\x01", "{" * 100_000, '{"colm_format": 1, "a": 1e999}'])
    (d / CONFIG).write_text(text)
    return f"config.json is {text[:20]!r}"


def nan_weights(d: Path, rng: random.Random) -> str:
    from safetensors.torch import load_file, save_file

    tensors = load_file(d / WEIGHTS)
    name = rng.choice(sorted(tensors))
    tensors[name].view(-1)[rng.randrange(tensors[name].numel())] = rng.choice([float("nan"), float("inf")])
    save_file(tensors, d / WEIGHTS, metadata={"format": "pt"})
    (d / "digests.json").unlink()  # else only the digest check would notice
    return f"non-finite value in {name}"


def symlink_out(d: Path, rng: random.Random) -> str:
    target = rng.choice(["/etc/passwd", "/dev/zero", "/dev/null", "/proc/self/mem", "/nonexistent", "/", "..", str(d)])
    name = rng.choice([WEIGHTS, CONFIG, "colm_history.json", "digests.json"])
    (d / name).unlink()
    os.symlink(target, d / name)
    return f"{name} -> {target}"


def fifo(d: Path, rng: random.Random) -> str:
    name = rng.choice([WEIGHTS, CONFIG, "colm_history.json"])
    (d / name).unlink()
    os.mkfifo(d / name)  # reading it would block forever
    return f"{name} is a FIFO"


def bad_tokenizer(d: Path, rng: random.Random) -> str:
    config = json.loads((d / CONFIG).read_text())
    config["tokenizer"] = "tokenizer.json"
    (d / CONFIG).write_text(json.dumps(config))
    text = rng.choice(["not json", "{}", '{"model": {"type": "BPE"}}', "[1,2]", "\xff\xfe", '{"version": "1.0"'])
    (d / "tokenizer.json").write_text(text)
    return f"tokenizer.json is {text[:20]!r}"


def bad_side_file(d: Path, rng: random.Random) -> str:
    name = rng.choice(["colm_history.json", "digests.json"])
    text = rng.choice(
        [
            "not json",
            "[1",
            "{}",
            "[]",
            "null",
            '{"sha256": [1]}',
            '{"sha256": {"a": 1}}',
            "[" * 100_000,
            '[{"command": NaN}]',
        ]
    )
    (d / name).write_text(text)
    return f"{name} is {text[:20]!r}"


def pickle_weights(d: Path, rng: random.Random) -> str:
    (d / WEIGHTS).unlink()
    (d / rng.choice(["pytorch_model.bin", "model.pt", "weights.pkl"])).write_bytes(b"\x80\x04cos\nsystem\n.")
    return "pickle weights"


MUTATIONS: list[Callable[[Path, random.Random], str]] = [
    truncate,
    bit_flip,
    huge_header_size,
    huge_tensor,
    mismatched_index,
    config_wrong_type,
    config_not_an_object,
    nan_weights,
    symlink_out,
    fifo,
    bad_tokenizer,
    bad_side_file,
    pickle_weights,
]


def make_case(good: Path, where: Path, seed: int) -> tuple[Path, str]:
    """A damaged copy of `good` at `where`: one or two mutations chosen by `seed`."""
    rng = random.Random(seed)
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(good, where)
    done = []
    chosen = rng.sample(MUTATIONS, rng.choice([1, 1, 1, 2]))
    for mutation in sorted(chosen, key=lambda m: m in (symlink_out, fifo)):  # those last: a FIFO blocks a reader
        try:
            done.append(mutation(where, rng))
        except Exception:  # an earlier mutation left nothing to damage (e.g. no header to read)
            continue
    return where, "; ".join(done)


class Hang(Exception):
    pass


def address_space() -> int:
    """This process's virtual memory size in bytes."""
    return int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def check_directory(path: Path, seconds: int = 20, memory: int = 2 * 2**30) -> str:
    """Open, load and describe `path` as the commands do: "ok", or "clean" for a ColmError. Any other
    exception propagates; one that takes longer than `seconds` raises Hang, and one that would grow the
    process by more than `memory` bytes raises MemoryError (a limit on the address space, lifted after)."""
    from colm_core.card import model_card
    from colm_core.checkpoint import history_entry, load
    from colm_core.errors import ColmError
    from colm_core.inspect import describe

    def alarm(signum, frame):
        raise Hang(f"{path}: still reading after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    limits = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (address_space() + memory, limits[1]))
    signal.alarm(seconds)
    try:
        describe(path)
        model = load(path)
        model.tokenizer.encode("probe", add_special_tokens=True)
        history = model.history + [history_entry("probe", {})]  # what every writing command records
        model_card(model.config, history)
        return "ok"
    except ColmError:
        return "clean"
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, limits)
        signal.signal(signal.SIGALRM, previous)
