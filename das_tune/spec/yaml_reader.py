"""Reading declarative YAML files into validated pydantic models, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from das_tune.errors import UserError

Model = TypeVar("Model", bound=BaseModel)


MAX_DEPTH = 32  # a study or space is a few levels deep; thousands of levels only exhaust the stack
MAX_CHARS = 1_000_000  # a declarative file or --set value; far beyond any real one


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML, bounded: a repeated key, an alias (``*name``: a few hundred bytes of them expand to billions
    of nodes) and nesting deeper than ``MAX_DEPTH`` are errors, not something to build."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted", self.peek_event().start_mark)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml_text(text: str):
    if len(text) > MAX_CHARS:
        raise yaml.YAMLError(f"{len(text):,} characters, more than the {MAX_CHARS:,} a das-tune file or value may have")
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_yaml(path: Path) -> dict:
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return data


def validation_message(source: str, err: ValidationError) -> str:
    """One line naming the source, each bad field and what was expected."""
    parts = []
    for problem in err.errors():
        field = ".".join(str(p) for p in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field"
        parts.append(f"field '{field}': {message}" if field else message)
    return f"{source}: " + "; ".join(parts)


def parse(model: type[Model], data: dict, source: str) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UserError(validation_message(source, err)) from None


def load(model: type[Model], path: Path) -> Model:
    return parse(model, read_yaml(path), str(path))
