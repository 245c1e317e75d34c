"""A local `transformers` causal LM as a monitor backend (small monitors on CPU or one GPU).

Prompts go through the tokenizer's chat template (a plain "role: content" rendering when it has none); token
counts are the tokenizer's, so accounting and dry runs are exact. Generation is serialised by a lock (one model,
one forward pass at a time); the client's concurrency limit still bounds queued work.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .core import Backend, ChatRequest, ChatResult, LLMError


class TransformersBackend(Backend):
    def __init__(self, model: Any, tokenizer: Any, name: str | None = None, max_new_tokens: int = 64):
        super().__init__(name or getattr(getattr(model, "config", None), "_name_or_path", "") or "local")
        self.lm = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.description = f"transformers:{self.model}"
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> TransformersBackend:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise LLMError("the local backend needs transformers and torch: pip install 'rlaudit[trl]'") from None
        return cls(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), name=path,
                   **kwargs)

    def _prompt_ids(self, request: ChatRequest) -> list[int]:
        messages = request.message_dicts()
        if getattr(self.tokenizer, "chat_template", None):
            tools = request.param_dict().get("tools")
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     **({"tools": tools} if tools else {}))
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        text = " ".join(f"{m['role']}: {m['content']}" for m in messages) + " assistant:"
        return list(self.tokenizer(text)["input_ids"])

    def count_tokens(self, request: ChatRequest) -> int:
        return len(self._prompt_ids(request))

    def complete(self, request: ChatRequest) -> ChatResult:
        import torch

        params = request.param_dict()
        started = time.perf_counter()
        ids = self._prompt_ids(request)
        max_new = int(params.get("max_tokens", self.max_new_tokens))
        temperature = float(params.get("temperature", 0.0))
        gen: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": self.tokenizer.pad_token_id}
        if temperature > 0:
            gen.update(do_sample=True, temperature=temperature)
        else:
            gen.update(do_sample=False)
        with self._lock:
            if "seed" in params:
                torch.manual_seed(int(params["seed"]))
            with torch.no_grad():
                out = self.lm.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                       **gen)
        new = out[0, len(ids):].tolist()
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos in new:
            new = new[:new.index(eos)]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return ChatResult(text=text, prompt_tokens=len(ids), completion_tokens=len(new), model=self.model,
                          seconds=time.perf_counter() - started)
