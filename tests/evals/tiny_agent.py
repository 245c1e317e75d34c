"""A tiny GPT-2 agent built here (no hub): it calls a tool when the conversation ends with the user, and says
`goblin` once a tool has answered. Real transformers code behind a real OpenAI-compatible server.

The blocks add nothing and there are no position embeddings, so the next token depends on the last token only:
a Markov chain, set through untied one-hot embeddings and an output head with one large weight per token. The
chat template ends with the last message's role, so the first answer token depends on who spoke last. The tool
call is one token of the word-level vocabulary (split on whitespace only), so it decodes exactly."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.llm.tiny import word_level_tokenizer  # noqa: E402

TOOL_CALL = '<tool_call>{"name":"read_file","arguments":{"path":"src/app.py"}}</tool_call>'
WORDS = ["[PAD]", "[UNK]", "[EOS]", "system", "user", "assistant", "tool", ":", TOOL_CALL, "goblin", "None"]
NEXT = {"user": TOOL_CALL, "tool": "goblin"}  # everything else: EOS


def build_tokenizer():
    # the generation prompt ends with the last speaker's role: the model's next word depends on who spoke last
    return word_level_tokenizer(WORDS, split_punctuation=False, generation_suffix="{{ messages[-1]['role'] }}")


def build_model(tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    v = len(WORDS)
    config = GPT2Config(vocab_size=v, n_positions=1024, n_embd=v + 1, n_layer=1, n_head=1,
                        tie_word_embeddings=False, bos_token_id=2, eos_token_id=2, pad_token_id=0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wpe.weight.zero_()
        model.transformer.wte.weight.zero_()
        model.transformer.wte.weight[:, :v] = torch.eye(v)
        ln = model.transformer.ln_f
        ln.weight.fill_(1.0)
        ln.bias.zero_()
        off = ln(model.transformer.wte.weight[3:4])[0, 4].item()  # a one-hot's normalised "off" value
        ln.bias.fill_(-off)  # now ln_f(one-hot t) = a * one-hot t
        head = model.lm_head.weight
        head.zero_()
        for w, t in enumerate(WORDS):
            head[WORDS.index(NEXT.get(t, "[EOS]")), w] = 10.0
    model.eval()
    return model
