"""The checkpoint directory, the one thing colm commands exchange.

    config.json                     ColmConfig
    model.safetensors               weights (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)
    tokenizer.json                  only for a Hugging Face tokenizer (with its tokenizer_config.json
                                    and chat_template.jinja when it has them)
    colm_history.json               one entry per command that produced or changed this model
    README.md                       model card
    digests.json                    sha256 of each file above but the card, recorded as it was written

Opening a checkpoint checks the config against every tensor's name, shape and dtype, and the
index against the shard headers, and reports the first mismatch by name. Only safetensors are
read: no pickle is ever loaded. write_checkpoint writes into a directory, config.json last; whoever
publishes one wraps it in atomic_directory (a temporary directory renamed into place), once.

The writer hashes the weights as it writes them, so a later command records its input's sha256
in the history from digests.json instead of reading the whole input again.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import glob
import hashlib
import itertools
import json
import math
import mmap
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from colm_core.cache import process_alive
from colm_core.card import model_card
from colm_core.config import CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE, ColmConfig, read_json
from colm_core.errors import ColmError, ColmRuntimeError, OptionError
from colm_core.model import expected_shapes
from colm_core.strict_json import finite_json
from colm_core.tokenizer import TOKENIZER_FILES, load_tokenizer

HISTORY_FILE = "colm_history.json"
CARD_FILE = "README.md"
DIGESTS_FILE = "digests.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
FLOAT_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
DTYPE_ALIASES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SAFETENSORS_DTYPES = {
    **{v: k for k, v in FLOAT_DTYPES.items()},
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
DEFAULT_MAX_SHARD_BYTES = 256 * 2**20  # surgery holds about one shard: under 10% of a 1B fp32 model


def parse_dtype(name: str, choices: str = "float32, bfloat16, float16") -> torch.dtype:
    """A --dtype value (float32, bfloat16, float16, or fp32/bf16/fp16) as a torch dtype."""
    dtypes = {v: k for k, v in DTYPE_NAMES.items()} | DTYPE_ALIASES
    if name not in dtypes:
        raise OptionError("{dtype} {value}: choose one of {choices}", value=name, choices=choices)
    return dtypes[name]


@dataclass
class Checkpoint:
    """A validated checkpoint directory; tensors are read lazily, one at a time."""

    path: Path
    config: ColmConfig
    weight_map: dict[str, str]  # tensor name -> safetensors file name
    dtype: torch.dtype
    history: list[dict]
    digests: dict[str, str] = field(default_factory=dict)  # file name -> sha256 recorded when it was written

    def tokenizer(self):
        c = self.config
        return load_tokenizer(c.tokenizer, self.path, c.bos_token_id, c.eos_token_id)

    def tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) one at a time, in the order asked; each tensor is its own memory."""
        names = list(self.weight_map) if names is None else list(names)
        readers: dict[str, SafetensorsReader] = {}
        with contextlib.ExitStack() as stack:
            for name in names:
                file = self.weight_map[name]
                if file not in readers:
                    readers[file] = stack.enter_context(SafetensorsReader(self.path / file))
                yield name, readers[file].get_tensor(name)

    def stored(self, names: Iterable[str]) -> Iterator[tuple[str, StoredTensor]]:
        """Yield (name, where its bytes lie) in the order asked: what write_weights copies without a tensor."""
        headers: dict[str, tuple[dict, int]] = {}
        for name in names:
            file = self.weight_map[name]
            if file not in headers:
                with SafetensorsReader(self.path / file) as reader:
                    headers[file] = reader.header, reader.data_start
            header, data_start = headers[file]
            info = header[name]
            yield (
                name,
                StoredTensor(
                    self.path / file,
                    data_start + info["data_offsets"][0],
                    tuple(info["shape"]),
                    SAFETENSORS_DTYPES[info["dtype"]],
                ),
            )

    @property
    def files(self) -> list[Path]:
        return [self.path / f for f in sorted(set(self.weight_map.values()))]

    def needed_files(self) -> list[str]:
        """Every file the checkpoint is read from: config, index, weights, tokenizer and history files
        (what its digests must cover; not the card, which `colm push` regenerates)."""
        kept = [CONFIG_FILE, INDEX_FILE, *TOKENIZER_FILES, HISTORY_FILE]
        return sorted({f.name for f in self.files} | {name for name in kept if (self.path / name).is_file()})


@dataclass(frozen=True)
class StoredTensor:
    """A tensor's bytes where they lie in a safetensors file. Surgery copies most tensors unchanged, and
    copying their bytes in chunks needs neither a tensor's memory nor its page faults."""

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class SafetensorsReader:
    """Reads a safetensors file's tensors with plain reads into fresh memory.

    safe_open maps the whole file and returns tensors backed by the mapping: every page read stays
    resident in this process until the file is closed, so streaming a checkpoint through it grows
    the process to the size of what was read. Here a tensor's memory is freed with the tensor."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "rb")
        size = int.from_bytes(self.file.read(8), "little")
        self.header = json.loads(self.file.read(size))
        self.data_start = 8 + size

    def get_tensor(self, name: str) -> torch.Tensor:
        info = self.header[name]
        start, end = info["data_offsets"]
        tensor = torch.empty(info["shape"], dtype=SAFETENSORS_DTYPES[info["dtype"]])
        self.file.seek(self.data_start + start)
        if tensor.numel() and self.file.readinto(tensor.reshape(-1).view(torch.uint8).numpy()) != end - start:
            raise ColmError(f"{self.path} is truncated at tensor {name!r}; restore it from the source")
        return tensor

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) from a safetensors header, checking the file is whole."""
    try:
        with safe_open(path, framework="pt") as f:
            out = {}
            for name in f.keys():
                sl = f.get_slice(name)
                out[name] = (sl.get_dtype(), tuple(sl.get_shape()))
            return out
    except (SafetensorError, OSError, ValueError) as e:
        raise ColmError(
            f"{path} is truncated or not a safetensors file ({e}); restore it from the source checkpoint"
        ) from None


def open_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_dir():
        raise ColmError(f"{path} is not a directory; pass a colm checkpoint directory (create one with `colm init`)")
    if not (path / CONFIG_FILE).is_file():
        raise ColmError(f"{path} has no {CONFIG_FILE}: not a colm checkpoint (create one with `colm init`)")
    config = ColmConfig.load(path / CONFIG_FILE)

    if (path / INDEX_FILE).is_file():
        weight_map = read_index(path / INDEX_FILE, "restore it from the source")
    elif (path / WEIGHTS_FILE).is_file():
        weight_map = None
    else:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ColmError(
                f"{path / pickles[0]} is a pickle file, which colm never loads; convert the weights to safetensors"
            )
        raise ColmError(f"{path} has no {WEIGHTS_FILE} or {INDEX_FILE}; restore the weights from the source")

    headers: dict[str, tuple[str, tuple[int, ...]]] = {}
    if weight_map is None:
        headers = safetensors_header(path / WEIGHTS_FILE)
        weight_map = {name: WEIGHTS_FILE for name in headers}
    else:
        for file in sorted(set(weight_map.values())):
            if not (path / file).is_file():
                raise ColmError(f"{path / file} is missing (listed in {INDEX_FILE}); restore the shard")
            shard = safetensors_header(path / file)
            for name in shard:
                if weight_map.get(name) != file:
                    raise ColmError(
                        f"{path / file} holds {name!r}, which {INDEX_FILE} does not place there; "
                        "the index and shards disagree"
                    )
            headers.update(shard)
        for name, file in weight_map.items():
            if name not in headers:
                raise ColmError(f"{INDEX_FILE} places {name!r} in {file}, but that shard does not hold it")

    expected = expected_shapes(config)
    for name, shape in expected.items():
        if name not in headers:
            raise ColmError(f"{path}: tensor {name!r} is missing; config.json says the model has it")
        if headers[name][1] != shape:
            raise ColmError(
                f"{path}: tensor {name!r} has shape {list(headers[name][1])}, config.json implies {list(shape)}"
            )
    for name in headers:
        if name not in expected:
            raise ColmError(f"{path}: unexpected tensor {name!r}; config.json does not describe it")
    dtypes = {dt for dt, _ in headers.values()}
    names = {v: k for k, v in FLOAT_DTYPES.items()}
    if len(dtypes) != 1 or not dtypes <= set(names):
        raise ColmError(f"{path}: tensors must all share one of {sorted(names)} dtypes, found {sorted(dtypes)}")

    history = read_history(path / HISTORY_FILE) if (path / HISTORY_FILE).exists() else []
    return Checkpoint(path, config, weight_map, names[dtypes.pop()], history, read_digests(path))


def read_digests(path: Path) -> dict[str, str]:
    """The sha256 of each file recorded in DIGESTS_FILE; empty for a checkpoint written without one."""
    if not (path / DIGESTS_FILE).exists():
        return {}
    fix = "restore it from the source or delete it (the files are then hashed when needed)"
    data = read_json(path / DIGESTS_FILE, fix)
    digests = data.get("sha256") if isinstance(data, dict) else None
    if not isinstance(digests, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in digests.items()):
        raise ColmError(
            f'{path / DIGESTS_FILE}: not a valid digest list (expected {{"sha256": {{file: digest}}}}); {fix}'
        )
    for name in digests:
        if name != Path(name).name or name in ("", ".", ".."):
            raise ColmError(
                f"{path / DIGESTS_FILE} lists {name!r}, outside the checkpoint directory; it may only "
                f"name the checkpoint's own files: {fix}"
            )
    return digests


def read_index(path: Path, fix: str) -> dict[str, str]:
    """The weight map of a safetensors index: tensor name -> shard file, a plain name in the same directory."""
    index = read_json(path, fix)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ColmError(f'{path}: not a valid index (expected {{"weight_map": {{tensor: file}}}}); {fix}')
    for file in weight_map.values():
        if file != Path(file).name or file in ("", ".", ".."):
            raise ColmError(
                f"{path} places tensors in {file!r}, outside the directory; the index may only name "
                f"shard files beside it: {fix}"
            )
    return weight_map


def read_history(path: Path) -> list[dict]:
    history = read_json(path, "fix or delete it")
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        raise ColmError(f"{path}: expected a list of objects, one per command; fix or delete it")
    return history


def load(path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load a checkpoint as a CoLM (with .config and .tokenizer). Tensors are copied in one at a time."""
    from colm_core.model import CoLM

    ckpt = open_checkpoint(path)
    with torch.device(device or "cpu"):
        model = CoLM(ckpt.config, ckpt.tokenizer(), ckpt.history)
    model.to(dtype or ckpt.dtype)
    params = model.state_dict()
    with torch.no_grad():
        for name, tensor in ckpt.tensors():
            params[name].copy_(tensor)
    return model


def save(
    model,
    path: str | Path,
    *,
    force: bool = False,
    history: list[dict] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write a model as a checkpoint directory. `history` defaults to the model's own."""
    if history is None:
        history = model.history
    with atomic_directory(path, force) as tmp:
        write_checkpoint(
            tmp, model.config, model.state_dict().items(), model.tokenizer, history, max_shard_bytes=max_shard_bytes
        )
    return Path(path)


# --- writing -------------------------------------------------------------------------------


def check_output(path: str | Path, force: bool, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse an output that exists (without --force), or that overlaps an input (see refuse_overlap)."""
    path = Path(path)
    refuse_overlap(path, inputs)
    if path.exists() and not force:
        raise ColmError(f"{path} already exists; pass --force to replace it or choose another -o/--output")
    if path.exists() and not path.is_dir():
        raise ColmError(f"{path} exists and is not a directory; choose another -o/--output")
    if path.exists() and any(path.iterdir()) and not (path / CONFIG_FILE).is_file():
        raise ColmError(
            f"{path} is a non-empty directory that is not a checkpoint; even with --force colm "
            "only replaces checkpoints: choose another -o/--output"
        )
    return path


def refuse_overlap(output: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is an input, lies inside one, or contains one: writing it (and with --force
    replacing what is there) would change or delete what the command reads."""
    out = Path(output).resolve()
    for given in inputs:
        inp = Path(given).resolve()
        if out == inp or inp in out.parents:
            raise ColmError(f"output {output} is inside the input {given}; choose an output outside it")
        if out in inp.parents:
            raise ColmError(
                f"output {output} contains the input {given}, which writing it would replace; "
                "choose an output that does not hold the command's inputs"
            )


def temporary_sibling(path: Path, kind: str) -> Path:
    """A new hidden directory beside `path` named .NAME.KIND-PID-RANDOM: the pid tells a later run
    whether the process that made it is gone (sweep_stale_siblings). mkdtemp makes it private; it gets
    a normal directory's mode, as the umask says, since it is renamed into place as the output."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}-{os.getpid()}-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def sweep_stale_siblings(path: Path) -> None:
    """Remove the temporary directories that a killed run writing `path` left beside it (.NAME.tmp-PID-*,
    .NAME.old-PID-*). Only those of dead processes: a concurrent writer's are left alone. A run killed
    between atomic_directory's two renames left the only copy of `path` in its .old directory: that
    copy is put back first."""
    for kind in ("old", "tmp"):
        prefix = f".{path.name}.{kind}-"
        for stale in path.parent.glob(glob.escape(prefix) + "*"):
            pid = stale.name[len(prefix) :].split("-")[0]
            if stale.is_dir() and pid.isdigit() and not process_alive(int(pid)):
                if kind == "old" and (stale / path.name).exists() and not path.exists():
                    os.replace(stale / path.name, path)
                shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | Path, force: bool = False, inputs: Iterable[str | Path] = ()):
    """Yield a temporary directory beside `path`; rename it to `path` only if the block succeeds. The one
    way a command publishes its output, and where it is checked (check_output, against `inputs` too).

    With force, an existing `path` is replaced, and it is only removed after the new one is in place.
    An exception (Ctrl-C and SIGTERM included, see colm_cli.app.main) removes the temporary directory."""
    check_output(path, force, inputs)
    path = Path(os.path.abspath(path))  # `-o .` names the directory itself, whose siblings are in its parent
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_siblings(path)
    tmp = temporary_sibling(path, "tmp")
    try:
        yield tmp
        if not publish_directory(tmp, path, force):
            raise lost_race(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_directory(src: Path, path: Path, force: bool) -> bool:
    """Rename the finished directory src to `path`, or return False where another writer's `path` is there
    (without force, or put there between the two renames of force).

    With force, an existing `path` is moved aside into .NAME.old-PID-* first and removed only after the
    new one is in place: a kill between the two renames leaves it there, for sweep_stale_siblings to
    put back; an exception puts it back at once."""
    old = None
    try:
        if path.exists():
            if not force:
                return False
            old = temporary_sibling(path, "old")
            os.replace(path, old / path.name)
        return rename_unless_taken(src, path)
    except BaseException:
        if old is not None and not path.exists():  # interrupted between the two renames: put the original back
            os.replace(old / path.name, path)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def rename_unless_taken(src: Path, dst: Path) -> bool:
    """rename(2) the directory src to dst, or return False where dst is a non-empty directory: what a
    concurrent writer put there first (the rename replaces only an empty one)."""
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def lost_race(path: Path) -> ColmError:
    return ColmError(
        f"{path} appeared while this command was writing it (another command writing the same "
        "output?); the one there is kept: choose another -o/--output, or pass --force to replace it"
    )


def write_weights(
    directory: Path,
    tensors: Iterable[tuple[str, torch.Tensor | StoredTensor]],
    shapes: dict[str, tuple[int, ...]],
    max_shard_bytes: int,
) -> dict[str, str]:
    """Write tensors as one safetensors file, or as shards plus an index when they exceed max_shard_bytes;
    return the sha256 of each safetensors file written.

    Tensors may come from a generator, one at a time, in the order and with the shapes of `shapes`,
    all of one dtype; each is a torch.Tensor or a StoredTensor, whose bytes are copied from its file.
    With that layout known up front, each shard's header is written first and every tensor goes
    straight to its place in the file, hashed on the way: at most one tensor is held in memory
    (surgery on a large checkpoint needs little more than its largest new tensor), and no byte
    written is read back to hash it."""
    tensors = iter(tensors)
    first = next(tensors, None)
    dtype = first[1].dtype if first is not None else torch.float32
    tensors = itertools.chain([first] if first is not None else [], tensors)

    shards: list[dict[str, tuple[int, ...]]] = [{}]
    size = total = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tuple(shape)
        size += nbytes
        total += nbytes
    files = (
        [WEIGHTS_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )

    digests = {}
    with ThreadPoolExecutor(1) as hasher:
        for file, shard in zip(files, shards):
            header, offset = {}, 0
            for name, shape in shard.items():
                nbytes = math.prod(shape) * dtype.itemsize
                header[name] = {
                    "dtype": SAFETENSORS_NAMES[dtype],
                    "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes],
                }
                offset += nbytes
            meta = json.dumps({"__metadata__": {"format": "pt"}, **header}, separators=(",", ":")).encode()
            meta += b" " * (-len(meta) % 8)  # the data starts 8-byte aligned, as safetensors writes it
            digest = hashlib.sha256()
            with open(directory / file, "wb") as out:
                write_hashed(out, digest, len(meta).to_bytes(8, "little") + meta, hasher)
                for name, shape in shard.items():
                    got, tensor = next(tensors, (None, torch.empty(0)))
                    if got != name or tuple(tensor.shape) != shape or tensor.dtype != dtype:
                        raise ValueError(
                            f"write_weights expected {name} {list(shape)} {dtype}, "
                            f"got {got} {list(tensor.shape)} {tensor.dtype}"
                        )
                    if isinstance(tensor, StoredTensor):
                        copy_hashed(out, digest, tensor, hasher)
                        continue
                    tensor = tensor.detach().to("cpu").contiguous()
                    write_hashed(out, digest, tensor.reshape(-1).view(torch.uint8).numpy().data, hasher)
                    del tensor  # before the generator makes the next one: one tensor in memory at a time
            digests[file] = digest.hexdigest()
    extra = next(tensors, None)
    if extra is not None:
        raise ValueError(f"write_weights got {extra[0]}, which is not in the layout")

    if len(files) > 1:
        weight_map = {name: file for file, shard in zip(files, shards) for name in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return digests


def write_hashed(out, digest, data, hasher: ThreadPoolExecutor) -> None:
    """out.write(data) and digest.update(data) side by side: both release the GIL, so the hash (the
    slower of the two) runs on another core during the write instead of after it."""
    hashed = hasher.submit(digest.update, data)
    out.write(data)
    hashed.result()


def copy_hashed(out, digest, stored: StoredTensor, hasher: ThreadPoolExecutor) -> None:
    """Append a stored tensor's bytes to `out` and hash them, side by side: the kernel copies them (as a
    file copy does) while another thread hashes them from the page cache. Neither makes a tensor, so
    memory stays at one mapped chunk whatever the tensor's size."""
    out.flush()  # the copy writes at the file descriptor's position, behind the buffer's back
    with open(stored.path, "rb") as src:
        if os.fstat(src.fileno()).st_size < stored.offset + stored.nbytes:
            raise ColmError(f"{stored.path} is truncated; restore it from the source")
        hashed = hasher.submit(hash_range, digest, src.fileno(), stored.offset, stored.nbytes)
        copy_range(src, out, stored.offset, stored.nbytes)
        hashed.result()
    out.seek(0, os.SEEK_END)  # and the buffer learns where the file now ends


def copy_range(src, out, offset: int, nbytes: int) -> None:
    """Append src's bytes [offset, offset + nbytes) to out: in the kernel where the system can (Linux's
    copy_file_range), else by reads and writes."""
    done = 0
    if hasattr(os, "copy_file_range"):
        with contextlib.suppress(OSError):  # an old kernel across filesystems, or a filesystem without it
            while done < nbytes and (n := os.copy_file_range(src.fileno(), out.fileno(), nbytes - done, offset + done)):
                done += n
    src.seek(offset + done)
    while done < nbytes:
        data = src.read(min(1 << 24, nbytes - done))
        if not data:
            raise ColmError(f"{src.name} is truncated; restore it from the source")
        out.write(data)
        done += len(data)


def hash_range(digest, fd: int, offset: int, nbytes: int, chunk: int = 1 << 26) -> None:
    """digest.update with a file's bytes [offset, offset + nbytes), mapped one chunk at a time: no copy
    into this process, and only the chunk being hashed is resident."""
    end = offset + nbytes
    for base in range(offset - offset % mmap.ALLOCATIONGRANULARITY, end, chunk):  # chunk: a multiple of it
        with (
            mmap.mmap(fd, min(chunk, end - base), offset=base, access=mmap.ACCESS_READ) as mapped,
            memoryview(mapped) as view,
            view[max(offset - base, 0) :] as part,
        ):
            digest.update(part)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def write_checkpoint(
    directory: str | Path,
    config: ColmConfig,
    tensors: Iterable[tuple[str, torch.Tensor]],
    tokenizer,
    history: list[dict],
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> None:
    """Write a checkpoint's files into `directory` (made if missing), config.json last: the directory is a
    checkpoint only once it holds every file. Not atomic by itself: a new output is written inside
    atomic_directory. `tensors` come one at a time in the model's order (expected_shapes)."""
    directory = Path(directory)
    directory.mkdir(exist_ok=True)
    digests = write_weights(directory, tensors, expected_shapes(config), max_shard_bytes)
    tokenizer.save(directory)
    write_history(directory, history)
    # The small files (index, tokenizer, history) are hashed from disk: kilobytes. The card is left
    # out: `colm push` regenerates it. Only these: the directory may hold others (a training run's steps/).
    small = [directory / name for name in (INDEX_FILE, *TOKENIZER_FILES, HISTORY_FILE)]
    digests |= {f.name: file_sha256(f) for f in small if f.name not in digests and f.is_file()}
    config_text = config.to_json()
    digests[CONFIG_FILE] = hashlib.sha256(config_text.encode()).hexdigest()
    (directory / CARD_FILE).write_text(model_card(config, history))
    (directory / DIGESTS_FILE).write_text(json.dumps({"sha256": dict(sorted(digests.items()))}, indent=2) + "\n")
    write_last_file(directory / CONFIG_FILE, config_text.encode())


def write_last_file(path: Path, data: bytes) -> None:
    """Write the file that makes a directory a checkpoint (config.json), last and whole: a directory without
    it is no checkpoint, so no write cut short looks like one, and a kill in the middle of this write
    leaves no half-written config.json (it is written beside, then renamed into place)."""
    part = path.with_name(f".{path.name}.part")
    part.write_bytes(data)
    os.replace(part, path)


# --- provenance ------------------------------------------------------------------------------


def weights_digest(ckpt) -> str:
    """The weights as one sha256, derived from each safetensors file's: the sha256 of the lines
    "<file's sha256>  <file name>\\n" in file-name order, which is what `sha256sum *.safetensors |
    sha256sum` prints in the directory. A file's recorded digest is used where there is one; the
    others (Hugging Face directories, checkpoints from before digests.json) are read and hashed."""
    recorded = ckpt.digests if isinstance(ckpt, Checkpoint) else {}
    lines = "".join(f"{recorded.get(f.name) or file_sha256(f)}  {f.name}\n" for f in ckpt.files)
    return hashlib.sha256(lines.encode()).hexdigest()


def has_recorded_digests(ckpt) -> bool:
    return isinstance(ckpt, Checkpoint) and all(f.name in ckpt.digests for f in ckpt.files)


def verify_digests(ckpt: Checkpoint) -> dict[str, str]:
    """Hash every file digests.json lists and compare; a mismatch names the first file, in name order.
    Every file the checkpoint needs must be listed: one that is not could have changed unseen."""
    if not ckpt.digests:
        raise ColmError(
            f"{ckpt.path} has no {DIGESTS_FILE} (written before colm recorded digests), so there is "
            "nothing to verify against; omit --verify"
        )
    uncovered = [name for name in ckpt.needed_files() if name not in ckpt.digests]
    if uncovered:
        raise ColmRuntimeError(
            f"{ckpt.path / uncovered[0]} has no sha256 in {DIGESTS_FILE}, so it cannot be "
            "verified; restore the checkpoint (or its digests.json) from the source"
        )
    for name, recorded in sorted(ckpt.digests.items()):
        file = ckpt.path / name
        if not file.is_file():
            raise ColmRuntimeError(f"{file} is missing, but {DIGESTS_FILE} lists it; restore it from the source")
        if file_sha256(file) != recorded:
            raise ColmRuntimeError(
                f"{file} does not match its sha256 in {DIGESTS_FILE}: it changed after colm "
                "wrote it; restore it from the source"
            )
    return ckpt.digests


class BackgroundDigest:
    """weights_digest of an input without recorded digests, computed in a thread while the command
    does its work (hashlib releases the GIL), so that it adds little to a streaming command's time.
    write_history resolves it."""

    def __init__(self, ckpt: Checkpoint):
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(ckpt,), daemon=True)
        self._thread.start()

    def _run(self, ckpt: Checkpoint) -> None:
        try:
            self._digest = weights_digest(ckpt)
        except BaseException as e:  # re-raised in the caller's thread by result()
            self._error = e

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._digest


def run_as_colm() -> bool:
    """Whether this process is the `colm` command (the console script, or `python -m colm_cli`), whose
    command line the history records; not any other program's `__main__.py` that calls colm_core."""
    program = Path(sys.argv[0])
    return program.name == "colm" or program.name == "__main__.py" and program.parent.name == "colm_cli"


def history_entry(command: str, args: dict, inputs: Iterable[Checkpoint] = ()) -> dict:
    from colm_core import __version__

    return {
        "command": command,
        "argv": ["colm", *sys.argv[1:]] if run_as_colm() else None,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()},
        "colm_version": __version__,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "inputs": [
            {"path": str(c.path), "sha256": weights_digest(c) if has_recorded_digests(c) else BackgroundDigest(c)}
            for c in inputs
        ],
    }


def write_history(directory: Path, history: list[dict]) -> None:
    def resolve(value):
        if isinstance(value, BackgroundDigest):
            return value.result()
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    # strict JSON: a diverged run's NaN losses are written as null
    (directory / HISTORY_FILE).write_text(finite_json(history, indent=2, default=resolve) + "\n")


def default_output(base: str | Path, suffix: str) -> Path:
    """A new, non-clashing directory name derived from an input path: `ckpt-expand`, `ckpt-expand-2`, ..."""
    base = Path(base)
    stem = base.name.rstrip("/") or "colm"
    candidate = base.with_name(f"{stem}-{suffix}")
    n = 2
    while candidate.exists():
        candidate = base.with_name(f"{stem}-{suffix}-{n}")
        n += 1
    return candidate
