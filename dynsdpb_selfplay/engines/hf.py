"""The transformers backend: ``model.generate`` on length-sorted, left-padded batches.

The fallback where vLLM is absent and the reference the vLLM backend is checked against. Sorting prompts by length
before batching keeps padding (and wasted compute) small; results are returned in input order.
"""

from __future__ import annotations

import logging

import torch

from .base import Completion, Engine, EngineConfig, Generation, SamplingConfig, resolve_dtype

__all__ = ["HFEngine"]

logger = logging.getLogger(__name__)


class HFEngine(Engine):
    """Wraps an already-loaded causal LM and tokenizer; :meth:`from_pretrained` loads one through the resolver."""

    name = "hf"

    def __init__(self, model, tokenizer, config: EngineConfig | None = None, model_path: str = ""):
        self.config = config or EngineConfig(backend="hf")
        self.model, self.tokenizer, self.model_path = model.eval(), tokenizer, model_path
        self._adapters: dict[str, str] = {}
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        if not eos:
            raise ValueError("the model and tokenizer define no EOS token; generation could not stop")
        self.eos_ids = eos
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        if tokenizer.pad_token_id is None:
            # Harmless: prompts are left-padded under an attention mask, and TRL's trainer pads with EOS likewise.
            logger.info("%s: the tokenizer has no pad token; padding with EOS (id %d)", model_path or "model", eos[0])

    @classmethod
    def from_pretrained(cls, spec: str, config: EngineConfig | None = None) -> HFEngine:
        from ..memory import check_memory, hf_need
        from ..models import load_hf_model, resolve_model

        config = config or EngineConfig(backend="hf")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            check_memory(hf_need(resolve_model(spec), resolve_dtype(config.dtype)))
        model, tokenizer = load_hf_model(spec, resolve_dtype(config.dtype), device, config.trust_remote_code)
        return cls(model, tokenizer, config, model_path=spec)

    def _generation_kwargs(self, sampling: SamplingConfig) -> dict:
        from transformers import GenerationConfig

        kw = dict(
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=sampling.n,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            do_sample=sampling.temperature > 0,
        )
        if sampling.temperature > 0:
            kw.update(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                min_p=sampling.min_p or None,
            )
        if sampling.stop:
            kw["stop_strings"] = list(sampling.stop)
        # A fresh GenerationConfig: the checkpoint's own sampling defaults must not leak into a greedy run.
        return {"generation_config": GenerationConfig(**kw)}

    def _completion(self, ids: list[int], sampling: SamplingConfig) -> Completion:
        finish = "length"
        for k, tok in enumerate(ids):
            if tok in self.eos_ids:
                ids, finish = ids[: k + 1], "stop"
                break
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cuts = [text.find(s) for s in sampling.stop if s in text]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        return Completion(text=text, token_ids=ids, finish_reason=finish)

    @torch.inference_mode()
    def generate_ids(self, prompt_ids, sampling, lora_path=None):
        self._report_queued(len(prompt_ids), sampling)
        if sampling.seed is not None or self.config.seed is not None:
            torch.manual_seed(sampling.seed if sampling.seed is not None else self.config.seed)
        lora_path = lora_path or self.adapter
        self._use_adapter(lora_path)
        device = next(self.model.parameters()).device
        kwargs = self._generation_kwargs(sampling)
        if sampling.stop:
            kwargs["tokenizer"] = self.tokenizer
        order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
        results: list[Generation | None] = [None] * len(prompt_ids)
        try:
            for batch in self._batches(order, prompt_ids):
                width = max(len(prompt_ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):  # left padding: generation continues right after each prompt
                    n = len(prompt_ids[i])
                    input_ids[row, width - n :] = torch.tensor(prompt_ids[i])
                    attention[row, width - n :] = 1
                out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
                new = out[:, width:].tolist()
                for row, i in enumerate(batch):
                    seqs = new[row * sampling.n : (row + 1) * sampling.n]
                    results[i] = Generation(list(prompt_ids[i]), [self._completion(s, sampling) for s in seqs])
                self._report_done([results[i] for i in batch], sampling)  # a batch's tokens come at once
        finally:
            if lora_path is not None:
                self.model.disable_adapters()
        return results

    def _batches(self, order: list[int], prompt_ids) -> list[list[int]]:
        """Consecutive groups of the length-sorted ``order``: at most ``batch_size`` prompts and, unless a single
        prompt exceeds it, at most ``max_batch_tokens`` padded prompt tokens (longest first, so the first is widest)."""
        batches: list[list[int]] = []
        for i in order:
            if batches:
                batch = batches[-1]
                width = len(prompt_ids[batch[0]])
                if len(batch) < self.config.batch_size and (len(batch) + 1) * width <= self.config.max_batch_tokens:
                    batch.append(i)
                    continue
            batches.append([i])
        return batches

    def _use_adapter(self, lora_path: str | None) -> None:
        """Serve a PEFT LoRA adapter directory for this call (loaded once, then switched on/off)."""
        if lora_path is None:
            return
        if lora_path not in self._adapters:
            name = f"adapter{len(self._adapters)}"
            self.model.load_adapter(lora_path, adapter_name=name)
            self._adapters[lora_path] = name
        self.model.set_adapter(self._adapters[lora_path])
        self.model.enable_adapters()

    def update_weights(self, checkpoint_dir: str) -> None:
        from transformers import AutoModelForCausalLM

        from ..models import adapter_info, check_model_dir

        if adapter_info(checkpoint_dir) is not None:
            self.adapter = str(checkpoint_dir)
            return
        check_model_dir(checkpoint_dir)
        self.adapter = None
        device, dtype = next(self.model.parameters()).device, self.model.dtype
        new = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=dtype, use_safetensors=True)
        self.model = new.to(device).eval()
        self._adapters.clear()

    def close(self) -> None:
        self.model = None
