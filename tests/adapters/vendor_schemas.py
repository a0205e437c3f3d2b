r"""Check request bodies against the vendors' published request types.

Both official SDKs publish their request bodies as typed params (``TypedDict``\s generated
from the vendors' API specifications): Anthropic's ``MessageCreateParamsNonStreaming``,
OpenAI's chat and completions ``CompletionCreateParamsNonStreaming``. They are walked
recursively: every key must be declared, required keys present, literals and scalar types
right. Using what the installed SDKs publish (rather than a copy of a specification) keeps
the check inside the project and in step with the SDK versions we run.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any

import typing_extensions

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
