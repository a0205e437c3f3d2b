"""Check request bodies against the vendors' published request types.

Anthropic: the SDK's typed params (``MessageCreateParamsNonStreaming`` and what it nests),
walked recursively — every key must be declared, required keys present, literals and
scalar types right. OpenAI: the public OpenAPI document (``openai/openai-openapi``, found in
``shared/vendor`` next to the repository); its schemas allow unknown keys, so besides
validating, every key we send is looked up among the declared properties.
"""

from __future__ import annotations

import collections.abc
import functools
import types
import typing
from pathlib import Path
from typing import Any

import typing_extensions
import yaml
from jsonschema import Draft202012Validator

OPENAPI = Path(__file__).resolve().parents[2].parent / "shared/vendor/openai-openapi/openapi.yaml"
_WRAPPERS = {
    typing.Required,
    typing.NotRequired,
    typing.Annotated,
    typing_extensions.Required,
    typing_extensions.NotRequired,
    typing_extensions.ReadOnly,
}
_SEQUENCES = {list, collections.abc.Iterable, collections.abc.Sequence, typing.List}  # noqa: UP006


def typed_dict_problems(value: Any, tp: Any, path: str = "body") -> list[str]:
    """Where ``value`` strays from the SDK type ``tp`` (empty when it conforms)."""
    origin, args = typing_extensions.get_origin(tp), typing_extensions.get_args(tp)
    if tp is Any or tp is object:
        return []
    if origin in _WRAPPERS:
        return typed_dict_problems(value, args[0], path)
    if origin in (typing.Union, types.UnionType):
        tries = [typed_dict_problems(value, a, path) for a in args]
        if not all(tries):
            return []
        # report the alternative of the right shape that came closest
        shaped = [t for t in tries if not any(p.startswith(f"{path}: ") for p in t)]
        return min(shaped or tries, key=len)
    if origin in (typing.Literal, typing_extensions.Literal):
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if typing_extensions.is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{path}: expected an object for {tp.__name__}"]
        hints = typing_extensions.get_type_hints(tp, include_extras=True)
        problems = [f"{path}.{k}: not a field of {tp.__name__}" for k in value if k not in hints]
        problems += [f"{path}.{k}: required" for k in tp.__required_keys__ if k not in value]
        for key, item in value.items():
            if key in hints:
                problems += typed_dict_problems(item, hints[key], f"{path}.{key}")
        return problems
    if origin in _SEQUENCES or getattr(origin, "__name__", "") == "SequenceNotStr":
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [
            p for i, v in enumerate(value) for p in typed_dict_problems(v, args[0], f"{path}[{i}]")
        ]
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        return [] if isinstance(value, dict) else [f"{path}: expected an object"]
    if tp is type(None):
        return [] if value is None else [f"{path}: expected null"]
    if tp in (str, bool):
        return [] if type(value) is tp else [f"{path}: expected {tp.__name__}"]
    if tp in (int, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and (tp is float or isinstance(value, int))
        return [] if ok else [f"{path}: expected {tp.__name__}"]
    if isinstance(tp, type):  # a class (an SDK response model, say): a JSON body holds none
        return [] if isinstance(value, tp) else [f"{path}: expected a {tp.__name__} instance"]
    return []  # a typing construct this walk does not model: accept


# --------------------------------------------------------------------------- OpenAI


@functools.cache
def openapi_components() -> dict[str, Any]:
    if not OPENAPI.is_file():
        raise FileNotFoundError(
            f"{OPENAPI} is missing: the OpenAI OpenAPI document is vendored in shared/vendor "
            "next to the repository (openai/openai-openapi)"
        )
    with OPENAPI.open(encoding="utf-8") as fh:
        doc = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    components: dict[str, Any] = doc["components"]
    return components


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator({**schema, "components": openapi_components()})


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = {
            **openapi_components()["schemas"][name],
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
    return schema


def _properties(schema: dict[str, Any]) -> dict[str, Any] | None:
    """Declared properties, through ``allOf``; None for a free-form object."""
    schema = _resolve(schema)
    found: dict[str, Any] | None = None
    if "properties" in schema:
        found = dict(schema["properties"])
    for part in schema.get("allOf", []):
        more = _properties(part)
        if more is not None:
            found = {**(found or {}), **more}
    return found


def _branch(value: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """For ``oneOf``/``anyOf``, the first alternative ``value`` is valid against."""
    schema = _resolve(schema)
    for key in ("oneOf", "anyOf"):
        for option in schema.get(key, []):
            if _validator(option).is_valid(value):
                return _branch(value, option)
    return schema


def unknown_keys(value: Any, schema: dict[str, Any], path: str = "body") -> list[str]:
    """Keys of ``value`` the schema does not declare, at any depth."""
    schema = _branch(value, schema)
    if isinstance(value, dict):
        props = _properties(schema)
        if props is None:
            return []
        problems = [f"{path}.{k}" for k in value if k not in props]
        for key, item in value.items():
            if key in props:
                problems += unknown_keys(item, props[key], f"{path}.{key}")
        return problems
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [
            p for i, v in enumerate(value) for p in unknown_keys(v, schema["items"], f"{path}[{i}]")
        ]
    return []


def openapi_problems(body: Any, schema_name: str) -> list[str]:
    """Schema violations and undeclared keys of ``body`` against ``components/schemas/NAME``."""
    schema = {"$ref": f"#/components/schemas/{schema_name}"}
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _validator(schema).iter_errors(body)
    ]
    return errors + [f"undeclared key {k}" for k in unknown_keys(body, schema)]
