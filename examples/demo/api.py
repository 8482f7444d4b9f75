"""The demo upstream: a small bookshop API (users, books, orders) for Stockade to stand in front of.

Run it alone with `python examples/demo/api.py --port 9000`; `examples/demo/openapi.yaml` is its contract.
It trusts the `X-Stockade-Principal` header the gateway injects to know who calls, so it must only be
reachable through the gateway (it binds to loopback). It is deliberately careless in two ways, marked
`DEMO FLAW`: no object-level authorization on orders, and a user endpoint that leaks secrets. The demo policy
(stockade.yaml) closes the leak at the gateway with the `openapi` stage, without touching this code; object-level
authorization is for a later Stockade feature.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stockade.clock import SYSTEM_CLOCK, Clock  # the project's injectable clock, so tests can fix timestamps

SEED = Path(__file__).with_name("seed.json")
MAX_LIMIT = 100
DEFAULT_LIMIT = 20
MAX_ID = 2**63 - 1
_DIGITS = re.compile(r"^[0-9]{1,19}$")
M = TypeVar("M", bound=BaseModel)

Text100 = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"\S")]
Text200 = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"\S")]
Tag = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,19}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class UserCreate(Strict):
    username: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{2,31}$")]
    name: Text100
    email: Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
    password: Annotated[str, StringConstraints(min_length=12, max_length=128)]


class BookFields(Strict):
    """What a PATCH may change; a PATCH is validated as the merged result, so bounds hold either way."""

    title: Text200
    author: Text100
    year: Annotated[int, Field(ge=1450, le=2100)]
    price_cents: Annotated[int, Field(ge=0, le=1_000_000)]
    stock: Annotated[int, Field(ge=0, le=100_000)] = 0
    tags: Annotated[list[Tag], Field(max_length=5)] = Field(default_factory=list)

    @field_validator("tags")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("tags must be unique")
        return v


class BookCreate(BookFields):
    isbn: Annotated[str, StringConstraints(pattern=r"^97[89][0-9]{10}$")]


class OrderLine(Strict):
    book_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    quantity: Annotated[int, Field(ge=1, le=10)]


class OrderCreate(Strict):
    items: Annotated[list[OrderLine], Field(min_length=1, max_length=20)]


class ApiError(Exception):
    """An RFC 9457 problem the API answers with; `errors` lists field-level problems."""

    def __init__(self, status: int, title: str, detail: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.errors = status, title, detail, errors


def problem(status: int, title: str, detail: str, errors: list[dict[str, str]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def _field(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(body)"


def invalid(exc: ValidationError) -> ApiError:
    errors = [
        {
            "field": _field(e["loc"]),
            "message": "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, "),
        }
        for e in exc.errors()
    ]
    return ApiError(422, "Unprocessable Content", "the request body failed validation", errors)


class Store:
    """The in-memory data, seeded from seed.json. Handlers never await while mutating, so no locks."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        seed = json.loads(SEED.read_text(encoding="utf-8"))
        self.users: dict[int, dict[str, Any]] = {u["id"]: u for u in seed["users"]}
        self.books: dict[int, dict[str, Any]] = {b["id"]: b for b in seed["books"]}
        self.orders: dict[int, dict[str, Any]] = {o["id"]: o for o in seed["orders"]}
        # Ids are never reused, even after a delete (a reused id would hand old references to new objects).
        self._last = {"users": max(self.users), "books": max(self.books), "orders": max(self.orders)}

    def new_id(self, table: str) -> int:
        self._last[table] += 1
        return self._last[table]

    def now(self) -> str:
        return datetime.fromtimestamp(self.clock.time(), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    def user_by_name(self, username: str) -> dict[str, Any] | None:
        return next((u for u in self.users.values() if u["username"] == username), None)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def public_user(u: dict[str, Any]) -> dict[str, Any]:
    return {k: u[k] for k in ("id", "username", "name", "role", "created_at")}


def account(u: dict[str, Any]) -> dict[str, Any]:
    return {**public_user(u), "email": u["email"]}


def order_view(o: dict[str, Any]) -> dict[str, Any]:
    total = sum(i["quantity"] * i["unit_price_cents"] for i in o["items"])
    return {**o, "items": [dict(i) for i in o["items"]], "total_cents": total}


def path_id(request: Request, name: str) -> int:
    raw = request.path_params[name]
    value = int(raw) if _DIGITS.match(raw) else 0
    if not 1 <= value <= MAX_ID:
        raise ApiError(400, "Bad Request", f"{name} must be an integer from 1 to {MAX_ID}", [_msg(name, raw)])
    return value


def _msg(name: str, raw: str) -> dict[str, str]:
    return {"field": name, "message": f"not a positive integer: {raw[:40]!r}"}


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = int(raw) if _DIGITS.match(raw) else low - 1
    if not low <= value <= high:
        message = f"must be an integer from {low} to {high}"
        raise ApiError(400, "Bad Request", f"query parameter {name} {message}", [{"field": name, "message": message}])
    return value


def page(request: Request, rows: list[dict[str, Any]]) -> dict[str, Any]:
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = query_int(request, "offset", 0, 0, 1_000_000)
    return {"items": rows[offset : offset + limit], "total": len(rows), "limit": limit, "offset": offset}


async def json_body(request: Request) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "Unsupported Media Type", "send the body as application/json")
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Bad Request", "the body is not valid JSON") from None


def validated(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


def caller(request: Request, store: Store) -> tuple[str | None, bool, dict[str, Any] | None]:
    """(principal id, anonymous?, user record) from the headers the gateway injects (and strips if a client
    sends them). A principal id that names a user is that user (an API key's consumer `alice` is user alice)."""
    principal = request.headers.get("x-stockade-principal")
    anonymous = request.headers.get("x-stockade-anonymous") == "true"
    user = None if principal is None or anonymous else store.user_by_name(principal)
    return principal, anonymous, user


def build_routes(store: Store) -> list[Route]:
    def book(request: Request) -> dict[str, Any]:
        found = store.books.get(path_id(request, "book_id"))
        if found is None:
            raise ApiError(404, "Not Found", "no such book")
        return found

    def user(request: Request) -> dict[str, Any]:
        found = store.users.get(path_id(request, "user_id"))
        if found is None:
            raise ApiError(404, "Not Found", "no such user")
        return found

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def me(request: Request) -> Response:
        principal, anonymous, u = caller(request, store)
        return JSONResponse({"principal": principal, "anonymous": anonymous, "user": account(u) if u else None})

    async def list_users(request: Request) -> Response:
        return JSONResponse(page(request, [public_user(u) for u in store.users.values()]))

    async def create_user(request: Request) -> Response:
        data = validated(UserCreate, await json_body(request))
        if store.user_by_name(data.username) or any(u["email"] == data.email for u in store.users.values()):
            raise ApiError(409, "Conflict", "that username or email is already registered")
        uid = store.new_id("users")
        new: dict[str, Any] = {"id": uid, "username": data.username, "name": data.name, "email": data.email}
        new |= {"role": "customer", "created_at": store.now(), "password_hash": hash_password(data.password)}
        store.users[uid] = new | {"internal_notes": ""}
        return JSONResponse(account(new), status_code=201, headers={"location": f"/users/{uid}"})

    async def get_user(request: Request) -> Response:
        # DEMO FLAW (excessive data exposure): the stored record goes out whole, with `email`, `password_hash`
        # and `internal_notes`; the spec promises only the public `User`. The demo policy's `openapi` stage, with
        # `responses: enforce`, strips the rest at the gateway.
        return JSONResponse(user(request))

    async def user_orders(request: Request) -> Response:
        # DEMO FLAW (broken object-level authorization): anyone may list anyone's orders; the gateway will
        # compare `owner` with the caller in a later issue.
        owner = user(request)["username"]
        return JSONResponse(page(request, [order_view(o) for o in store.orders.values() if o["owner"] == owner]))

    async def list_books(request: Request) -> Response:
        author = request.query_params.get("author")
        if author is not None and not 1 <= len(author) <= 100:
            message = "must be 1 to 100 characters"
            raise ApiError(
                400, "Bad Request", f"query parameter author {message}", [{"field": "author", "message": message}]
            )
        rows = [b for b in store.books.values() if author is None or author.lower() in b["author"].lower()]
        return JSONResponse(page(request, rows))

    async def create_book(request: Request) -> Response:
        data = validated(BookCreate, await json_body(request))
        if any(b["isbn"] == data.isbn for b in store.books.values()):
            raise ApiError(409, "Conflict", "a book with that isbn exists")
        new = {"id": store.new_id("books"), "isbn": data.isbn, **data.model_dump(exclude={"isbn"})}
        store.books[new["id"]] = new
        return JSONResponse(new, status_code=201, headers={"location": f"/books/{new['id']}"})

    async def get_book(request: Request) -> Response:
        return JSONResponse(book(request))

    async def update_book(request: Request) -> Response:
        current = book(request)
        patch = await json_body(request)
        if not isinstance(patch, dict) or not patch:
            why = "name at least one field to change" if isinstance(patch, dict) else "must be a JSON object"
            raise ApiError(422, "Unprocessable Content", "nothing to change", [{"field": "(body)", "message": why}])
        fields = validated(BookFields, {k: current[k] for k in BookFields.model_fields} | patch)
        current.update(fields.model_dump())
        return JSONResponse(current)

    async def delete_book(request: Request) -> Response:
        store.books.pop(book(request)["id"])
        return Response(status_code=204)

    async def get_order(request: Request) -> Response:
        # DEMO FLAW (broken object-level authorization): no check that the caller owns the order.
        found = store.orders.get(path_id(request, "order_id"))
        if found is None:
            raise ApiError(404, "Not Found", "no such order")
        return JSONResponse(order_view(found))

    async def create_order(request: Request) -> Response:
        principal, _, u = caller(request, store)
        if principal is None:
            raise ApiError(401, "Unauthorized", "no caller identity: call this API through the gateway")
        if u is None:
            raise ApiError(403, "Forbidden", "only a registered customer can place an order")
        data = validated(OrderCreate, await json_body(request))
        lines = []
        for i, line in enumerate(data.items):
            b = store.books.get(line.book_id)
            if b is None:
                field = f"items[{i}].book_id"
                raise ApiError(
                    422, "Unprocessable Content", "no such book", [{"field": field, "message": "no such book"}]
                )
            if b["stock"] < line.quantity:
                raise ApiError(409, "Conflict", f"only {b['stock']} left of book {b['id']}")
            lines.append((b, line.quantity))
        for b, quantity in lines:
            b["stock"] -= quantity
        items = [
            {"book_id": b["id"], "title": b["title"], "quantity": q, "unit_price_cents": b["price_cents"]}
            for b, q in lines
        ]
        new = {"id": store.new_id("orders"), "owner": u["username"], "status": "pending", "created_at": store.now()}
        new["items"] = items
        store.orders[new["id"]] = new
        return JSONResponse(order_view(new), status_code=201, headers={"location": f"/orders/{new['id']}"})

    async def admin_stats(request: Request) -> Response:
        units = sum(b["stock"] for b in store.books.values())
        return JSONResponse(
            {"users": len(store.users), "books": len(store.books), "orders": len(store.orders), "stock_units": units}
        )

    async def admin_reset(request: Request) -> Response:
        store.reset()
        return Response(status_code=204)

    def r(path: str, endpoint: Callable[[Request], Awaitable[Response]], *methods: str) -> Route:
        return Route(path, endpoint, methods=list(methods))

    return [
        r("/healthz", healthz, "GET"),
        r("/me", me, "GET"),
        r("/users", list_users, "GET"),
        r("/users", create_user, "POST"),
        r("/users/{user_id}", get_user, "GET"),
        r("/users/{user_id}/orders", user_orders, "GET"),
        r("/books", list_books, "GET"),
        r("/books", create_book, "POST"),
        r("/books/{book_id}", get_book, "GET"),
        r("/books/{book_id}", update_book, "PATCH"),
        r("/books/{book_id}", delete_book, "DELETE"),
        r("/orders", create_order, "POST"),
        r("/orders/{order_id}", get_order, "GET"),
        r("/admin/stats", admin_stats, "GET"),
        r("/admin/reset", admin_reset, "POST"),
    ]


def create_app(clock: Clock = SYSTEM_CLOCK) -> Starlette:
    """The ASGI app over a freshly seeded store."""

    async def on_api_error(request: Request, exc: ApiError) -> Response:
        return problem(exc.status, exc.title, exc.detail, exc.errors)

    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        # Starlette's own 404/405 (no route here), rendered like every other error of this API.
        status = HTTPStatus(exc.status_code)
        response = problem(status, status.phrase, "no such resource" if status == 404 else status.description)
        response.headers.update(exc.headers or {})
        return response

    async def on_crash(request: Request, exc: Exception) -> Response:
        return problem(500, "Internal Server Error", "unexpected error")  # never a traceback to the client

    handlers = {ApiError: on_api_error, HTTPException: on_http_error, Exception: on_crash}
    return Starlette(routes=build_routes(Store(clock)), exception_handlers=handlers)  # type: ignore[arg-type]


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="The Stockade demo upstream API (users, books, orders).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
