"""Versioned prompt templates, read from files: <folder>/<operation>/v<N>.toml, where an operation may have
kinds in subfolders (marketing_copy/sms/v1.toml is version 1 of operation "marketing_copy/sms"), or flat, as a
Kubernetes ConfigMap holds them: <folder>/<operation with dots>.v<N>.toml (marketing_copy.sms.v1.toml).

A template holds chat messages whose contents are Jinja (sandboxed, undefined variables are errors), the sampling
settings that suit it and, optionally, the length its text may have. The gateway renders them into the
generator's chat messages; the model's own chat template then turns those into its prompt.
"""

from __future__ import annotations

import glob
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecomserve.generator.v1 import generator_pb2
from jinja2 import StrictUndefined, Template
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.core import errors

# v<N>.toml in the operation's folder, or <operation>.v<N>.toml with the operation's folders joined by dots.
VERSION_FILE = re.compile(r"^(?:(?P<operation>\w+(?:\.\w+)*)\.)?v(?P<version>\d+)\.toml$")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    repetition_penalty: float
    tokens_per_word: float
    stop: tuple[str, ...]

    def max_new_tokens(self, max_words: int) -> int:
        """A token budget for `max_words` words (the template's words-to-tokens ratio, plus room to finish)."""
        return math.ceil(max_words * self.tokens_per_word) + 8


@dataclass(frozen=True)
class Length:
    """How long the text of a template may be (its `[length]` table): words when the caller names none, the most
    words a caller may ask for, and the most characters the text may hold (0: no character limit)."""

    default_words: int
    max_words: int
    max_chars: int


@dataclass(frozen=True)
class PromptTemplate:
    operation: str
    version: int
    messages: tuple[tuple[str, Template], ...]
    sampling: Sampling
    length: Length | None = None

    @property
    def name(self) -> str:
        return f"{self.operation}/v{self.version}"

    def render(self, **variables: Any) -> list[tuple[str, str]]:
        """(role, content) chat messages; messages that render empty are left out."""
        rendered = [(role, template.render(**variables).strip()) for role, template in self.messages]
        return [(role, content) for role, content in rendered if content]

    def generation(
        self, model: str, messages: list[tuple[str, str]], max_words: int, seed: int | None
    ) -> generator_pb2.GenerateRequest:
        """The generator request for rendered `messages`, with this template's sampling and a token budget for
        `max_words` words."""
        sampling = self.sampling
        return generator_pb2.GenerateRequest(
            model=model,
            messages=[generator_pb2.ChatMessage(role=role, content=content) for role, content in messages],
            sampling=generator_pb2.SamplingParameters(
                max_new_tokens=sampling.max_new_tokens(max_words),
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                repetition_penalty=sampling.repetition_penalty,
                stop=sampling.stop,
                seed=seed,
            ),
        )


class PromptTemplates:
    """Every template version in a folder, looked up by operation and version (0: the newest)."""

    def __init__(self, templates: list[PromptTemplate]) -> None:
        self._by_operation: dict[str, dict[int, PromptTemplate]] = {}
        for template in templates:
            self._by_operation.setdefault(template.operation, {})[template.version] = template

    @classmethod
    def load(cls, folder: Path) -> PromptTemplates:
        environment = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False)
        templates = []
        for path in template_files(folder):
            match = VERSION_FILE.match(path.name)
            if match:
                parts = [*path.parent.relative_to(folder).parts, *(match["operation"] or "").split(".")]
                operation = "/".join(part for part in parts if part)
                templates.append(_parse(path, operation, int(match["version"]), environment))
        return cls(templates)

    def replace_with(self, other: PromptTemplates) -> None:
        """Take `other`'s templates, in one step (a call sees the old set or the new one, never a mix)."""
        self._by_operation = other._by_operation

    def operations(self) -> list[str]:
        return sorted(self._by_operation)

    def versions(self, operation: str) -> list[PromptTemplate]:
        return [template for _, template in sorted(self._by_operation.get(operation, {}).items())]

    def kinds(self, operation: str) -> list[str]:
        """The kinds an operation has templates for: "sms" for marketing_copy/sms/v1.toml."""
        prefix = f"{operation}/"
        return [name.removeprefix(prefix) for name in self.operations() if name.startswith(prefix)]

    def get(self, operation: str, version: int = 0) -> PromptTemplate:
        versions = self._by_operation.get(operation)
        if not versions:
            raise errors.NotFound(f"no prompt template for {operation}: the gateway's template folder has none")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            known = ", ".join(str(v) for v in sorted(versions))
            raise errors.NotFound(f"template_version {version} of {operation} does not exist (versions: {known})")
        return versions[version]


def template_files(folder: Path) -> list[Path]:
    """Every template file under folder. glob.glob follows symlinked folders and skips hidden ones, as a
    Kubernetes ConfigMap volume needs (its files are links into a hidden ..data folder); pathlib's ** does neither."""
    if not folder.is_dir():
        raise ValueError(f"prompt template folder {folder} does not exist")
    return sorted(Path(path) for path in glob.glob(str(folder / "**" / "*.toml"), recursive=True))


def _parse(path: Path, operation: str, version: int, environment: ImmutableSandboxedEnvironment) -> PromptTemplate:
    try:
        data = tomllib.loads(path.read_text())
        messages = tuple((message["role"], environment.from_string(message["content"])) for message in data["messages"])
        sampling = data.get("sampling", {})
        length = data.get("length")
        template = PromptTemplate(
            operation=operation,
            version=version,
            messages=messages,
            sampling=Sampling(
                temperature=float(sampling.get("temperature", 0.7)),
                top_p=float(sampling.get("top_p", 0.9)),
                repetition_penalty=float(sampling.get("repetition_penalty", 1.2)),
                tokens_per_word=float(sampling.get("tokens_per_word", 1.6)),
                stop=tuple(sampling.get("stop", ())),
            ),
            length=None
            if length is None
            else Length(int(length["default_words"]), int(length["max_words"]), int(length.get("max_chars", 0))),
        )
    except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"prompt template {path}: {error}") from error
    unknown = [role for role, _ in messages if role not in ROLES]
    if unknown or not messages:
        raise ValueError(f"prompt template {path}: needs messages with roles in {ROLES}, got {unknown or 'none'}")
    if template.length is not None and not 1 <= template.length.default_words <= template.length.max_words:
        raise ValueError(f"prompt template {path}: [length] needs 1 <= default_words <= max_words")
    return template
