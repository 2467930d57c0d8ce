"""The HTTP layer of `colm serve`: Starlette routes over colm_core.serving.Service, run by uvicorn.

Everything a request means is decided in colm_core/serving.py; this module reads bodies (within the size
limit), turns RequestError into OpenAI-style JSON errors, and streams server-sent events."""

from __future__ import annotations

import asyncio
import json
import socket

from colm_core.errors import ColmError, missing_extra
from colm_core.serving import (
    RequestError,
    Service,
    check_api_key,
    new_id,
    parse_json_body,
    served_name,
    stream_chunk,
    usage_chunk,
)

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route
except ImportError as e:
    raise missing_extra("`colm serve` runs on Starlette and uvicorn", e, "serve") from None


def error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def read_body(request: Request, limit: int) -> bytes:
    too_large = RequestError(f"the body is larger than {limit} bytes (--max-body-bytes)", 413)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(service: Service) -> Starlette:
    """The ASGI app: GET /v1/models, POST /v1/completions and /v1/chat/completions, GET /health."""

    def authorized(request: Request) -> None:
        check_api_key(service.api_key, request.headers.get("authorization"))

    async def models(request: Request):
        authorized(request)
        return JSONResponse(service.models.listing())

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    async def generation(request: Request, chat: bool):
        authorized(request)
        body = parse_json_body(await read_body(request, service.limits.max_body_bytes))
        parsed = service.parse(body, chat)
        jobs = service.jobs(parsed)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        for job in jobs:
            job.on_event = lambda job, piece: loop.call_soon_threadsafe(events.put_nowait, (job, piece))
        service.engine.submit(jobs)
        if parsed.stream:
            return StreamingResponse(stream(parsed, jobs, events), media_type="text/event-stream")
        try:
            await finished(jobs, events)
        finally:
            service.engine.cancel([job for job in jobs if not job.finished_at])
        failed = next((job.error for job in jobs if job.error), None)
        if failed:
            raise RequestError(failed, 500, kind="server_error")
        return JSONResponse(service.response(parsed, jobs))

    async def finished(jobs, events) -> None:
        remaining = len(jobs)
        while remaining:
            job, piece = await events.get()
            remaining -= not piece and bool(job.finished_at)

    async def stream(parsed, jobs, events):
        response_id, remaining = new_id("chatcmpl" if parsed.chat else "cmpl"), len(jobs)
        model = served_name(service.name, jobs[0].chains)
        index = {id(job): i for i, job in enumerate(jobs)}
        try:
            if parsed.chat:
                yield sse(stream_chunk(parsed, response_id, model, 0, "", first=True))
            elif parsed.echo:
                for i, text in enumerate(parsed.prompt_texts):
                    yield sse(stream_chunk(parsed, response_id, model, i, text))
            while remaining:
                job, piece = await events.get()
                if piece:
                    yield sse(stream_chunk(parsed, response_id, model, index[id(job)], piece))
                elif job.finished_at:
                    remaining -= 1
                    if job.error:
                        yield sse(RequestError(job.error, 500, kind="server_error").body())
                    else:
                        yield sse(stream_chunk(parsed, response_id, model, index[id(job)], None, job.finish_reason))
            yield sse(usage_chunk(parsed, response_id, model, jobs))
            yield "data: [DONE]\n\n"
        finally:  # the client went away, or the stream ended: nothing is left running for it
            service.engine.cancel([job for job in jobs if not job.finished_at])

    async def completions(request: Request):
        return await generation(request, chat=False)

    async def chat_completions(request: Request):
        return await generation(request, chat=True)

    async def request_error(request: Request, e: RequestError):
        return error_response(e)

    async def http_error(request: Request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(
            RequestError(f"{request.method} {request.url.path}: {e.detail}", e.status_code, kind=kind)
        )

    async def unexpected(request: Request, e: Exception):
        return error_response(RequestError(f"internal error: {type(e).__name__}: {e}", 500, kind="server_error"))

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={RequestError: request_error, HTTPException: http_error, Exception: unexpected},
    )


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts, so that port 0 gives a port we can print."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ColmError(
            f"cannot listen on {host}:{port} ({e.strerror}); choose another --port, or 0 for any free one"
        ) from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def run(service: Service, sock: socket.socket, graceful_s: float = 30.0) -> None:
    """Serve until Ctrl-C or SIGTERM: in-flight requests get `graceful_s` seconds to finish; the engine then
    answers what is left with an error. (uvicorn hands the signal back afterwards: `colm` exits 130.)"""
    server = make_server(service, graceful_s)
    try:
        server.run(sockets=[sock])
    finally:
        service.close()
        sock.close()


def make_server(service: Service, graceful_s: float = 30.0) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(service), log_level="warning", timeout_graceful_shutdown=graceful_s, lifespan="off", access_log=False
    )
    return uvicorn.Server(config)
