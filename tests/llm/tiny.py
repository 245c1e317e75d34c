"""A tiny GPT-2 built here (no hub): a word-level tokenizer and weights set so that greedy decoding always
answers `yes` then stops, whatever the prompt. Real transformers code runs end to end; the answer is known."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("[PAD] [UNK] [EOS] system user assistant : yes no the a is of to and in reasoning answer prompt rubric "
         "text does say it model monitor reply one json object label score quote test tests special case "
         "cases hard code coded return pass passes").split()


def build_tokenizer():
    return word_level_tokenizer(WORDS, split_punctuation=True)


def word_level_tokenizer(words, split_punctuation: bool, generation_suffix: str = ""):
    """A word-level tokenizer over `words` ([PAD] [UNK] [EOS] first) with a 'role : content' chat template;
    `split_punctuation` splits on punctuation too (else on whitespace only, keeping markup words whole)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                        eos_token="[EOS]", bos_token="[EOS]")
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}assistant : " + generation_suffix + "{% endif %}")
    return tokenizer


def build_model(tokenizer, answer: str = "yes"):
    """Two layers whose blocks add nothing (output projections zero, no position embeddings), so the last
    hidden state depends on the last token only. Dimension 0 carries `answer`, dimension 1 marks "the last
    token was `answer`" and points at EOS: greedy decoding says `answer`, then stops."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    yes = tokenizer.convert_tokens_to_ids(answer)
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wpe.weight.zero_()
        emb = model.transformer.wte.weight  # tied with the output head
        emb.mul_(0.01)
        emb[:, 1] = -0.05
        emb[yes] = 0.0
        emb[yes, 0], emb[yes, 1] = 1.0, 0.5
        emb[eos] = 0.0
        emb[eos, 1] = 4.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.weight[1] = 1.0
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 5.0
    model.eval()
    return model
