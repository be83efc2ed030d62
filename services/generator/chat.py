"""ChatTemplate: renders chat messages into a prompt with the model's own Jinja template (chat_template.jinja).

Rendered the way Hugging Face tokenizers render it (a sandboxed environment, trim_blocks and lstrip_blocks,
`raise_exception` for templates that refuse a conversation), so served prompts match what the model was tuned on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.core.errors import InvalidArgument, ModelFailure

ROLES = ("system", "user", "assistant")


def _raise_exception(message: str) -> NoReturn:
    raise InvalidArgument(f"the model's chat template refused the messages: {message}")


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, Any]) -> None:
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        environment.globals["raise_exception"] = _raise_exception
        environment.filters["tojson"] = _tojson
        try:
            self._template = environment.from_string(source)
        except TemplateError as error:
            raise ModelFailure(f"the model's chat template does not compile: {error}") from error
        self._tokens = {
            key: value for key, value in special_tokens.items() if key.endswith("_token") and isinstance(value, str)
        }

    @classmethod
    def load(cls, folder: Path, special_tokens: dict[str, Any]) -> ChatTemplate | None:
        name = special_tokens.get("chat_template")
        return cls((folder / name).read_text(), special_tokens) if name else None

    def render(self, messages: list[tuple[str, str]]) -> str:
        """The prompt for (role, content) turns, ending with the opening of the assistant's turn."""
        try:
            return self._template.render(
                messages=[{"role": role, "content": content} for role, content in messages],
                add_generation_prompt=True,
                **self._tokens,
            )
        except InvalidArgument:
            raise
        except TemplateError as error:
            raise InvalidArgument(f"the model's chat template cannot render these messages: {error}") from error
