"""MkDocs hook: writes the run-spec and HTTP API reference pages from the code at build time.

The pages come from the pydantic models (engine/spec.py, engine/kinds/) and the app's OpenAPI
schema (api.main.create_app().openapi()), so a field or a route added in code appears in the docs
with no hand edit, and nothing hand-written beside the code can drift from it.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files
from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

ROOT = Path(__file__).resolve().parents[2]
# `mkdocs build` runs from the repository root, but the hook must import this checkout's code
# whatever the interpreter's path says (a shared virtualenv may hold another copy of groklab).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RUN_SPEC_PAGE = "reference/run-spec.md"
HTTP_API_PAGE = "reference/http-api.md"


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def _type_text(annotation: Any, models: list[type[BaseModel]]) -> str:
    """A type as a reader writes it: `int`, `"add" | "subtract"`, `list[PhaseSpec]`, links to models."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0], models)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_text(a, models) for a in args)
    if origin in (list, tuple, set, frozenset):
        inner = ", ".join(_type_text(a, models) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if origin is dict:
        return f"dict[{', '.join(_type_text(a, models) for a in args)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation not in models:
            models.append(annotation)
        return f"[{annotation.__name__}](#{_anchor(annotation)})"
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(field: Any) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:  # a factory that takes the validated data
            return "computed"
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        # A nested model's defaults are its own table's defaults: link there, do not repeat them.
        return f"[its defaults](#{_anchor(type(value))})"
    text = json.dumps(to_jsonable_python(value, exclude_none=True), separators=(", ", ": "))
    return f"`{text}`" if len(text) <= 40 else f"`{text[:37]}...`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def model_table(model: type[BaseModel], models: list[type[BaseModel]]) -> str:
    """One model's fields as a markdown table: name, type, default, description. A model that
    extends another table's model (ExperimentSpec extends RunSpec) lists only what it adds."""
    doc = _cell(model.__doc__ or "") if model.__doc__ and model.__doc__ != BaseModel.__doc__ else ""
    inherited: dict[str, Any] = {}
    for parent in model.__mro__[1:]:
        if parent in models and issubclass(parent, BaseModel):
            inherited = parent.model_fields
            doc += f" Every field of [{parent.__name__}](#{_anchor(parent)}), and:"
            break
    lines = [
        f"### {model.__name__} {{#{_anchor(model)}}}",
        "",
        doc,
        "",
        "| field | type | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for name, field in model.model_fields.items():
        if name in inherited:
            continue
        alias = field.alias or name
        lines.append(
            f"| `{alias}` | {_type_text(field.annotation, models)} | {_default_text(field)} | {_cell(field.description or '')} |"
        )
    return "\n".join(lines) + "\n"


def models_section(roots: list[type[BaseModel]], models: list[type[BaseModel]]) -> str:
    """Tables for the roots and every model they reach that `models` (the page's tables so far)
    does not hold yet, each once, in the order first reached; appends them to `models`."""
    index = len(models)
    models.extend(root for root in roots if root not in models)
    parts = []
    while index < len(models):  # model_table appends the models a table links to
        parts.append(model_table(models[index], models))
        index += 1
    return "\n".join(parts)


def run_spec_page() -> str:
    from engine.kinds import kinds
    from engine.spec import ExperimentSpec, RunSpec

    models: list[type[BaseModel]] = []
    requests = [kind.request for kind in kinds().values() if kind.request is not ExperimentSpec]
    kind_lines = "\n".join(f"- `{name}`: [{kind.request.__name__}](#{_anchor(kind.request)})" for name, kind in kinds().items())
    return f"""# Run spec reference

*Generated at build time from the pydantic models in `engine/spec.py` and `engine/kinds/` by
`docs/hooks/reference.py`: edit the code, not this page.* Every default is the paper's setup
([The paper](../paper.md)); what the fields mean together is told in [Concepts](../concepts.md).

## One run: RunSpec

{models_section([RunSpec], models)}

## An experiment: a sweep or one of the paper's kinds

A body without `kind` is an [ExperimentSpec](#experimentspec): a RunSpec plus `seeds` and
`sweep`. With `kind`, it is that kind's request:

{kind_lines}

{models_section([ExperimentSpec, *requests], models)}
"""


def _schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#schema-{name.lower()})"
    if "anyOf" in schema or "oneOf" in schema:
        return " \\| ".join(_schema_type(s) for s in schema.get("anyOf", schema.get("oneOf")))
    if "enum" in schema:
        return " \\| ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array[{_schema_type(schema.get('items', {}))}]"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict) and schema["additionalProperties"]:
        return f"object[string → {_schema_type(schema['additionalProperties'])}]"
    return str(kind)


def _response_body(response: dict[str, Any]) -> str:
    """The types of a response's bodies by media type ('' for none)."""
    bodies = [
        f"`{media}`" + (f": {_schema_type(content['schema'])}" if content.get("schema") else "")
        for media, content in response.get("content", {}).items()
    ]
    return ", ".join(bodies)


def http_api_page() -> str:
    from api.main import create_app

    spec = create_app().openapi()
    parts = [
        """# HTTP API reference

*Generated at build time from the app's OpenAPI schema (`api.main.create_app().openapi()`) by
`docs/hooks/reference.py`: edit the routes, not this page.* A running server serves the same schema
at `/openapi.json` and an interactive view at `/docs`. The conventions every route shares
(keys, errors, pagination, limits) are in [the API guide](../api.md).
"""
    ]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            # FastAPI's summary is the function name in words; the docstring, where there is one, says more.
            description = operation.get("description", "").strip() or f"{operation.get('summary', '')}."
            parts.append(f"## `{method.upper()} {path}`\n\n{description}\n")
            parameters = operation.get("parameters", [])
            if parameters:
                parts.append(
                    "| parameter | in | type | required | default | description |\n| --- | --- | --- | --- | --- | --- |"
                )
                for parameter in parameters:
                    schema = parameter.get("schema", {})
                    default = f"`{json.dumps(schema['default'])}`" if "default" in schema else ""
                    description = parameter.get("description") or schema.get("description") or ""
                    parts.append(
                        f"| `{parameter['name']}` | {parameter['in']} | {_schema_type(schema)} | "
                        f"{'yes' if parameter.get('required') else 'no'} | {default} | {_cell(description)} |"
                    )
                parts.append("")
            body = operation.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                parts.append(f"Body (`{media}`): {_schema_type(content.get('schema', {}))}\n")
            parts.append("| status | meaning | body |\n| --- | --- | --- |")
            parts.extend(
                f"| `{code}` | {_cell(response.get('description', ''))} | {_response_body(response)} |"
                for code, response in operation["responses"].items()
            )
            parts.append("")
    parts.append("## Schemas\n")
    for name, schema in spec["components"]["schemas"].items():
        parts.append(f"### {name} {{#schema-{name.lower()}}}\n\n{_cell(schema.get('description', ''))}\n")
        properties = schema.get("properties", {})
        if properties:
            required = set(schema.get("required", []))
            parts.append("| field | type | required | description |\n| --- | --- | --- | --- |")
            for prop, prop_schema in properties.items():
                parts.append(
                    f"| `{prop}` | {_schema_type(prop_schema)} | {'yes' if prop in required else 'no'} "
                    f"| {_cell(prop_schema.get('description', ''))} |"
                )
            parts.append("")
        elif "oneOf" in schema or "anyOf" in schema:
            parts.append(f"One of: {_schema_type(schema)}\n")
    return "\n".join(parts)


def on_files(files: Files, config: Any) -> Files:
    for page, render in ((RUN_SPEC_PAGE, run_spec_page), (HTTP_API_PAGE, http_api_page)):
        files.append(File.generated(config, page, content=render()))
    return files
