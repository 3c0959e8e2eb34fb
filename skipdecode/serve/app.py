"""The ASGI app: OpenAI routes over the engine bridge, /health and /metrics.

    app = create_app(ServeConfig("build/smollm2", api_key="..."))
    uvicorn.run(app)        # or skipdecode.serve.server.serve(...), which also drains on SIGTERM

Handlers validate and tokenize on the event loop, hand engine requests to the bridge and await
its items; they never touch the engine. The guard in front answers 401 (key), 503 (loading,
shutting down) and 413 (body too large) before a body is parsed; every error has the OpenAI
shape, and none stops the server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import socket
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from skipdecode import __version__
from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.engine import QueueFull
from skipdecode.serve.bridge import Done, EngineBridge, Failed, Token, Unavailable, load_runtime
from skipdecode.serve.chat import ChatTemplate
from skipdecode.serve.completions import FINISH, Job, chat_job, completion_job
from skipdecode.serve.config import ServeConfig
from skipdecode.serve.errors import APIError, error_body
from skipdecode.serve.protocol import ChatCompletionRequest, CompletionRequest

REPLICA_HEADER = "x-skipdecode-replica"
"""host:pid of the process that answered (behind Ray Serve: which replica)."""
REPLICA = f"{socket.gethostname()}:{os.getpid()}"


def create_app(config: ServeConfig, load=load_runtime) -> FastAPI:
    bridge = EngineBridge(config, load)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        bridge.start()
        if config.wait_loaded:
            await asyncio.to_thread(bridge.wait_loaded)
            if bridge.state == "failed":
                raise RuntimeError(f"cannot load {config.export}: {bridge.error}")
        yield
        await asyncio.to_thread(bridge.stop)

    app = FastAPI(title="skipdecode serve", version=__version__, lifespan=lifespan)
    app.state.bridge = bridge
    app.state.chat_template = None
    app.add_middleware(Guard, bridge=bridge, config=config)
    _errors(app, bridge)
    _routes(app, bridge, config)
    return app


# ---- errors --------------------------------------------------------------------------------------
def error_response(bridge: EngineBridge, status: int, message: str, param=None, code=None) -> JSONResponse:
    bridge.metrics.errors.labels(str(status)).inc()
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    e = exc.errors()[0]
    if e.get("type") == "json_invalid":
        return f"malformed JSON body: {e.get('ctx', {}).get('error', e.get('msg'))}", None
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
    return (f"{'.'.join(loc)}: {msg}" if loc else msg), (loc[0] if loc else None)


def _errors(app: FastAPI, bridge: EngineBridge) -> None:
    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return error_response(bridge, exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(bridge, 400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return error_response(bridge, exc.status_code, str(exc.detail))


# ---- the guard (401, 503, 413 before any parsing) -------------------------------------------------
class Guard:
    """Pure ASGI middleware: the key, readiness and the body size limit; tags responses with the
    replica. The body is read here (at most max_body_bytes) and replayed to the app."""

    def __init__(self, app, bridge: EngineBridge, config: ServeConfig):
        self.app, self.bridge, self.config = app, bridge, config
        self._key = f"Bearer {config.api_key}".encode() if config.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (REPLICA_HEADER.encode(), REPLICA.encode())]}
            await send(message)

        headers = dict(scope.get("headers", []))
        if scope["path"].startswith("/v1/"):
            if self._key and not hmac.compare_digest(headers.get(b"authorization", b""), self._key):
                return await self._refuse(tagged, 401, "missing or wrong API key (Authorization: Bearer KEY)",
                                          "invalid_api_key")
            if self.bridge.state != "ready":
                return await self._refuse(tagged, 503, self.bridge._unavailable(), self.bridge.state)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            limit = self.config.max_body_bytes
            try:
                declared = int(headers.get(b"content-length", b"0"))
            except ValueError:
                declared = 0
            if declared > limit:
                return await self._refuse(tagged, 413, f"request body of {declared} bytes is above the "
                                          f"{limit}-byte limit", "request_too_large")
            body, more = b"", True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    return await self._refuse(tagged, 413, f"request body is above the {limit}-byte limit",
                                              "request_too_large")
            receive = _replay(body, receive)
        await self.app(scope, receive, tagged)

    async def _refuse(self, send, status: int, message: str, code: str) -> None:
        self.bridge.metrics.errors.labels(str(status)).inc()
        payload = json.dumps(error_body(status, message, None, code)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: waits for the disconnect

    return replay


# ---- routes ----------------------------------------------------------------------------------------
def _routes(app: FastAPI, bridge: EngineBridge, config: ServeConfig) -> None:
    model = config.model_id
    started = int(time.time())

    @app.get("/health")
    async def health():
        state = bridge.state
        body = {"status": state, "model": model}
        if state == "failed":
            body["error"] = bridge.error
        return JSONResponse(body, status_code=200 if state == "ready" else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(bridge.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        s = bridge.default_schedule
        return {"object": "list", "data": [{"id": model, "object": "model", "created": started,
                                            "owned_by": "skipdecode", "max_model_len": bridge.max_len,
                                            "num_layers": s.num_layers, "schedule": s.to_dict()}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await _answer(bridge, completion_job(body, bridge, model), request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await _answer(bridge, chat_job(body, bridge, _template(app, bridge), model), request)


def _template(app: FastAPI, bridge: EngineBridge):
    """The export's chat template, read once (None: the export has none)."""
    if app.state.chat_template is None:
        try:
            app.state.chat_template = (ChatTemplate.from_dir(bridge.runtime.backend.dir),)
        except SkipDecodeError as e:
            raise APIError(500, str(e), "messages") from None
    return app.state.chat_template[0]


async def _answer(bridge: EngineBridge, job: Job, request: Request):
    try:
        sub = await bridge.submit(job.requests)
    except QueueFull as e:
        raise APIError(429, f"{e}: retry later", None, "queue_full") from None
    except Unavailable as e:
        raise APIError(503, str(e), None, "unavailable") from None
    except SkipDecodeError as e:
        raise APIError(400, str(e)) from None
    if job.stream:
        return StreamingResponse(_events(job, sub, bridge), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _collect(job, sub, request)


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _events(job: Job, sub, bridge: EngineBridge):
    """Server-sent events; a disconnect cancels this generator, and closing the submission
    cancels its requests (rows freed at the next engine step)."""
    results = {}
    try:
        if job.chat:
            for i in range(len(job.requests)):
                yield _sse(job.chunk(i, None, role=True))
        async for item in sub:
            if isinstance(item, Token):
                ev = item.event
                if ev.text or ev.finish_reason:
                    finish = FINISH[ev.finish_reason] if ev.finish_reason else None
                    yield _sse(job.chunk(job.index(ev.request_id), ev.text, finish))
            elif isinstance(item, Done):
                results[item.request_id] = item.result
            elif isinstance(item, Failed):
                bridge.metrics.errors.labels(str(item.status)).inc()
                yield _sse(error_body(item.status, item.message, None, "aborted"))
                return
        if job.include_usage:
            yield _sse(job.usage_chunk([results[r.request_id] for r in job.requests]))
        yield "data: [DONE]\n\n"
    finally:
        sub.close()


async def _collect(job: Job, sub, request: Request):
    results = {}

    async def gather():
        async for item in sub:
            if isinstance(item, Done):
                results[item.request_id] = item.result

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(gather()), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
        sub.close()
    if not work.done() or work.cancelled():
        return Response(status_code=499)  # the client is gone; nobody reads this
    work.result()  # re-raise what the gathering raised, if anything
    if sub.failed is not None:
        raise APIError(sub.failed.status, sub.failed.message, None, "aborted")
    return JSONResponse(job.response([results[r.request_id] for r in job.requests]))
