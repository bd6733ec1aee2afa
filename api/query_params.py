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

from api.schemas import MetricQuery
from groklab.errors import InvalidInput
from groklab.settings import comma_list

_LISTS = ("run_ids", "status", "names")


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
        try:
            body["where"] = json.loads(body["where"])
        except json.JSONDecodeError as exc:
            raise InvalidInput("where must be a JSON object", field="where") from exc
    try:
        return MetricQuery.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("query", *err["loc"])} for err in exc.errors()]
        ) from exc


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
        parameters.append(
            {"name": name, "in": "query", "required": False, "description": description, "schema": schema}
        )
    return parameters
