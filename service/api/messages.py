"""Validation errors said as what to fix: pydantic's error list becomes one message
('<field>: <what is wrong>; <what to send>') plus a short ``detail`` list, using the matched
route's body model and parameters for bounds, accepted fields and examples."""
from __future__ import annotations

import json
import re
import typing
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel

from search.exports import EXPORTERS

# --------------------------------------------------------------------------- validation messages
_SOURCES = ("body", "query", "path", "header")
_UNION_TAG = re.compile(r"^[a-z-]+\[.*\]$|^(int|float|str|bool|none)$")  # pydantic's union-member loc parts
_EXPECTED = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
             "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
             "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
             "string_unicode": "a UTF-8 string", "dict_type": "a JSON object", "model_type": "a JSON object",
             "model_attributes_type": "a JSON object", "list_type": "a JSON list", "none_required": "null"}
_EXAMPLES = {"budgets": 'e.g. {"avg_bits": 3.3} (or a list of such objects)',
             "model_id": "the id that POST /v1/models returned",
             "ref": 'e.g. "builtin:digits-cnn"',
             "format": "one of " + ", ".join(EXPORTERS)}


def _where(loc: typing.Sequence) -> list:
    """The caller's view of a pydantic location: no 'body'/'query' prefix, no union-member tags."""
    parts = list(loc)
    if parts and parts[0] in _SOURCES:
        parts = parts[1:]
    return [p for p in parts if not (isinstance(p, str) and _UNION_TAG.match(p))]


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``Data``, ``Data | None``, ``list[Data]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (m := _inner_model(arg)) is not None:
            return m
    return None


def _field(root: type[BaseModel] | None, where: list) -> Any:
    """The FieldInfo at ``where`` below a body model (list indexes skipped), or None."""
    model, info = root, None
    for part in where:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        info = model.model_fields[part]
        model = _inner_model(info.annotation)
    return info


def _type_phrase(annotation: Any) -> str:
    """What a field accepts, in words (for 'missing' messages)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if args and origin is not list and origin is not dict:  # a union
        return " or ".join(_type_phrase(a) for a in args if a is not type(None))
    simple = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a JSON list",
              dict: "a JSON object"}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a JSON object"
    return simple.get(origin or annotation, "a value")


def _bounds(info: Any) -> tuple[Any, Any]:
    lo = hi = None
    for m in getattr(info, "metadata", ()):
        lo = next((v for v in (getattr(m, "ge", None), getattr(m, "gt", None)) if v is not None), lo)
        hi = next((v for v in (getattr(m, "le", None), getattr(m, "lt", None)) if v is not None), hi)
    return lo, hi


def _short(value: Any) -> str:
    """A value for a message, JSON-like and at most 40 characters (query numbers stay bare)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value if re.fullmatch(r"-?\d+(\.\d+)?", value) else repr(value)
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _sibling_fields(root: type[BaseModel] | None, parent: list) -> list[str]:
    """The fields accepted next to an unknown one (for 'unknown field' messages)."""
    model = root
    if root is not None and parent:
        info = _field(root, parent)
        model = _inner_model(info.annotation) if info is not None else None
    return list(model.model_fields) if model is not None else []


def _field_for(e: dict, where: list, root: type[BaseModel] | None, params: dict[str, Any]) -> Any:
    """The FieldInfo an error is about: a body field (walked from the body model) or a
    query/header/path parameter of the route."""
    loc = e.get("loc", ())
    if root is not None and (not loc or loc[0] not in _SOURCES or loc[0] == "body"):
        return _field(root, where)
    return params.get(str(where[0])) if len(where) == 1 else None


_BOUND_OPS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _out_of_range(name: str, typ: str, ctx: dict, got: Any, info: Any) -> str:
    """A number outside its bounds: both bounds when the field declares both."""
    lo, hi = _bounds(info)
    if lo is not None and hi is not None:
        return f"{name}: must be between {lo} and {hi}, got {_short(got)}"
    return f"{name}: must be {_BOUND_OPS[typ]} {next(iter(ctx.values()), '?')}, got {_short(got)}"


def _bad_length(name: str, typ: str, ctx: dict) -> str:
    unit = "characters" if typ.startswith("string") else "items"
    if "short" in typ and ctx.get("min_length") == 1:
        return f"{name}: must not be empty"
    limit = f"at most {ctx.get('max_length')}" if "long" in typ else f"at least {ctx.get('min_length')}"
    return f"{name}: must have {limit} {unit}"


def _not_in_pattern(name: str, ctx: dict, got: Any) -> str:
    alts = re.fullmatch(r"\^\((.*)\)\$", ctx.get("pattern", ""))
    want = "one of " + ", ".join(alts.group(1).split("|")) if alts else f"a string matching {ctx.get('pattern')}"
    return f"{name}: must be {want}, got {_short(got)}"


def _missing(name: str, where: list, info: Any) -> str:
    if not where:
        return "the request body is missing; send a JSON object (Content-Type: application/json)"
    hint = _EXAMPLES.get(str(where[-1])) or (_type_phrase(info.annotation) if info is not None else "a value")
    return f"{name}: missing; give {hint}"


def _describe(e: dict, root: type[BaseModel] | None, params: dict[str, Any]) -> str:
    """One pydantic error as '<field>: <what is wrong>; <what to send>'."""
    where = _where(e.get("loc", ()))
    name = ".".join(map(str, where)) or "the request body"
    typ, ctx, got = e.get("type", ""), e.get("ctx") or {}, e.get("input")
    if typ == "json_invalid":
        return f"the request body is not valid JSON ({ctx.get('error', e.get('msg'))}); send a JSON object"
    if typ == "missing":
        return _missing(name, where, _field_for(e, where, root, params))
    if typ == "extra_forbidden":
        fields = _sibling_fields(root, where[:-1])
        return f"{name}: unknown field; use one of {', '.join(fields)}" if fields else f"{name}: unknown field; remove it"
    if typ in _EXPECTED:
        how = " (Content-Type: application/json)" if not where else ""
        return f"{name}: expected {_EXPECTED[typ]}{how}, got {_short(got)}"
    if typ in _BOUND_OPS:
        return _out_of_range(name, typ, ctx, got, _field_for(e, where, root, params))
    if typ in ("string_too_long", "too_long", "string_too_short", "too_short"):
        return _bad_length(name, typ, ctx)
    if typ in ("literal_error", "enum"):
        return f"{name}: must be {ctx.get('expected')}, got {_short(got)}"
    if typ == "string_pattern_mismatch":
        return _not_in_pattern(name, ctx, got)
    msg = str(e.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg[len(prefix):] if msg.startswith(prefix) else msg
    return f"{name}: {msg}" if where else msg


def validation_message(errors: list[dict], root: type[BaseModel] | None = None,
                        params: dict[str, Any] | None = None) -> str:
    """The first error, said as what to fix. A value that failed every member of a union
    (``budgets: "x"``) lists what each member accepts."""
    first, params = errors[0], params or {}
    if first.get("type") in _EXPECTED:
        loc = _where(first.get("loc", ()))
        kinds = [_EXPECTED[e["type"]] for e in errors if e.get("type") in _EXPECTED and _where(e.get("loc", ())) == loc]
        if len(set(kinds)) > 1:
            name = ".".join(map(str, loc)) or "the request body"
            return f"{name}: expected {' or '.join(dict.fromkeys(kinds))}, got {_short(first.get('input'))}"
    return _describe(first, root, params)


def route_fields(route: Any) -> tuple[type[BaseModel] | None, dict[str, Any]]:
    """The body model and the query/header/path parameters (by name) of the matched route."""
    if not isinstance(route, APIRoute):
        return None, {}
    params: dict[str, Any] = {}
    stack = [route.dependant]
    while stack:
        d = stack.pop()
        stack += d.dependencies
        for f in (*d.query_params, *d.header_params, *d.path_params):
            for key in {f.name, f.alias, f.alias.replace("_", "-")}:
                params[key] = f.field_info
    body = route.body_field.field_info.annotation if route.body_field is not None else None
    return (body if isinstance(body, type) and issubclass(body, BaseModel) else None), params


def validation_detail(errors: list[dict], root: type[BaseModel] | None, params: dict[str, Any]) -> list[dict]:
    return [{"loc": list(e.get("loc", ())), "msg": _describe(e, root, params), "type": e.get("type")}
            for e in errors[:20]]
