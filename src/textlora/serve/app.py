"""The HTTP API (FastAPI): classify texts, describe the model, report health; plus the page at ``/``.

    POST /v1/classify   {"texts": [...]} -> {"results": [{label, label_id, probabilities}, ...]}
    GET  /v1/model      base model, labels, trainable params, run metrics
    GET  /v1/stats      micro-batching counters (requests, texts, model calls)
    GET  /health        {"status": "ok", ...}
    GET  /openapi.json  the schema (FastAPI); GET /docs renders it
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from textlora.data.prepare import text_problem
from . import ServeLimits
from .batcher import MicroBatcher, QueueFullError
from .classifier import Classifier


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 without being read whole.

    A declared ``Content-Length`` over the limit is refused before anything is read; any other body (one
    sent with ``Transfer-Encoding: chunked`` has no length) is read here as it arrives and refused as soon
    as it passes the limit, then handed on whole to the app. ``allows`` says what the limit is sized for.
    """

    def __init__(self, app, max_bytes: int, allows: str):
        self.app, self.max_bytes, self.allows = app, max_bytes, allows

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, f"request body of {int(declared):,} bytes")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nobody to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, "request body")
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: a disconnect, when the client goes away
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, what: str) -> None:
        # "Connection: close": the rest of the body is never read, so the connection cannot carry another request.
        response = JSONResponse(status_code=413, headers={"connection": "close"}, content={
            "detail": f"{what} is over the limit of {self.max_bytes:,} bytes ({self.allows})"})
        await response(scope, receive, send)


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(min_length=1, description="texts to classify", examples=[["NASA launches a probe"]])


class Prediction(BaseModel):
    label: str = Field(description="the most probable class")
    label_id: int = Field(description="its class id, 0..K-1")
    probabilities: dict[str, float] = Field(description="probability of every class, in class-id order")


class ClassifyResponse(BaseModel):
    results: list[Prediction]


def create_app(classifier: Classifier, limits: ServeLimits = ServeLimits()) -> FastAPI:
    """The FastAPI app serving ``classifier`` with ``limits`` (the batcher starts with the app)."""
    batcher = MicroBatcher(classifier.predict, limits.max_batch, limits.max_wait_ms / 1000, limits.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    from .. import __version__

    app = FastAPI(title="textlora", version=__version__, lifespan=lifespan,
                  description=f"Text classification with {classifier.info.get('base_model')} + LoRA. "
                              f"Labels: {', '.join(classifier.labels)}.")
    app.state.batcher = batcher
    labels = classifier.labels
    # Refuse an oversized body before or while reading it (the per-text limits are checked after parsing).
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes,
                       allows=f"{limits.max_texts} texts of {limits.max_chars} characters")

    @app.post("/v1/classify", response_model=ClassifyResponse,
              responses={413: {"description": "too many texts or a text too long"},
                         503: {"description": "too many texts queued; retry later"}})
    async def classify(body: ClassifyRequest) -> ClassifyResponse:
        """Label and class probabilities for every text, in request order."""
        texts = body.texts
        if len(texts) > limits.max_texts:
            raise HTTPException(413, f"{len(texts)} texts in one request; the limit is {limits.max_texts}. "
                                     "Split them over several requests")
        for i, text in enumerate(texts):
            if len(text) > limits.max_chars:
                raise HTTPException(413, f"texts[{i}] has {len(text):,} characters; the limit is "
                                         f"{limits.max_chars:,}. Shorten it (the model reads only the first "
                                         f"{classifier.info.get('max_length')} tokens)")
            problem = text_problem(text)
            if problem:  # a tokenizer would fail on it, inside the model call that other requests share
                raise HTTPException(422, f"texts[{i}] {problem}; send valid Unicode text")
        try:
            probs = await batcher.submit(texts)
        except QueueFullError as exc:
            raise HTTPException(503, f"server busy: {exc}; retry shortly", headers={"Retry-After": "1"}) from None
        return ClassifyResponse(results=[
            Prediction(label=labels[int(row.argmax())], label_id=int(row.argmax()),
                       probabilities={name: round(float(p), 6) for name, p in zip(labels, row)})
            for row in probs])

    @app.get("/v1/model")
    async def model_info() -> dict:
        """Base model, labels, trainable parameters, run metrics and the serving limits."""
        return {**classifier.info, "limits": {"max_texts": limits.max_texts, "max_chars": limits.max_chars,
                                              "max_batch": limits.max_batch, "max_wait_ms": limits.max_wait_ms}}

    @app.get("/v1/stats")
    async def stats() -> dict:
        """Micro-batching counters since start: requests, texts, model calls, largest batch."""
        return batcher.stats_dict()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "labels": labels, "stats": batcher.stats_dict()}

    page = resources.files("textlora.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Whatever goes wrong inside one request is answered (500) and the server keeps serving.
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}: {exc}"})

    return app
