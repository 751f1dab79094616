"""The HTTP job API (api.service, Type=notify): `python -m app.api`. docs/API.md is its contract.

FastAPI served by uvicorn (h11) over HTTPS, one process. Clients send a bearer token; the clients
file (APP_API_CLIENTS_FILE, JSON rendered by Ansible) holds each client's SHA-256 of its token
and the tasks it may submit. The file is read once at start: a change needs a restart (the role
restarts the unit). A missing or malformed file, like a bad APP_API_* setting, stops the start
with one line on stderr.

Submissions are published with a producer that gives up quickly (short socket timeouts, no
publish retry, and the publish bounded by PUBLISH_TIMEOUT): a broker that does not answer is a
503 within 5 s, never a hang. Status reads are bounded the same way.

systemd: READY=1 once the socket listens; a watchdog thread sends WATCHDOG=1 while the server
answers its own /healthz (served by its event loop; any answer, 200 or 503, proves the loop
turns; a broker outage is the API's 503s, not a reason to restart it); STOPPING=1 on SIGTERM.
The process writes nothing to disk: it needs read access to the clients file and the TLS
certificate and key, and the broker and result store (APP_BROKER_URL, APP_RESULT_BACKEND).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations as objects.
import asyncio
import concurrent.futures
import datetime
import hashlib
import hmac
import json
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import jobs, liveness, logs
from app.errors import ValidationError
from app.settings import Settings, SettingsError, get_settings
from app.validation import MAX_BATCH

log = logs.get_logger(__name__)

# Seconds: a publish or a status read not done by then answers 503 (the client's 5 s bound).
PUBLISH_TIMEOUT = 4.0
HEALTH_TIMEOUT = 2.0
# The API's own Redis clients (publish, result reads, /healthz): give up after these.
SOCKET_CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 3.0
JOB_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
TOKEN_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


class StartError(Exception):
    """The API cannot start: one readable line (the clients file, a setting, the socket)."""


@dataclass(frozen=True)
class Client:
    name: str
    token_sha256: str
    tasks: frozenset[str]


def load_clients(path: str, known_tasks: set[str] | None = None) -> dict[str, Client]:
    """The clients file: {"NAME": {"token_sha256": HEX, "tasks": [TASK, ...]}, ...}."""
    where = f"APP_API_CLIENTS_FILE={path}"
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read()
    except OSError as exc:
        raise StartError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise StartError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise StartError(f"{where}: expected a JSON object of clients, at least one")
    clients: dict[str, Client] = {}
    hashes: set[str] = set()
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise StartError(f"{where}: client {name!r}: expected an object")
        extra = sorted(set(entry) - {"token_sha256", "tasks"})
        if extra:
            raise StartError(f"{where}: client {name!r}: unknown field(s) {', '.join(extra)}")
        digest = entry.get("token_sha256")
        if not isinstance(digest, str) or not TOKEN_HASH_RE.fullmatch(digest):
            raise StartError(
                f"{where}: client {name!r}: token_sha256 must be the lowercase hex SHA-256 "
                "(64 characters) of its token"
            )
        if digest in hashes:
            raise StartError(f"{where}: client {name!r}: same token as another client")
        hashes.add(digest)
        tasks = entry.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise StartError(f"{where}: client {name!r}: tasks must be a list of task names")
        if known_tasks is not None:
            unknown = sorted(set(tasks) - known_tasks)
            if unknown:
                raise StartError(
                    f"{where}: client {name!r}: unknown or not callable task(s) "
                    f"{', '.join(unknown)}"
                )
        clients[name] = Client(name, digest, frozenset(tasks))
    return clients


def find_client(clients: dict[str, Client], token: str) -> Client | None:
    """The client holding this token: its SHA-256 compared with each (constant time)."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    found = None
    for client in clients.values():  # every one compared: the time says nothing
        if hmac.compare_digest(client.token_sha256, digest):
            found = client
    return found


# --- errors --------------------------------------------------------------------------------


def error_body(error: str, message: str, field: str | None = None, **extra: Any) -> bytes:
    return json.dumps({"error": error, "field": field, "message": message, **extra}).encode()


async def send_json(
    send: Callable[..., Awaitable[None]],
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


UNAUTHORIZED_HEADERS = [(b"www-authenticate", b'Bearer realm="jobs"')]


class Gate:
    """ASGI middleware in front of /v1/: the bearer token first (401 from headers alone: a
    stranger's body is never read), then the body's size, counted as it arrives (413 from
    Content-Length at once, or as soon as a chunked body passes the limit), before any parsing.
    The client found is passed on in scope["state"]["client"]."""

    def __init__(self, app: Any, clients: dict[str, Client], max_body: int) -> None:
        self.app = app
        self.clients = clients
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        client = (
            find_client(self.clients, token.strip())
            if scheme.lower() == "bearer" and token.strip()
            else None
        )
        if client is None:
            what = "missing" if "authorization" not in headers else "not valid"
            await send_json(
                send,
                401,
                error_body("unauthorized", f"bearer token {what}", "Authorization"),
                UNAUTHORIZED_HEADERS,
            )
            return
        scope.setdefault("state", {})["client"] = client
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await self._too_large(receive, send, int(length))
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        kind = headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind and kind != "application/json" and not kind.endswith("+json"):
            await send_json(
                send,
                415,
                error_body(
                    "unsupported_media_type",
                    f"Content-Type: expected application/json, got {kind}",
                    "Content-Type",
                ),
                [(b"connection", b"close")],
            )
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                await self._too_large(receive, send, len(body) if more else 0)
                return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, receive: Any, send: Any, expected: int) -> None:
        # Read (and drop) a body of up to 4 x the limit first: a client still sending when the
        # connection closes sees a broken pipe instead of the 413. A larger one is cut short.
        if 0 < expected <= 4 * self.max_body:
            more, seen = True, 0
            while more and seen <= 4 * self.max_body:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                seen += len(message.get("body", b""))
                more = message.get("more_body", False)
        await send_json(
            send,
            413,
            error_body(
                "payload_too_large",
                f"request body over {self.max_body} bytes (APP_API_MAX_BODY_BYTES)",
                "body",
            ),
            [(b"connection", b"close")],
        )


# --- the application ----------------------------------------------------------------------


def create_app(settings: Settings, clients: dict[str, Client], celery_app: Any) -> Any:
    """The ASGI application (FastAPI behind the Gate)."""
    tasks = jobs.callable_tasks(celery_app)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="broker")
    health_client = _health_client(settings)

    class ApiError(Exception):
        def __init__(self, status: int, error: str, message: str, field: str | None) -> None:
            super().__init__(message)
            self.status, self.error, self.message, self.field = status, error, message, field

    def invalid(exc: ValidationError, default_field: str) -> ApiError:
        text = str(exc)
        field, sep, _ = text.partition(":")
        return ApiError(422, "invalid", text, field if sep and " " not in field else default_field)

    async def bounded(call: Callable[[], Any], what: str) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(executor, call), timeout=PUBLISH_TIMEOUT
            )
        except TimeoutError:
            error = f"no answer within {PUBLISH_TIMEOUT:g} s"
        except Exception as exc:  # kombu's OperationalError, redis errors
            from app.broker import explain_refusal

            error = explain_refusal(exc) or f"{type(exc).__name__}: {exc}"[:300]
        log.warning("api_unavailable", what=what, error=error)
        raise ApiError(503, "unavailable", f"{what} unavailable: {error}", None)

    class JobRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        task: str = Field(description="registered task name, e.g. pricing.calculate_bulk_pricing")
        args: list[Any] = Field(default_factory=list, description="positional arguments")
        kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments")
        countdown: float | None = Field(
            default=None, ge=0, description="seconds before it may run (at most the max delay)"
        )
        eta: datetime.datetime | None = Field(
            default=None, description="ISO 8601 time with a UTC offset before which it won't run"
        )

    class Accepted(BaseModel):
        job_id: str
        status: str = "queued"
        status_url: str

    class JobStatus(BaseModel):
        job_id: str
        status: str = Field(description="pending|started|progress|retrying|completed|failed")
        done: int | None = None
        total: int | None = None
        result: Any = None
        error: str | None = None

    class Problem(BaseModel):
        error: str
        field: str | None
        message: str

    bearer = HTTPBearer(auto_error=False, description="a client's token (APP_API_CLIENTS_FILE)")

    def client_of(request: Request, _: Annotated[Any, Depends(bearer)]) -> Client:
        return request.scope["state"]["client"]  # the Gate's

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": Problem} for code in (400, 401, 403, 413, 422, 503)
    }
    app = FastAPI(
        title="Celery job API",
        version="1",
        description="Submit tasks and read their status. Contract: docs/API.md.",
        responses=errors,
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="jobs"'} if exc.status == 401 else None
        body = {"error": exc.error, "field": exc.field, "message": exc.message}
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            field = _field(request.url.path, e.get("loc", ()))
            if e.get("type") == "json_invalid":
                reason = (e.get("ctx") or {}).get("error", "")
                return JSONResponse(
                    {
                        "error": "malformed_json",
                        "field": "body",
                        "message": f"body: not valid JSON ({reason})".replace(" ()", ""),
                    },
                    status_code=400,
                )
            problems.append({"field": field, "message": f"{field}: {e.get('msg', 'invalid')}"})
        first = problems[0] if problems else {"field": "body", "message": "body: invalid"}
        return JSONResponse(
            {"error": "invalid", **first, "problems": problems[:20]}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": "http_error", "field": None, "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    def delay_options(body: JobRequest) -> dict[str, Any]:
        if body.countdown is not None and body.eta is not None:
            raise ApiError(422, "invalid", "countdown, eta: give one or neither", "countdown")
        try:
            if body.countdown is not None:
                jobs.check_delay(body.countdown, "countdown")
                return {"countdown": body.countdown}
            if body.eta is not None:
                if body.eta.tzinfo is None:
                    raise ApiError(422, "invalid", "eta: needs a UTC offset (e.g. Z)", "eta")
                now = datetime.datetime.now(datetime.UTC)
                jobs.check_delay((body.eta - now).total_seconds(), "eta")
                return {"eta": body.eta}
        except ValidationError as exc:
            raise invalid(exc, "countdown" if body.countdown is not None else "eta") from None
        return {}

    async def submit(
        request: Request,
        client: Client,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> Accepted:
        task = tasks.get(name)
        if task is None:
            raise ApiError(422, "unknown_task", f"task: unknown task {name!r}", "task")
        if name not in client.tasks:
            raise ApiError(
                403, "forbidden", f"task: client {client.name!r} may not submit {name!r}", "task"
            )
        try:
            jobs.check_arguments(task, args, kwargs)
        except ValidationError as exc:
            raise invalid(exc, "args") from None

        def publish() -> str:
            result = celery_app.send_task(name, args=args, kwargs=kwargs, retry=False, **options)
            return str(result.id)

        job_id = await bounded(publish, "broker")
        log.info("job_submitted", client=client.name, task_name=name, job_id=job_id)
        return Accepted(job_id=job_id, status_url=str(request.url_for("get_job", job_id=job_id)))

    @app.post("/v1/jobs", status_code=202, response_model=Accepted, tags=["jobs"])
    async def post_job(
        request: Request, body: JobRequest, client: Annotated[Client, Depends(client_of)]
    ) -> Accepted:
        """Queue a task by name; 202 with its job id and where to read its status."""
        options = delay_options(body)
        return await submit(request, client, body.task, body.args, body.kwargs, options)

    @app.post("/v1/bulk-pricing", status_code=202, response_model=Accepted, tags=["jobs"])
    async def post_bulk_pricing(
        request: Request,
        specifications: list[dict[str, Any]],
        client: Annotated[Client, Depends(client_of)],
    ) -> Accepted:
        """The guide's endpoint: a JSON array of specifications, priced by
        pricing.calculate_bulk_pricing (each item priced, or refused, alone)."""
        if not specifications or len(specifications) > MAX_BATCH:
            raise ApiError(
                422,
                "invalid",
                f"specifications: {len(specifications)} items, 1 to {MAX_BATCH} allowed",
                "specifications",
            )
        return await submit(
            request, client, "pricing.calculate_bulk_pricing", [specifications], {}, {}
        )

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobStatus,
        response_model_exclude_none=True,
        tags=["jobs"],
        name="get_job",
    )
    async def get_job(job_id: str, client: Annotated[Client, Depends(client_of)]) -> dict[str, Any]:
        """A job's status. An id the result store does not hold reads `pending` (queued,
        unknown or expired after an hour look the same, as in Celery)."""
        if not JOB_ID_RE.fullmatch(job_id):
            raise ApiError(422, "invalid", "job_id: not a job id", "job_id")
        meta = await bounded(lambda: celery_app.backend.get_task_meta(job_id), "result store")
        return jobs.job_status(job_id, meta)

    @app.get("/healthz", tags=["health"], responses={503: {"model": dict[str, str]}})
    async def healthz() -> JSONResponse:
        """Whether the broker answers a PING (within 2 s). No authentication."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(executor, health_client.ping), timeout=HEALTH_TIMEOUT
            )
        except Exception:  # timeouts and redis errors: the broker does not answer
            return JSONResponse({"broker": "unavailable"}, status_code=503)
        return JSONResponse({"broker": "ok"})

    return Gate(app, clients, settings.api_max_body_bytes)


def _field(path: str, loc: Any) -> str:
    """('body', 'kwargs', 'x') -> 'kwargs.x'; ('body', 3, 'y') on /v1/bulk-pricing ->
    'specifications[3].y'."""
    field = "specifications" if path.endswith("/bulk-pricing") else ""
    for part in list(loc)[1:] if loc and loc[0] in ("body", "path", "query") else loc:
        field += f"[{part}]" if isinstance(part, int) else f"{'.' if field else ''}{part}"
    return field or "body"


def _health_client(settings: Settings) -> Any:
    import redis

    return redis.Redis.from_url(
        settings.broker_url,
        socket_timeout=HEALTH_TIMEOUT,
        socket_connect_timeout=HEALTH_TIMEOUT,
    )


def configure_producer(celery_app: Any) -> None:
    """This process's Celery: publishes and result reads that give up quickly (503, no hang)."""
    conf = celery_app.conf
    conf.broker_transport_options = {
        **conf.broker_transport_options,
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
    }
    conf.broker_connection_timeout = SOCKET_CONNECT_TIMEOUT
    conf.broker_connection_retry = False
    conf.task_publish_retry = False
    conf.redis_socket_connect_timeout = SOCKET_CONNECT_TIMEOUT
    conf.redis_socket_timeout = SOCKET_TIMEOUT
    conf.result_backend_always_retry = False
    # Celery subscribes to each sent task's result channel, for a result.get() that waits; the
    # API never waits (GET reads the stored state), so no subscription per submission.
    from celery.backends.redis import RedisBackend

    RedisBackend.on_task_call = lambda self, producer, task_id: None


# --- the process ---------------------------------------------------------------------------


def self_check_url(settings: Settings) -> str:
    address = settings.api_address
    if address in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard bind answers on loopback
        address = "127.0.0.1"
    if ":" in address:
        address = f"[{address}]"
    scheme = "https" if settings.api_tls_cert else "http"
    return f"{scheme}://{address}:{settings.api_port}/healthz"


class ApiLiveness(liveness.Liveness):
    """WATCHDOG=1 while the server answers its own /healthz within 5 s (any status: the answer
    comes from the event loop). The certificate is not checked: this is our own socket."""

    def __init__(self, url: str) -> None:
        super().__init__("api", lambda: f"serving {url.rsplit('/', 1)[0]}/")
        self.url = url
        self.context = ssl.create_default_context()
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE

    def answers(self) -> str:
        import urllib.error

        try:
            with urllib.request.urlopen(self.url, timeout=5, context=self.context):  # noqa: S310
                return ""
        except urllib.error.HTTPError:  # 503 (broker down) is an answer too
            return ""
        except OSError as exc:
            return f"web server does not answer: {exc}"[:200]

    def problem(self) -> str:
        answer = self.answers()
        if answer:
            return answer
        self.last_stamp = time.monotonic()
        return ""


def listen(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot listen on {address}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def build(settings: Settings) -> tuple[Any, Any, socket.socket]:
    """The uvicorn server and its listening socket, or StartError."""
    import uvicorn

    from app.celery_app import celery_app

    configure_producer(celery_app)
    known = set(jobs.callable_tasks(celery_app))
    clients = load_clients(settings.api_clients_file, known)
    app = create_app(settings, clients, celery_app)
    config = uvicorn.Config(
        app,
        ssl_certfile=settings.api_tls_cert or None,
        ssl_keyfile=settings.api_tls_key or None,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        lifespan="off",
        h11_max_incomplete_event_size=64 * 1024,
    )
    try:
        config.load()
    except (OSError, ssl.SSLError) as exc:
        raise StartError(f"APP_API_TLS_CERT/APP_API_TLS_KEY: {exc}") from None
    sock = listen(settings.api_address, settings.api_port)
    liveness_thread = ApiLiveness(self_check_url(settings))

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # the socket listens and is served
                liveness_thread.start()
                liveness_thread.stamp()  # READY=1 and the STATUS line

        async def shutdown(self, sockets: Any = None) -> None:
            liveness_thread.stopping = True
            liveness.notify("STOPPING=1\nSTATUS=stopping")
            await super().shutdown(sockets=sockets)

    return Server(config), liveness_thread, sock


def main() -> None:
    try:
        settings = get_settings()
        logs.configure(settings.log_format, settings.log_level)
        server, _, sock = build(settings)
    except (SettingsError, StartError) as exc:
        print(f"app.api: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info(
        "api_started",
        address=settings.api_address,
        port=settings.api_port,
        tls=bool(settings.api_tls_cert),
        thread=threading.current_thread().name,
    )
    server.run(sockets=[sock])
    log.info("api_stopped")


if __name__ == "__main__":
    main()
