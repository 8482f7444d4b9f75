"""`openapi`: the API's own OpenAPI document as the enforced contract, for requests and (optionally) responses."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from stockade.openapi.errors import Problem, problems, summary
from stockade.openapi.media import PartsTooLarge, essence, media_kind, pick
from stockade.openapi.operations import Operation, Unchecked
from stockade.openapi.params import Malformed
from stockade.openapi.request import body_value, has_body, parameters
from stockade.openapi.responses import check_response
from stockade.openapi.spec import Options, Spec, load_spec
from stockade.pipeline.context import RequestContext
from stockade.pipeline.headers import DuplicateHeaderError
from stockade.pipeline.phase import Phase
from stockade.pipeline.response import Response
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import CONTINUE, Continue, Deny, Finding
from stockade.security.readings import foreign_charset

OPERATION_KEY = "openapi.operation"  # ctx.state: the matched Operation, for the response hook and later stages


class OpenApiConfig(StageConfig):
    spec: str = Field(min_length=1)  # path to the spec (YAML or JSON), relative to the config file
    responses: Literal["off", "monitor", "enforce"] = "off"
    # enforce: `strip` removes undeclared and writeOnly properties (502 only if the rest is invalid);
    # `reject` answers 502 response.invalid for any deviation.
    response_action: Literal["strip", "reject"] = "strip"
    requests: Literal["enforce", "monitor"] = "enforce"
    unknown_operations: Literal["deny", "monitor"] = "deny"
    deprecated: Literal["allow", "monitor", "deny"] = "allow"  # `deprecated: true` operations (zombie endpoints)
    strict: bool = False  # close every object schema that lists properties, and refuse undeclared query keys
    base_path: str | None = Field(default=None, pattern=r"^/[^?#]*$")  # overrides the spec's `servers`
    # With `responses` on: the largest response body checked against a schema. Checking runs on the event loop
    # (filtering a leaky 1 MiB list of objects costs about 0.4 s of CPU), so a larger one is not checked: under
    # `enforce` it is refused (502 response.too_large), under `monitor` it passes with a finding. Responses no
    # schema applies to are not limited by it.
    max_response_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # The largest request body validated (413 openapi.body_too_large beyond it; under `requests: monitor`, a
    # finding). Parsing and validating run on the event loop too: a 10 MiB array of small objects, which the
    # route's default body limit lets in, held the worker about 1 s. It bounds JSON and form bodies; uploads
    # (multipart, octet streams) keep the route's limit.
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)


# Media kinds whose whole body becomes a document to validate (what max_request_bytes bounds); of a multipart
# body only the parts that are parsed count (media.decode_multipart): its files keep the route's body limit.
_PARSED_WHOLE = frozenset({"json", "form", "text"})


class OpenApiStage:
    """Matches the request to a spec operation (404 `openapi.unknown_operation` if none), validates its
    parameters and body (400 malformed, 415 undeclared media type, 422 invalid) and, if configured, checks
    and filters the JSON response."""

    id: ClassVar[str] = "openapi"
    phase: ClassVar[Phase] = Phase.VALIDATE
    Config: ClassVar[type[StageConfig]] = OpenApiConfig

    def __new__(cls, config: OpenApiConfig, env: StageEnv) -> OpenApiStage:
        # Only a stage that checks responses has a response hook: without one the proxy forwards the upstream
        # head verbatim and never buffers a body.
        return super().__new__(_ResponseChecking if config.responses != "off" and cls is OpenApiStage else cls)

    def __init__(self, config: OpenApiConfig, env: StageEnv) -> None:
        path = Path(config.spec)
        if not path.is_absolute():
            path = env.base_dir / path
        options = Options(strict=config.strict, responses=config.responses != "off", base_path=config.base_path)
        self.spec: Spec = load_spec(path, options, env.services.shared)
        gateway = env.services.config
        if gateway is not None and not gateway.limits.path_parameters and (where := self.spec.matrix_parameter()):
            raise ValueError(
                f"{where} is a matrix-style path parameter: paths with ';' are refused unless "
                "`limits.path_parameters: true`"
            )
        self.strict = config.strict
        self._max_request = config.max_request_bytes
        self.monitor_requests = config.requests == "monitor"
        self.monitor_unknown = config.unknown_operations == "monitor"
        self.deprecated = config.deprecated
        self.responses = config.responses
        self.reject_responses = config.response_action == "reject"
        checks_responses = config.responses != "off"
        # Response checks need the whole body as sent: ask the upstream for no content coding and no range (a
        # 206 part of a document cannot be checked, and would carry what the whole one has filtered out).
        self._allow = (
            Continue(remove_headers=("accept-encoding", "range", "if-range")) if checks_responses else CONTINUE
        )

    async def check(self, ctx: RequestContext) -> Continue | Deny:
        found = self.spec.match(ctx.path, ctx.method)
        if found is None:
            detail = f"{ctx.method} {ctx.path[:200]} is not an operation of the spec"
            if self.monitor_unknown:
                return Continue(findings=(Finding("openapi.unknown_operation", "medium", detail),))
            return Deny(404, "openapi.unknown_operation", detail=detail)
        op, path_values = found
        ctx.state[OPERATION_KEY] = op
        if op.deprecated and self.deprecated != "allow":
            detail = f"{op.operation_id} is deprecated"
            if self.deprecated == "monitor":
                ctx.findings.append(Finding("openapi.deprecated_operation", "low", detail))
            else:
                return Deny(404, "openapi.unknown_operation", detail=detail)
        charset = foreign_charset(ctx.headers.get("content-type"))
        if charset is not None:
            # Checked on every request, with a body or not: Django decodes the query string in it too.
            detail = f"{op.operation_id}: charset {charset}: requests are validated as UTF-8 only"
            return self._deny(Deny(415, "openapi.unsupported_media_type", detail=detail))
        extra: list[Problem] = []
        try:
            instance = parameters(op, ctx, path_values, self.strict, extra)
        except Malformed as exc:
            return self._fail(op, 400, "openapi.bad_parameter", [{"pointer": exc.pointer, "rule": exc.rule}])
        check = op.check
        if op.declares_body or has_body(ctx):
            body = await ctx.read_body() if has_body(ctx) else b""
            if body:
                try:
                    content_type = ctx.headers.get_single("content-type") or ""
                except DuplicateHeaderError:
                    return Deny(400, "http.duplicate_header", detail="more than one Content-Type")
                media = essence(content_type)
                key = pick(op.bodies, media)
                rule = op.bodies[key] if key is not None else None
                if rule is None or not rule.reads(media):
                    why = "is not declared" if rule is None else "cannot be validated against the declared schema"
                    detail = f"{op.operation_id}: content type {media[:100] or 'none'} {why}"
                    return self._deny(Deny(415, "openapi.unsupported_media_type", detail=detail))
                if len(body) > self._max_request and media_kind(media) in _PARSED_WHOLE:
                    detail = f"{op.operation_id}: body of {len(body)} bytes, over max_request_bytes: not validated"
                    return self._deny(Deny(413, "openapi.body_too_large", detail=detail))
                try:
                    present, value = body_value(rule, body, content_type, ctx, self._max_request)
                except Malformed as exc:
                    return self._fail(op, 400, "openapi.malformed_body", [{"pointer": exc.pointer, "rule": exc.rule}])
                except PartsTooLarge:
                    detail = f"{op.operation_id}: multipart fields over max_request_bytes (files aside): not validated"
                    return self._deny(Deny(413, "openapi.body_too_large", detail=detail))
                if present:
                    instance["body"] = value
                    check = rule.check
            elif op.body_required:
                extra.append({"pointer": "/body", "rule": "required"})
        try:
            if check.validator.is_valid(instance) and not extra:
                return self._allow
            found_problems = extra + problems(check.validator.iter_errors(instance), check.schema)
        except ValueError:  # the validator's own recursion limit, on a value nested hundreds deep
            return self._fail(op, 400, "openapi.malformed_body", [{"pointer": "/body", "rule": "too_deep"}])
        return self._fail(op, 422, "openapi.invalid_request", found_problems)

    def _fail(self, op: Operation, status: int, reason: str, found: list[Problem]) -> Continue | Deny:
        detail = f"{op.operation_id}: {summary(found)}"
        if self.monitor_requests:
            return Continue(findings=(Finding(reason, "medium", detail),))
        return Deny(status, reason, detail=detail, extra={"errors": found})

    def _deny(self, verdict: Deny) -> Continue | Deny:
        if self.monitor_requests:
            return Continue(findings=(Finding(verdict.reason, "medium", verdict.detail),))
        return verdict


class _ResponseChecking(OpenApiStage):
    """The `openapi` stage with `responses: monitor|enforce`: also checks (and filters) JSON responses."""

    needs_response_body = True

    def __init__(self, config: OpenApiConfig, env: StageEnv) -> None:
        super().__init__(config, env)
        self._max_checked = config.max_response_bytes  # gates the check only, never what the route may answer

    def on_response(self, ctx: RequestContext, response: Response) -> None:
        op = ctx.state.get(OPERATION_KEY)
        body = response.body
        if op is None or body is None or (not body and response.status in (204, 304)):
            return  # 204 and 304 have no content to check, whatever their Content-Type says
        if sum(1 for name, _ in response.headers if name == "content-type") > 1:
            # The check would follow the first and a client may follow another (text/plain, then the JSON that
            # carries what the filter would have removed): fail closed.
            self._invalid(ctx, response, "repeated Content-Type")
            return
        media = essence(response.get("content-type"))
        rule = op.response_rule(response.status, media)
        if rule is Unchecked.PAGE:
            rule = (op.json_rule(response.status) or Unchecked.FORWARD) if _looks_like_json(body) else Unchecked.FORWARD
        if isinstance(rule, Unchecked):
            if rule is not Unchecked.FORWARD and body:  # an empty body has nothing to leak
                self._invalid(
                    ctx,
                    response,
                    f"{op.operation_id} {response.status}: media type {media[:100] or 'none'} {rule.value}",
                )
            return  # otherwise no schema is declared for this status and media type: passes unchanged
        if len(body) > self._max_checked:
            detail = f"{op.operation_id} {response.status}: {len(body)} bytes, over max_response_bytes: not checked"
            if self.responses == "monitor":
                ctx.findings.append(Finding("openapi.response_unchecked", "medium", detail))
            else:
                response.reject(502, "response.too_large", detail=detail)
            return
        checked = check_response(rule, body, response.get("content-encoding"))
        if not checked.problems:
            return
        detail = f"{op.operation_id} {response.status}: {summary(checked.problems)}"
        if self.responses == "monitor":
            ctx.findings.append(Finding("openapi.response_invalid", "medium", detail))
        elif checked.fatal or self.reject_responses:
            response.reject(502, "response.invalid", detail=detail)
        elif checked.body is not None:
            ctx.findings.append(Finding("openapi.response_filtered", "low", detail))
            response.replace_body(checked.body)

    def _invalid(self, ctx: RequestContext, response: Response, detail: str) -> None:
        """A response that cannot go out checked: a finding under `monitor`, 502 under `enforce`."""
        if self.responses == "monitor":
            ctx.findings.append(Finding("openapi.response_invalid", "medium", detail))
        else:
            response.reject(502, "response.invalid", detail=detail)


def _looks_like_json(body: bytes) -> bool:
    """Whether a body labelled otherwise is a JSON object or array (what the filter must see)."""
    start = body.lstrip()[:1]
    return start in (b"{", b"[")


_: type[Stage] = OpenApiStage
_r: type[Stage] = _ResponseChecking
