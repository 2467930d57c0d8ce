"""lm-evaluation-harness on colm checkpoints: the `colm` model of lm-eval, and tasks run on every k-chain sub-model.

`ColmLM` is an lm-eval model (registered as `colm`, model_args `pretrained=CKPT,chains=K`) that scores
with colm's own forward and generates with colm's KV cache. Its conventions are those of lm-eval's
`hf` model, so that a 1-chain CoLM and its `colm export --format hf-llama` score the same request
alike (tests/test_lm_eval.py compares them request by request):
- text is encoded as the tokenizer starts a sequence (BOS only if its policy adds one), the context and
  the continuation split as lm-eval's TemplateLM splits them; an empty context is the prefix token
  (BOS, else EOS);
- a rolling log-likelihood is the sum over lm-eval's disjoint windows of the model's context, each
  window starting from the prefix token;
- a context longer than the model's context loses its oldest tokens.

lm-eval is an optional dependency (`pip install 'colm[eval]'`). This module imports it at the top, so
importing the module without it is the one-line error that says what to install; nothing imports
this module until tasks are asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from colm_core.api import load
from colm_core.checkpoint import parse_dtype
from colm_core.errors import ColmError, OptionError, missing_extra
from colm_core.generation import generate_batch
from colm_core.options import GenerateOptions

try:
    import lm_eval
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import Collator, normalize_gen_kwargs
    from lm_eval.utils import get_rolling_token_windows, handle_non_serializable, make_disjoint_window
except ImportError as e:
    raise missing_extra("--tasks runs lm-evaluation-harness", e, "eval") from None

__all__ = ["ColmLM", "evaluate_tasks", "results_table", "task_manager", "task_names"]

SAMPLING_KWARGS = {"do_sample", "temperature", "top_k", "top_p"}  # what generate_until maps onto colm's Sampling


@register_model("colm")
class ColmLM(TemplateLM):
    """The k-chain sub-model of a CoLM as an lm-eval model.

    `pretrained`: a loaded CoLM (with its tokenizer) or anything colm_core.load accepts. `chains`: the
    sub-model (default: all chains). `batch_size`: requests per forward pass, and prompts per
    generation batch. `device` and `dtype` apply to a checkpoint it loads; `max_batch_size`, which
    lm-eval passes to every model, means nothing here (a batch is `batch_size` requests).
    """

    def __init__(
        self,
        pretrained,
        chains: int | str | None = None,
        batch_size: int | str = 8,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        max_batch_size=None,
    ):
        super().__init__()
        if isinstance(pretrained, (str, Path)):
            dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
            pretrained = load(pretrained, device=device, dtype=dtype)
        self.model = pretrained.eval()
        n = self.model.config.n_chains
        self.chains = n if chains is None else int(chains)
        if not 1 <= self.chains <= n:
            raise ColmError(f"chains={self.chains} is outside 1..{n}: this model has {n} chains")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ColmError(f"batch_size={batch_size}: give a number of requests per forward pass, e.g. 8")
        self.batch_size = int(batch_size)
        self.tokenizer = self.model.tokenizer
        self._device = next(self.model.parameters()).device

    @property
    def eot_token_id(self) -> int:
        return self.model.config.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context and every rolling window start from: BOS, else EOS (as lm-eval's hf model)."""
        cfg = self.model.config
        return cfg.bos_token_id if cfg.bos_token_id is not None else cfg.eos_token_id

    @property
    def max_length(self) -> int:
        return self.model.config.max_seq_len

    @property
    def max_gen_toks(self) -> int:
        return 256  # lm-eval's default for a request that names no limit

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "kind", "colm")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """None: as the tokenizer starts a sequence, which is what a Hugging Face tokenizer does by default."""
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens is not False)

    def get_model_info(self) -> dict:
        """Recorded in lm-eval's results["config"]."""
        cfg = self.model.config
        return {
            "chains": self.chains,
            "n_chains": cfg.n_chains,
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(next(self.model.parameters()).dtype),
        }

    @torch.no_grad()
    def _loglikelihood_tokens(
        self, requests: list[tuple], disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether greedy decoding gives the continuation) per request.

        Longest first, `batch_size` at a time, right-padded: under the causal mask no real position sees
        a padding one. Requests that differ only in a last one-token continuation share one row
        (lm-eval's Collator groups them). The LM head runs on the continuation positions only."""

        def longest_first(request):
            tokens = request[1] + request[2]
            return -len(tokens), tuple(tokens)

        collator = Collator(
            requests, sort_fn=longest_first, group_by="contexts", group_fn=lambda request: request[1] + request[2][:-1]
        )
        longest = max((len(continuation) for _, _, continuation in requests), default=0)
        if longest > self.max_length:
            raise ColmError(
                f"a continuation of {longest} tokens is longer than the model's context of "
                f"{self.max_length} tokens; shorten the task's targets"
            )
        results = []
        for chunk in collator.get_batched(n=self.batch_size):
            # The last token is only ever a target; a window longer than the context keeps its end.
            windows = [(context + continuation)[-(self.max_length + 1) :][:-1] for _, context, continuation in chunk]
            width = max(map(len, windows))
            ids = torch.tensor([w + [0] * (width - len(w)) for w in windows], device=self._device)
            hidden = self.model.hidden_states(ids, self.chains)  # (B, T, D)
            rows = torch.cat([torch.full((len(c),), b) for b, (_, _, c) in enumerate(chunk)]).to(self._device)
            columns = torch.cat([torch.arange(len(w) - len(c), len(w)) for w, (_, _, c) in zip(windows, chunk)])
            logprobs = F.log_softmax(
                self.model.logits(hidden[rows, columns.to(self._device)], self.chains).float(), dim=-1
            )  # (continuation tokens of the batch, V)
            for (request, context, continuation), row_logprobs in zip(
                chunk, logprobs.split([len(c) for _, _, c in chunk])
            ):
                for _, target, shared in collator.get_cache(
                    req_str=request, cxt_toks=context, cont_toks=continuation, logits=row_logprobs[None]
                ):
                    scores = shared[0, -len(target) :]  # a shorter continuation of a shared row ends with it
                    target = torch.tensor(target, device=scores.device)
                    results.append(
                        (scores.gather(1, target[:, None]).sum().item(), bool((scores.argmax(-1) == target).all()))
                    )
        return collator.get_original(results)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text) of each request's whole text, over disjoint windows of the model's context."""
        windows, owners = [], []
        for owner, (text,) in enumerate(request.args for request in requests):
            for context, continuation in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, context, continuation))
                owners.append(owner)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[owner] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continue each context until a stop string, EOS or the request's token limit, with colm's KV cache:
        prompts longest first, `batch_size` at a time, requests with the same generation kwargs together."""
        collator = Collator(
            [request.args for request in requests],
            sort_fn=lambda args: (-len(self.tok_encode(args[0])), args[0]),
            group_by="gen_kwargs",
            group_fn=lambda args: args[1],
        )
        texts = []
        for chunk in collator.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk)
            kwargs = dict(normalize_gen_kwargs(all_kwargs[0], self.max_gen_toks))
            until, max_gen_toks = kwargs.pop("until"), kwargs.pop("max_gen_toks")
            unsupported = sorted(set(kwargs) - SAMPLING_KWARGS)
            if unsupported:
                raise ColmError(
                    f"generation kwargs {', '.join(unsupported)} are not supported by the colm model; "
                    f"it takes until, max_gen_toks and {', '.join(sorted(SAMPLING_KWARGS))}"
                )
            room = self.max_length - max_gen_toks  # the context keeps its last tokens, as in lm-eval's hf model
            if room < 1:
                raise ColmError(
                    f"max_gen_toks {max_gen_toks} leaves no room for a prompt in the model's context "
                    f"of {self.max_length} tokens; lower it in the task's generation_kwargs"
                )
            sampling = (
                {
                    "temperature": float(kwargs.get("temperature", 0.0)),
                    "top_k": kwargs.get("top_k"),
                    "top_p": kwargs.get("top_p"),
                }
                if kwargs.get("do_sample")
                else {}
            )  # else greedy
            options = GenerateOptions(
                max_new_tokens=max_gen_toks, chains=self.chains, stop=[s for s in until if s], **sampling
            )
            records = generate_batch(self.model, [self.tok_encode(c)[-room:] for c in contexts], options)
            texts += [record["text"] for record in records]
        return collator.get_original(texts)


def task_names(text: str) -> list[str]:
    """ "hellaswag, arc_easy" -> ["hellaswag", "arc_easy"]."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise OptionError("{tasks} {value!r}: give lm-eval task names, e.g. {tasks} hellaswag,arc_easy", value=text)
    return names


def task_manager(names: list[str], include_path: str | Path | None = None):
    """lm-eval's TaskManager for these tasks. Indexing lm-eval's own thousands of task files takes many
    seconds, so when every task (and every task of a group) is found under include_path, that directory
    alone is indexed. A YAML file there that does not parse is refused: lm-eval would skip it unsaid."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise ColmError(
                f"--include-path {include_path}: no such directory; give the directory of your task YAML files"
            )
        check_task_files(Path(include_path))
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(defined_in(local, name) for name in names):
            return local
    manager = TaskManager(include_path=None if include_path is None else str(include_path))
    unknown = [name for name in names if name not in manager.all_tasks and not Path(name).is_file()]
    if unknown:
        raise ColmError(
            f"unknown lm-eval task {unknown[0]!r}; list the tasks with `lm_eval ls tasks`, or give "
            "the directory of your own task YAML files with --include-path"
        )
    return manager


def check_task_files(directory: Path) -> None:
    """Every YAML file lm-eval would index under `directory` parses, with lm-eval's own loader."""
    from lm_eval.tasks._yaml_loader import load_yaml

    for path in sorted(directory.glob("**/*.yaml")):
        try:
            load_yaml(path, resolve_func=False, recursive=True)
        except Exception as e:  # yaml's errors, a top level that is not a mapping, a missing include
            raise ColmError(
                f"--include-path {directory}: {path} is not a valid task file ({one_line(e)}); fix it, "
                "or move it out of the directory"
            ) from None


def defined_in(manager, name: str, seen: frozenset = frozenset()) -> bool:
    """Whether the manager's index holds the task, group or tag `name`, and every task a group names."""
    entry = manager.task_index.get(name)
    if entry is None or name in seen:
        return entry is not None
    members = entry.cfg.get("task", []) if entry.kind.name == "GROUP" else []
    members = [members] if isinstance(members, str) else members
    return all(defined_in(manager, m, seen | {name}) for m in members if isinstance(m, str))


def check_tasks(manager, names: list[str], num_fewshot: int | None) -> None:
    """Build each task as lm-eval will (its configuration checked, its templates rendered on a document, its
    data read), and check that it has the few-shot examples asked for: a task's error is one line naming it,
    before any model runs."""
    from lm_eval.api.task import Task
    from lm_eval.tasks import get_task_dict

    def leaves(tree: dict):
        for key, value in tree.items():
            yield from leaves(value) if isinstance(value, dict) else [(key, value)]

    for name in names:
        try:
            built = list(leaves(get_task_dict([name], manager)))
        except ColmError:
            raise
        except Exception as e:  # lm-eval's errors for a task's YAML, template or data
            raise ColmError(
                f"lm-eval task {name!r} cannot be loaded ({one_line(e)}); fix its YAML file, or check "
                "that its dataset can be read"
            ) from None
        for task_name, task in built:
            shots = num_fewshot if num_fewshot is not None else task.get_config("num_fewshot") or 0
            if not isinstance(task, Task) or not shots:
                continue
            # lm-eval draws one more example when they come from the split evaluated, and drops the document itself
            drawn = shots + (task.fewshot_cfg.split == task.config.test_split)
            pool = task.fewshot_docs()
            available = 0 if pool is None else len(pool)
            if available < drawn:
                raise ColmError(
                    f"{shots} few-shot examples: task {task_name!r} has {available} to draw from"
                    f"{' (the document evaluated is left out)' if drawn > shots else ''}; give "
                    f"--num-fewshot {max(available - (drawn - shots), 0)} or less"
                )


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def evaluate_tasks(
    model,
    tasks: str | list[str],
    chains: list[int] | None = None,
    *,
    num_fewshot: int | None = None,
    limit: int | None = None,
    include_path: str | Path | None = None,
    batch_size: int = 8,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> dict:
    """Run lm-eval tasks on each k-chain sub-model of one CoLM (a loaded model, or anything colm_core.load
    accepts), the same documents and few-shot examples for every chain count.

    Returns {"tasks", "chains", "results": {"k": lm-eval's results for k chains}}, JSON-ready."""
    if isinstance(model, (str, Path)):
        model = load(model, device=device, dtype=dtype)
    names = task_names(tasks) if isinstance(tasks, str) else list(tasks)
    n = model.config.n_chains
    chains = sorted(set(chains or range(1, n + 1)))
    manager = task_manager(names, include_path)
    check_tasks(manager, names, num_fewshot)
    results = {}
    for k in chains:
        out = lm_eval.simple_evaluate(
            model=ColmLM(model, chains=k, batch_size=batch_size),
            tasks=names,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=False,
            batch_size=batch_size,
        )
        # lm-eval's results hold a few objects JSON cannot (dtypes, functions in task configs)
        results[str(k)] = json.loads(json.dumps(out, default=handle_non_serializable))
    return {"tasks": names, "chains": chains, "results": results}


def results_table(report: dict) -> list[dict]:
    """One row per task and metric, one value and standard error (None where lm-eval has none) per chain
    count: [{"task", "metric", "values": {"k": (value, stderr)}}]. A metric is lm-eval's "name,filter"."""
    rows: dict[tuple[str, str], dict] = {}
    for k, out in report["results"].items():
        for task, metrics in out["results"].items():
            for key, value in metrics.items():
                metric, _, where = key.partition(",")
                if not where or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                    continue  # "alias", "sample_len", standard errors (paired below), "N/A"
                stderr = metrics.get(f"{metric}_stderr,{where}")
                row = rows.setdefault((task, key), {"task": task, "metric": key, "values": {}})
                row["values"][k] = (value, stderr if isinstance(stderr, (int, float)) else None)
    return list(rows.values())
