"""RFC 9457 problem+json for every error the API returns."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.validation import user_errors

PROBLEM = "application/problem+json"
TITLES = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 409: "Conflict", 413: "Payload too large",
          415: "Unsupported media type", 422: "Invalid input", 429: "Too many requests", 503: "Unavailable"}


class ProblemFieldError(BaseModel):
    loc: list[str | int] = Field(description="where: body|query|path|header, then the field's path")
    msg: str
    type: str | None = None


class ProblemDetail(BaseModel):
    """RFC 9457 problem document: every error answer has this shape."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[ProblemFieldError] | None = Field(None, description="for 422: one entry per bad field")


DESCRIPTIONS = {400: "malformed request", 401: "no API key, or an unknown one", 404: "no such resource for this tenant",
                409: "conflicts with the resource's state", 413: "too large for a limit; `detail` names it",
                415: "wrong Content-Type", 422: "invalid input; `errors` names each field",
                429: "a tenant limit is reached; see Retry-After", 503: "a dependency (Redis, the queue) is away"}


def problems(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes, each a problem+json document; pass e.g.
    `_409="already ended"` to say what a code means for one route."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"description": descriptions.get(f"_{code}", DESCRIPTIONS.get(code, TITLES.get(code, "error"))),
                     "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}}}
    return out


class Problem(Exception):
    """Raise anywhere in a route to answer with a problem document."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, errors, headers


def invalid(loc: tuple[str | int, ...] | list[str | int], msg: str) -> Problem:
    """A 422 naming one field (loc starts with 'body', 'query', 'path' or 'header')."""
    return invalid_fields([{"loc": list(loc), "msg": msg}])


def _field_path(loc: list[Any]) -> str:
    return ".".join(str(x) for x in loc[1:]) or (str(loc[0]) if loc else "")


def invalid_fields(errors: list[dict[str, Any]]) -> Problem:
    """A 422 listing every bad field (each error: loc starting with 'body'/'query'/…, msg); the detail
    names the first five."""
    return Problem(422, "; ".join(f"{_field_path(e['loc'])}: {e['msg']}" for e in errors[:5]), errors)


def problem_response(status: int, detail: str, errors: list[dict[str, Any]] | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status,
                            "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


# Paths that answer without an API key (probes, and the catalog, which lists only the registries).
OPEN_PATHS = ("/healthz", "/readyz", "/v1/catalog", "/openapi.json", "/docs")


def _document_common_problems(path: str, op: dict[str, Any]) -> None:
    """Answers every operation of a kind can give, documented once here rather than on each route:
    401 (key missing or unknown), 404 (an id in the path that this tenant does not have), 400 (a body
    that is not what its Content-Type says), and 422 as the problem document it really is."""
    responses = op.setdefault("responses", {})
    wanted = [422] if "422" in responses else []
    if path.startswith("/v1/") and not path.startswith(OPEN_PATHS):
        wanted.append(401)
    if "{" in path:
        wanted.append(404)
    if "requestBody" in op:
        wanted.append(400)
    for code, doc in problems(*wanted).items():
        described = responses.get(str(code), {}).get("description")
        if not described or described == "Validation Error":  # FastAPI's default 422 text
            described = doc["description"]
        responses[str(code)] = {**doc, "description": described}


def _with_problem_schemas(app: FastAPI) -> None:
    """`problems()` refers to ProblemDetail by $ref: put it (and what it uses) into the schema's components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        defs = ProblemDetail.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.pop("$defs", {}))
        components["ProblemDetail"] = defs
        for path, ops in schema.get("paths", {}).items():
            for op in ops.values():
                _document_common_problems(path, op)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    _with_problem_schemas(app)

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = user_errors(exc.errors())
        problem = invalid_fields(errors)
        return problem_response(422, problem.detail, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))
