"""Texts the parity and agreement checks run: e-commerce messages of clearly different lengths, and the bundled
corpus of 230 customer messages and reviews (export/data/messages.txt; the benchmarks' classifier workload too)."""

from importlib import resources

CLASSIFIER_TEXTS = [
    "Where is my order?",
    "Where is my order? It was supposed to arrive yesterday.",
    "I want a refund",
    "The blender arrived with a cracked jar and the lid does not fit. I would like a replacement sent "
    "out this week, or my money back if that is not possible.",
    "Can I talk to a real person please",
    "Great headphones, battery lasts all day and they are comfortable.",
    "cancel my subscription",
    "This is the third time I am writing about the same missing package and nobody answers. "
    "I am really disappointed with your customer service and I will leave a bad review unless "
    "somebody calls me today about order 55120.",
    "Do you ship to Canada?",
    "how do I change my delivery address",
    "The product works as described.",
    "I was charged twice for the same purchase",
]

GENERATOR_PROMPTS = [
    "Write a short product description for a stainless steel water bottle.",
    "Reply to the customer: my parcel is late.",
    "Hello",
]


def customer_messages() -> list[str]:
    """The bundled corpus: e-commerce customer messages and reviews, one per line."""
    text = resources.files("export").joinpath("data", "messages.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def agreement_texts() -> list[str]:
    """The parity texts plus the bundled corpus: enough to measure top-1 agreement or cosine similarity."""
    return CLASSIFIER_TEXTS + customer_messages()
