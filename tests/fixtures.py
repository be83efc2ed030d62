"""Tiny random-weight Hugging Face models, built from configs (no hub), and their exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = (
    "where is my order it was supposed to arrive yesterday i want a refund please the blender came broken "
    "can talk real person great headphones battery lasts all day cancel subscription do you ship canada how "
    "change delivery address product works as described charged twice same purchase late parcel reply customer "
    "write short description stainless steel water bottle hello thanks help return item size color"
).split()
LABELS = ["negative", "neutral", "positive"]
# Texts of clearly different token lengths, in the tiny tokenizers' vocabulary.
TEXTS = [
    "where is my order",
    "i want a refund please the blender came broken and i want my money back today",
    "hello",
    "can i talk to a real person about the late parcel",
    "thanks",
    "how do i change the delivery address",
]


def write_bert_tokenizer(folder: Path) -> None:
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789.,?!'")
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *sorted(set(WORDS)),
        *letters,
        *(f"##{c}" for c in letters),
    ]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=64).save_pretrained(folder)


def _bert_config(**extra: object):  # type: ignore[no-untyped-def]
    from transformers import BertConfig

    return BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **extra,
    )


def build_bert_classifier(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BERT sequence classifier with three sentiment labels and its WordPiece tokenizer."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    write_bert_tokenizer(folder)
    vocab_size = len((folder / "vocab.txt").read_text().split())
    config = _bert_config(
        vocab_size=vocab_size,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    return folder


def build_embedding_body(folder: Path, seed: int = 1) -> Path:
    """A 2-layer BERT body (hidden 32) for the embedding + linear head pattern."""
    import torch
    from transformers import BertModel

    torch.manual_seed(seed)
    write_bert_tokenizer(folder)
    vocab_size = len((folder / "vocab.txt").read_text().split())
    BertModel(_bert_config(vocab_size=vocab_size)).eval().save_pretrained(folder)
    return folder


def build_linear_head(path: Path, dim: int, classes: list[str], seed: int = 2) -> Path:
    """A scikit-learn LogisticRegression fitted on random unit vectors of the body's dimension."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(60, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    targets = [classes[i % len(classes)] for i in range(len(vectors))]
    joblib.dump(LogisticRegression(max_iter=500).fit(vectors, targets), path)
    return path


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_bpe_tokenizer(folder: Path) -> None:
    """A byte-level BPE tokenizer (GPT-2 style) trained on a few sentences, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([" ".join(WORDS)] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)


def build_causal_lm(folder: Path, architecture: str, seed: int = 0) -> Path:
    """A 2-layer random-weight Llama or Qwen2 (grouped-query attention; Qwen2's with q/k/v biases and its output
    layer tied to the embedding table) or GPT-2, with a byte-level BPE tokenizer."""
    import torch
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_bpe_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    special = {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id}
    if architecture in ("llama", "qwen2"):
        config_class, model_class = (
            (LlamaConfig, LlamaForCausalLM) if architecture == "llama" else (Qwen2Config, Qwen2ForCausalLM)
        )
        config = config_class(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=architecture == "qwen2",
            **special,
        )
        model: torch.nn.Module = model_class(config)
    else:
        model = GPT2LMHeadModel(
            GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=256, **special)
        )
    model.eval().save_pretrained(folder)
    return folder
