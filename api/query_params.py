"""Query-string forms of request models: comma-separated lists, and the GET form of MetricQuery.

The GET form's OpenAPI parameters are generated from MetricQuery, and `metric_query_from_params`
validates with that same model, so the two forms cannot drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.schemas import TagsPatch
from groklab.metric_answers import MetricQuery
from groklab.errors import InvalidInput
from groklab.settings import Settings, comma_list
from groklab.store.runs import patch_tags

_LISTS = ("run_ids", "status", "names", "group_by")


def metric_query_from_params(request: Request) -> MetricQuery:
    params = request.query_params
    unknown = set(params) - set(MetricQuery.model_fields)
    if unknown:
        raise InvalidInput(f"unknown query parameter {sorted(unknown)[0]}", field=sorted(unknown)[0])
    body: dict[str, Any] = {k: v for k, v in params.items() if v != ""}
    for listed in _LISTS:
        if listed in body:
            body[listed] = comma_list(body[listed]) or []
    if "where" in body:
        body["where"] = where_object(body["where"])
    try:
        return MetricQuery.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError([{**err, "loc": ("query", *err["loc"])} for err in exc.errors()]) from exc


def metric_query_parameters() -> list[dict[str, Any]]:
    """MetricQuery's fields as the GET form's query parameters, for the OpenAPI document.

    Lists travel comma-separated and `where` as a JSON object, so both are strings.
    """
    properties = MetricQuery.model_json_schema()["properties"]
    parameters: list[dict[str, Any]] = []
    for name, field in MetricQuery.model_fields.items():
        prop = properties[name]
        schema = next((s for s in prop.get("anyOf", [prop]) if s.get("type") != "null"), {})
        description = field.description or prop.get("title", name)
        if schema.get("type") == "array":
            items = schema.get("items", {})
            kinds = f"; each one of {', '.join(items['enum'])}" if "enum" in items else ""
            description += f" Comma-separated{kinds}."
            schema = {"type": "string"}
        elif schema.get("type") == "object":
            description += " A JSON object."
            schema = {"type": "string"}
        else:
            schema = {k: v for k, v in schema.items() if k not in ("title", "description", "default")}
            if field.default is not None:
                schema["default"] = field.default
        parameters.append({"name": name, "in": "query", "required": False, "description": description, "schema": schema})
    return parameters


def where_object(text: str | None) -> dict[str, Any] | None:
    """The `where` query parameter: a JSON object of dotted spec paths and scalar values."""
    if text is None or text == "":
        return None
    try:
        where = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput("where must be a JSON object", field="where") from exc
    if not isinstance(where, dict) or len(where) > 20:
        raise InvalidInput("where must be a JSON object of at most 20 paths", field="where")
    for path, value in where.items():
        if isinstance(value, (dict, list)):
            raise InvalidInput(f"where {path}: values are strings, numbers, booleans or null", field="where")
    return where


def apply_patch(target: Any, patch: TagsPatch, settings: Settings) -> None:
    """A PATCH of tags and note onto an experiment or a run, within the settings' bounds."""
    patch_tags(
        target,
        tags=patch.tags,
        note=patch.note,
        set_note="note" in patch.model_fields_set,
        max_tags=settings.max_tags,
        max_tag_length=settings.max_tag_length,
        max_note_length=settings.max_note_length,
    )
