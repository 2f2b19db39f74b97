"""Report tokenizer and text encoder for the CT model.

Two routes, chosen by `VolumeModelConfig.text_model`:

* `"demo-bert"` (offline demo): a WordPiece tokenizer fitted to the report corpus (deterministic,
  see train_wordpiece_tokenizer), wrapped as a transformers `PreTrainedTokenizerFast`, and a small randomly initialised
  `BertModel` built from a `BertConfig` (no download anywhere).
* anything else: a transformers model name or local folder, read with `local_files_only=True`
  (e.g. a clinical Longformer/BERT you placed on disk beforehand).

Either way the encoder's HF config is saved next to the weights (`text_config/`), so a trained or
exported model is rebuilt with `AutoModel.from_config` and never needs the original source again.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

if TYPE_CHECKING:  # transformers is imported lazily: only the routes that need it pay for it
    from transformers import BertConfig, PretrainedConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast

DEMO_TEXT_MODEL = "demo-bert"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece_tokenizer(corpus: Iterable[str], vocab_size: int = 4096, max_length: int = 128) -> PreTrainedTokenizerFast:
    """A BERT-style (lower-cased WordPiece) tokenizer fitted to `corpus`, as a PreTrainedTokenizerFast.

    The vocabulary is: special tokens, every character seen (word-initial and "##" continuation),
    then whole words by descending frequency (ties alphabetical) up to `vocab_size`. Why not
    `tokenizers`' WordPieceTrainer: it breaks merge-count ties in hash order, so the same corpus
    gives different vocabularies from run to run, and a rerun (or resume) must give the same ids.
    Normalisation and pre-tokenisation are `tokenizers`' BERT components, the model its WordPiece.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in counts for c in w})
    vocab_list = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    vocab_list += words[: max(vocab_size - len(vocab_list), 0)]
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab_list)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=max_length,
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer saved with save_pretrained (local only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def pretrained_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of transformers model `name` (a hub name already cached, or a local folder)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, local_files_only=True)


def demo_bert_config(vocab_size: int, hidden: int, layers: int, heads: int, max_length: int) -> BertConfig:
    """The small demo BERT: `hidden` wide, `layers` deep, `heads` heads, positions up to `max_length`."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=4 * hidden, max_position_embeddings=max_length, pad_token_id=0)


class TextEncoder(nn.Module):
    """A transformers encoder; the report embedding is the [CLS] (first) token's last hidden state."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model
        self.width = int(hf_model.config.hidden_size)
        # The embedding is the [CLS] hidden state, so BERT's pooler never gets a gradient: freeze it,
        # or DDP would wait for gradients that never come.
        pooler = getattr(hf_model, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Report embeddings (B, width): the [CLS] token's last hidden state."""
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state[:, 0]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn on activation checkpointing where the HF model supports it (turning it off is a no-op)."""
        if enable and getattr(self.hf, "supports_gradient_checkpointing", False):
            # transformers 5 renamed the switch; use whichever this version has
            if hasattr(self.hf, "activation_checkpointing_enable"):
                self.hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class TextEncoderNotLoaded(nn.Module):
    """Stands in for a TextEncoder whose weights were left on disk (`volume.load_model_dir(text=False)`).

    It knows the encoder's width, so the model around it is built as usual, and has no parameters;
    encoding text with it is an error. Inference that embeds no text then never imports the
    transformers modelling code (about 1.5 s of a CT prediction's start-up).
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = int(width)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Refuses: the text encoder was not loaded."""
        raise RuntimeError("the text encoder was not loaded: load the model with text=True, or volume.load_text_encoder")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Nothing to checkpoint."""


def text_encoder_from_config(hf_config: PretrainedConfig) -> TextEncoder:
    """Random-init encoder from an HF config (weights are loaded afterwards from our safetensors)."""
    from transformers import AutoModel

    return TextEncoder(AutoModel.from_config(hf_config))


def text_encoder_from_pretrained(name: str) -> TextEncoder:
    """Encoder with the pretrained weights of transformers model `name` (local files only)."""
    from transformers import AutoModel

    return TextEncoder(AutoModel.from_pretrained(name, local_files_only=True))


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` (B, max_length) for `texts`, padded and truncated to `max_length`."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
