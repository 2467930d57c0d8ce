"""`colm train`: the training loop (no parallelism inside: colm_core.parallel supplies it).

Trainer builds the run (checks, data, model, optimizer), runs the loop of steps and validations, and
saves step checkpoints; where they go, the lock and the publishing of OUT are colm_core.run_directory's,
the optimizer's file format colm_core.optimizer_state's. The data position of a run is its step number
(batches are a pure function of seed and step), so restoring model, optimizer, schedule step and RNG
state gives bitwise the same run.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from colm_core.checkpoint import parse_dtype
from colm_core.errors import ColmError, ColmRuntimeError, Interrupted, OptionError
from colm_core.optimizer_state import load_optimizer_state, save_optimizer_state
from colm_core.options import TrainOptions
from colm_core.run_directory import (
    OPTIMIZER_FILE,
    STATE_FILE,
    RunDirectory,
    check_resume,
    check_resume_data,
    find_resume,
    read_trainer_state,
)
from colm_core.strict_json import finite_json
from colm_kernels._dispatch import selected as kernels_backend


class TrainingInterrupted(Interrupted):
    pass


class NonFiniteLoss(ColmRuntimeError):
    pass


def check_for_model(opts: TrainOptions, cfg) -> None:
    """The limits that depend on the model (the options' own ranges are checked when they are made)."""
    n = cfg.n_chains
    if opts.seq_len > cfg.max_seq_len:
        raise OptionError(
            "{seq_len} {value} is above the model's maximum of {most} tokens", value=opts.seq_len, most=cfg.max_seq_len
        )
    if opts.freeze_chains >= n:
        raise ColmError(
            f"--freeze-chains {opts.freeze_chains}: this model has {n} chains, so at most "
            f"{n - 1} can be frozen (at least one must train)"
        )
    if opts.block_diagonal >= n:
        raise ColmError(
            f"--block-diagonal {opts.block_diagonal}: this model has {n} chains, so the later chains "
            f"start after at most chain {n - 1}"
        )
    if opts.block_diagonal and cfg.kv_share:
        raise ColmError(
            "--block-diagonal: in a CoLM-Air model every chain attends over chain 1's keys and values, "
            "so no chain can be cut off from chain 1; use a model made without --air"
        )
    scales = opts.scales(n)
    if opts.chain_weights is not None and len(opts.chain_weights) != len(scales):
        raise ColmError(
            f"--chain-weights has {len(opts.chain_weights)} values for the "
            f"{len(scales)} trained scales {scales}; give one per scale"
        )
    if opts.chain_weights is not None and not any(opts.chain_weights):
        raise OptionError("{chain_weights} are all 0: nothing would be trained; give at least one positive weight")


def cut_lateral_input(model, k: int) -> None:
    """Zero the weight blocks by which chains after k read chains 1..k, and keep them zero by masking their
    gradient: AdamW moves a zero weight with a zero gradient nowhere, weight decay included.

    A frozen chain stays bitwise unchanged: its blocks are left as they are, so one that does read
    chains 1..k is refused rather than silently changed."""
    from colm_core.model import chain_of, lateral_blocks

    def masked(columns: int):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            grad = grad.clone()
            grad[:, :columns] = 0
            return grad

        return hook

    names = {id(p): name for name, p in model.named_parameters()}
    blocks = lateral_blocks(model, k)
    for weight, columns in blocks:
        if not weight.requires_grad and weight[:, :columns].any():
            chain = chain_of(names[id(weight)])
            raise ColmError(
                f"--block-diagonal {k} would zero how chain {chain} reads chains 1..{k}, but "
                f"--freeze-chains keeps chain {chain} unchanged ({names[id(weight)]} reads them); "
                f"freeze fewer chains (at most {chain - 1}) or drop --block-diagonal"
            )
    with torch.no_grad():
        for weight, columns in blocks:
            if weight.requires_grad:
                weight[:, :columns] = 0
                weight.register_hook(masked(columns))


@dataclass
class RunState:
    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    last_loss: dict = field(default_factory=dict)
    val_loss: dict = field(default_factory=dict)


def torch_dtype_for(opts: TrainOptions, device: torch.device) -> torch.dtype:
    if opts.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = parse_dtype(opts.dtype, choices="auto, float32, bfloat16 or float16")
    if device.type == "cpu" and dtype != torch.float32:
        raise OptionError(
            "{dtype} {value}: training on CPU runs in float32; mixed precision needs a GPU", value=opts.dtype
        )
    return dtype


def train(
    ckpt_path: Path, out: Path, opts: TrainOptions, *, force: bool = False, resume: str | None = None, on_event=None
) -> Path:
    """Train the checkpoint at ckpt_path into a new checkpoint `out`; the input is never modified.

    on_event(kind, record) is called on rank 0 with kind in start, log, val, save, end.
    """
    from colm_core import parallel

    runtime = parallel.setup(opts.strategy, opts.device)
    clean = False
    try:
        result = Trainer(runtime, ckpt_path, out, opts, force, resume, on_event or (lambda kind, record: None)).run()
        clean = True
        return result
    except (TrainingInterrupted, NonFiniteLoss):
        clean = True  # every rank stopped at the same step (the decision is reduced over ranks)
        raise
    finally:
        runtime.close(clean)


class Trainer:
    """One run: __init__ builds it (checks, data, model, optimizer), run() prepares the run directory, loops
    over train_step with validate and save_step, and finish() publishes OUT."""

    def __init__(self, runtime, ckpt_path, out, opts, force, resume, on_event):
        from colm_core.checkpoint import check_output, history_entry, load, open_checkpoint, refuse_overlap
        from colm_core.data import data_digest, default_corpus_files, resolve_text_files, split_tokens, token_cache
        from colm_core.losses import MultiScaleLoss
        from colm_core.model import chain_of

        self.rt, self.opts, self.out, self.force = runtime, opts, Path(out), force
        self.emit = on_event if runtime.is_main else (lambda kind, record: None)
        self.run_dir = RunDirectory(self.out)  # rank 0's: the other ranks only read from it
        partial = self.run_dir.partial
        ckpt = open_checkpoint(ckpt_path)
        cfg = ckpt.config
        check_for_model(opts, cfg)
        self.compute_dtype = torch_dtype_for(opts, runtime.device)
        try:
            self.kernels = kernels_backend(runtime.device)  # COLM_KERNELS, recorded in the history
        except ValueError as e:
            raise ColmError(str(e)) from None
        n_rows = opts.batch_size // (runtime.world_size * opts.grad_accum)
        if n_rows * runtime.world_size * opts.grad_accum != opts.batch_size:
            raise ColmError(
                f"--batch-size {opts.batch_size} must be a multiple of processes x --grad-accum "
                f"({runtime.world_size} x {opts.grad_accum})"
            )
        self.micro_rows = n_rows

        if runtime.is_main:
            self.run_dir.lock_existing()
        self.resume_from = find_resume(resume, partial) if resume else None
        if self.resume_from is not None:
            check_resume(self.resume_from, opts)
        if self.resume_from is None and partial.exists() and not force and resume != "auto":
            raise ColmError(
                f"{partial} holds an unfinished run; continue it with --resume auto, or pass --force to start over"
            )
        files = resolve_text_files(opts.data) if opts.data else default_corpus_files()
        # As every command's output: not over an existing one without --force, and neither OUT nor OUT.partial
        # (which --force empties) may hold what the run reads.
        check_output(self.out, force, [ckpt.path, *files])
        refuse_overlap(partial, [ckpt.path, *files])
        runtime.barrier()  # every rank has checked the directories before rank 0 creates OUT.partial

        tokenizer = ckpt.tokenizer()
        self.data_sha256 = data_digest(files, tokenizer)
        if self.resume_from is not None:
            check_resume_data(self.resume_from, opts, self.data_sha256)
        tokens = token_cache(files, tokenizer, self.data_sha256)
        top = int(tokens.max()) if len(tokens) else 0
        if top >= cfg.vocab_size:  # the embedding lookup would fail mid-step
            raise ColmError(
                f"the tokenizer gives token id {top}, but the model's vocabulary has {cfg.vocab_size} "
                "tokens (config.json vocab_size); use a checkpoint whose vocabulary covers its tokenizer"
            )
        self.train_tokens, self.val_tokens = split_tokens(tokens, opts.seq_len, opts.val_fraction)

        # Master weights stay float32 whatever the stored dtype; the output is written back in it.
        self.store_dtype = ckpt.dtype
        source = self.resume_from / "model" if self.resume_from else ckpt.path
        if self.resume_from and open_checkpoint(source).config != cfg:
            raise ColmError(
                f"--resume {self.resume_from}: that run trained a model of another shape than "
                f"{ckpt.path}; resume with the input it started from"
            )
        self.model = load(source, device=runtime.device, dtype=torch.float32)
        broken = next((name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()), None)
        if broken is not None:  # training cannot repair it, and a lower --lr would not help
            raise ColmError(
                f"{source}: tensor {broken!r} holds NaN or infinite values: the input model is broken; "
                "restore it from its source or train another checkpoint"
            )
        self.model.history = ckpt.history
        for name, p in self.model.named_parameters():
            p.requires_grad_(chain_of(name) > opts.freeze_chains)
        if opts.block_diagonal:
            cut_lateral_input(self.model, opts.block_diagonal)
        self.scales = opts.scales(cfg.n_chains)
        self.weights = torch.tensor(opts.chain_weights or [1.0] * len(self.scales), device=runtime.device)
        loss_module = MultiScaleLoss(self.model, self.scales)
        if opts.compile:
            loss_module.compile()
        self.module = runtime.wrap(loss_module)
        self.optimizer = self.make_optimizer()
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=self.compute_dtype == torch.float16)
        self.history_entry = history_entry(
            "train",
            {
                "input": str(ckpt.path),
                **dataclasses.asdict(opts),
                "processes": runtime.world_size,
                "kernels": self.kernels,
            },
            inputs=[ckpt],
        )
        self.state = RunState()
        self.stop_requested = False

    def make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the trainable tensors only: frozen chains are not in it, so weight decay cannot touch them.
        Matrices decay; norm gains do not."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": self.opts.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        # Fused on CUDA: one kernel for every tensor, and it can skip a non-finite step without a host sync.
        cuda = self.rt.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=self.opts.lr, betas=(self.opts.beta1, self.opts.beta2), fused=cuda or None)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> Path:
        try:
            self.prepare_directory()
            previous = {s: signal.signal(s, self.request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                self.loop()
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
            return self.finish()
        finally:
            self.run_dir.close()

    def request_stop(self, signum, frame) -> None:
        self.stop_requested = True

    def loop(self) -> None:
        opts, st = self.opts, self.state
        self.emit(
            "start",
            {
                "start_step": st.step,
                "steps": opts.steps,
                "scales": self.scales,
                "resumed_from": str(self.resume_from) if self.resume_from else None,
            },
        )
        tokens_per_step = opts.batch_size * opts.seq_len
        run_start, run_start_step, base_seconds = time.perf_counter(), st.step, st.seconds
        last_saved = st.step if self.resume_from else None
        while st.step < opts.steps:
            losses, failure = self.train_step()
            if failure:
                if failure != "weights" and st.step > 0 and last_saved != st.step:
                    self.save_step()  # the update was skipped: the weights after step st.step are still good
                raise self.non_finite(failure, losses)
            st.step += 1
            st.tokens += tokens_per_step
            st.last_loss = losses
            elapsed = time.perf_counter() - run_start
            st.seconds = base_seconds + elapsed
            if st.step % opts.log_every == 0 or st.step == opts.steps:
                self.log(
                    {
                        "step": st.step,
                        "lr": self.opts.learning_rate(st.step - 1),
                        "loss": losses,
                        "tokens": st.tokens,
                        "seconds": round(st.seconds, 3),
                        "tokens_per_second": (st.step - run_start_step) * tokens_per_step / max(elapsed, 1e-9),
                    },
                    "log",
                )
            if (opts.eval_every and st.step % opts.eval_every == 0) or st.step == opts.steps:
                st.val_loss = self.validate()
                self.log({"step": st.step, "val_loss": st.val_loss}, "val")
            stop = self.rt.any(self.stop_requested)
            if (opts.save_every and st.step % opts.save_every == 0 or stop) and last_saved != st.step:
                self.save_step()
                last_saved = st.step
            if stop:
                raise TrainingInterrupted(
                    f"interrupted at step {st.step}: saved "
                    f"{self.run_dir.step_path(st.step)}; "
                    "continue with the same command and --resume auto"
                )

    def non_finite(self, failure: str, losses) -> NonFiniteLoss:
        """The error that ends a run whose loss, gradients or (after the update) weights are not finite."""
        saved, step = self.run_dir.complete_steps(), self.state.step + 1
        if failure == "weights":  # the update was applied: the weights in memory are lost
            what = f"step {step} made the weights non-finite (losses {losses}); nothing was published. "
            last_good = f"The last good weights are in {saved[-1]}. " if saved else "No good step was saved. "
        else:
            what = (
                f"non-finite {failure} at step {step} (losses {losses}); that update was not applied and "
                "nothing was published. "
            )
            last_good = f"The last good weights are in {saved[-1]}. " if saved and step > 1 else ""
        return NonFiniteLoss(what + last_good + "Lower --lr or raise --warmup-steps")

    def train_step(self) -> tuple[dict[str, float], str | None]:
        """One optimizer step over the global batch; this process takes its rows of it.

        Returns the loss per scale and what was non-finite, if anything: "loss" or "gradient" (the update
        was skipped), or "weights" (the update made them non-finite; the same answer on every rank)."""
        opts, rt = self.opts, self.rt
        lr = opts.learning_rate(self.state.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.batch_rows(self.state.step)
        sums = torch.zeros(len(self.scales), device=rt.device)
        n_targets = self.micro_rows * opts.seq_len * opts.grad_accum
        for a in range(opts.grad_accum):
            rows = batch[a * self.micro_rows : (a + 1) * self.micro_rows].to(rt.device)
            with rt.gradient_sync(self.module, a == opts.grad_accum - 1), self.autocast():
                weighted, per_scale = self.module(rows[:, :-1], rows[:, 1:], weights=self.weights)
            self.scaler.scale(weighted / n_targets).backward()
            sums += per_scale.float()
        mean = rt.sum(sums) / (opts.batch_size * opts.seq_len)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler.unscale_(self.optimizer)
        if opts.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        # A float16 GradScaler skips steps with overflowing gradients by itself, and lowers its scale.
        finite = torch.isfinite(mean).all() & (torch.isfinite(grad_norm) | self.scaler.is_enabled())
        if self.optimizer.defaults["fused"] and not self.scaler.is_enabled():
            # The fused AdamW skips the update on the device when found_inf is 1: no host sync before it.
            self.optimizer.found_inf = (~finite).float()
            self.optimizer.step()
            del self.optimizer.found_inf
        elif self.scaler.is_enabled() or finite:  # a GradScaler skips by itself; on a CPU, reading waits for nothing
            self.scaler.step(self.optimizer)
            self.scaler.update()
        weights_bad = rt.sum((~all_finite(params)).float().reshape(1))
        # The step's one host sync: losses, gradient norm and the weights' check, read together.
        *values, norm, bad = torch.cat([mean.float(), grad_norm.float().reshape(1), weights_bad]).tolist()
        losses = {str(k): v for k, v in zip(self.scales, values)}
        if not all(math.isfinite(v) for v in values):
            failure = "loss"  # the update was skipped
        elif not self.scaler.is_enabled() and not math.isfinite(norm):
            failure = "gradient"  # the update was skipped
        else:
            failure = "weights" if bad else None
        self.optimizer.zero_grad(set_to_none=True)
        return losses, failure

    def batch_rows(self, step: int) -> torch.Tensor:
        from colm_core.data import sample_windows

        batch = sample_windows(self.train_tokens, self.opts.seq_len, self.opts.batch_size, self.opts.seed, step)
        per_rank = self.opts.batch_size // self.rt.world_size
        return batch[self.rt.rank * per_rank : (self.rt.rank + 1) * per_rank]

    def autocast(self):
        return torch.autocast(
            self.rt.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32
        )

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean held-out loss of every scale (all of them, whatever the trained ones), same on every rank."""
        from colm_core.data import fixed_windows

        windows = fixed_windows(self.val_tokens, self.opts.seq_len, self.opts.eval_windows)
        all_scales = list(range(1, self.model.config.n_chains + 1))
        sums = torch.zeros(len(all_scales), device=self.rt.device)
        for s in range(0, len(windows), self.micro_rows):
            rows = windows[s : s + self.micro_rows].to(self.rt.device)
            with self.autocast():
                sums += self.module(rows[:, :-1], rows[:, 1:], all_scales).per_scale.float()
        mean = sums / (len(windows) * self.opts.seq_len)
        return {str(k): v for k, v in zip(all_scales, mean.tolist())}

    def log(self, record: dict, kind: str) -> None:
        if self.rt.is_main:
            self.run_dir.log(record)
        self.emit(kind, record)

    # --- directories and checkpoints ----------------------------------------------------------

    def prepare_directory(self) -> None:
        """Create OUT.partial (fresh, or kept when resuming) and restore the training state."""
        if self.rt.is_main:
            self.run_dir.prepare(resuming=self.resume_from is not None)
        self.rt.barrier()
        if self.resume_from is not None:
            self.restore(self.resume_from)

    def full_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        model_state, optim_state = self.rt.full_state(self.module, self.optimizer)
        strip = lambda name: name.removeprefix("model.")  # noqa: E731 - MultiScaleLoss holds the CoLM as .model
        return {strip(k): v for k, v in model_state.items()}, optim_state

    def save_step(self) -> None:
        from colm_core.checkpoint import write_checkpoint

        st = self.state
        tensors, optim_state = self.full_tensors()
        if self.rt.is_main:
            rng = {"rng::torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["rng::cuda"] = torch.cuda.get_rng_state()

            def write(directory: Path) -> None:
                # float32 master weights, whatever the input's dtype: resuming continues from them exactly
                write_checkpoint(
                    directory / "model",
                    self.model.config,
                    tensors.items(),
                    self.model.tokenizer,
                    self.model.history + [self.history_entry],
                )
                groups = save_optimizer_state(directory / OPTIMIZER_FILE, optim_state, extra=rng)
                trainer_state = {
                    "step": st.step,
                    "tokens": st.tokens,
                    "seconds": st.seconds,
                    "last_loss": st.last_loss,
                    "val_loss": st.val_loss,
                    "param_groups": groups,
                    "grad_scale": self.scaler.get_scale() if self.scaler.is_enabled() else None,
                    "options": dataclasses.asdict(self.opts),
                    "data_sha256": self.data_sha256,
                }
                (directory / STATE_FILE).write_text(finite_json(trainer_state, indent=2) + "\n")  # NaN losses as null

            path = self.run_dir.save_step(st.step, write, self.opts.keep_checkpoints)
            self.emit("save", {"step": st.step, "path": str(path)})
        self.rt.barrier()

    def restore(self, step_dir: Path) -> None:
        """Model weights were loaded from step_dir/model; here the optimizer, schedule, RNG and position."""
        trainer_state = read_trainer_state(step_dir)
        optim_state, rng = load_optimizer_state(step_dir / OPTIMIZER_FILE, trainer_state["param_groups"])
        self.rt.load_optimizer_state(self.module, self.optimizer, optim_state)
        torch.set_rng_state(rng["rng::torch"])
        if "rng::cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["rng::cuda"])
        if trainer_state["grad_scale"] is not None:
            self.scaler.update(trainer_state["grad_scale"])
        self.state = RunState(
            step=trainer_state["step"],
            tokens=trainer_state["tokens"],
            seconds=trainer_state["seconds"],
            last_loss=trainer_state["last_loss"],
            val_loss=trainer_state["val_loss"],
        )
        if self.rt.is_main:  # the metrics of steps after the checkpoint will be logged again
            self.run_dir.keep_metrics_until(self.state.step)

    def finish(self) -> Path:
        """Write the final checkpoint into OUT.partial and rename it to OUT."""
        from colm_core.checkpoint import write_checkpoint

        st = self.state
        tensors, _ = self.full_tensors()
        summary = {
            "steps": st.step,
            "tokens": st.tokens,
            "seconds": round(st.seconds, 3),
            "loss": st.last_loss,
            "val_loss": st.val_loss,
            "processes": self.rt.world_size,
        }
        if self.rt.is_main:
            entry = {**self.history_entry, "eval": {"val_loss": st.val_loss, "steps": st.step, "tokens": st.tokens}}
            stored = ((name, t.to(self.store_dtype)) for name, t in tensors.items())
            # config.json last: OUT.partial becomes a checkpoint only once it holds every file
            write_checkpoint(
                self.run_dir.partial, self.model.config, stored, self.model.tokenizer, self.model.history + [entry]
            )
            self.run_dir.publish(self.force)
            self.emit("end", summary | {"path": str(self.out)})
        self.rt.barrier()
        return self.out


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A device bool: no NaN or infinity in any of the tensors (this rank's shards of FSDP ones). One fused
    reduction (the largest magnitude of each tensor, which a finite tensor never overflows), no sync."""
    local = [t.detach().to_local() if hasattr(t, "to_local") else t.detach() for t in tensors]
    return torch.isfinite(torch.stack(torch._foreach_norm(local, float("inf")))).all()
