"""An HTTP API and a web page for emotion recognition, on FastAPI + uvicorn:

    python -m ferlab.serve [--host 127.0.0.1] [--port 8000] [--model NAME|PATH]

``POST /v1/analyze`` (one image: multipart field ``image`` or the raw body) -> the faces with
box, label, score and probabilities; ``?annotate=true`` adds the annotated image (base64 PNG),
``?top_k=`` the k most likely emotions. ``POST /v1/faces`` (pre-cropped faces: multipart fields
``faces``) -> probabilities per face. ``GET /v1/health``, ``GET /v1/model``, ``GET /`` (the
page) and ``GET /openapi.json``. Every error is JSON ``{"error": {"code",
"message"}}`` with a 4xx status (503 when busy, 504 on timeout); nothing a request sends is
written to disk and no request names a file on the server.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time
import argparse
import asyncio
import base64
import email.parser
import email.policy
import hashlib
import logging
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

import cv2
import numpy as np
import torch

from ferlab import __version__, artifacts
from ferlab.data.transforms import to_face
from ferlab.inference.annotate import annotate
from ferlab.inference.images import ImageError, ImageTooLargeError, decode_image
from ferlab.inference.recognizer import EmotionRecognizer
from ferlab.inference.runtime import BACKENDS, cpu_limit
from ferlab.priors import NAMED_PRIORS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_bytes: int = 10 * 1024 * 1024  # an upload's size (413 above)
    # the decoded pixels of all of one request's images together (413 above: decompression
    # bombs, and many small files that each decode large); images are decoded one at a time
    max_pixels: int = 40_000_000
    max_faces: int = 256  # crops in one /v1/faces request
    # a request's work, from parsing its body to its answer (504 after; the work is stopped)
    timeout_s: float = 30.0
    # inferences at once, off the event loop, each on cpu_limit() // workers threads; on two
    # cores one worker with both served a lone client 0.87x as fast as the pipeline in-process
    # and two workers with one core each 0.53x (experiments/load_serve.py, README "Serving")
    workers: int = 1
    queue: int = 8  # requests waiting for a worker; more get 503 + Retry-After
    # the Host names a request may give (DNS rebinding: a page on another site whose name
    # resolves to 127.0.0.1 would otherwise reach a loopback server); the bound address and
    # localhost's names are always allowed, "*" allows any
    allowed_hosts: tuple[str, ...] = ()


# every answer: no MIME sniffing, no framing by other sites, no referrer, and a page that loads
# nothing from elsewhere (its script and style are inline; images are data: and blob: URLs)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
        "'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"),
}
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


class Cancelled(Exception):
    """The request's time ran out while its work was under way; the work stops here."""


class Job:
    """One request's work on a worker thread: ``check()`` between its steps stops it once the
    request has timed out (a thread cannot be stopped from outside)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled


class ApiError(Exception):
    """An error answered as JSON ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class Service:
    """The recognizers behind the API: one per worker thread (a face detector is not shared
    between threads), bounded concurrency, timeouts, in-memory decoding."""

    def __init__(self, recognizers: list[EmotionRecognizer], name: str, limits: Limits) -> None:
        self.recognizer, self.name, self.limits = recognizers[0], name, limits
        self.idle: queue.SimpleQueue[EmotionRecognizer] = queue.SimpleQueue()
        for recognizer in recognizers:
            self.idle.put(recognizer)
        self.pool = ThreadPoolExecutor(len(recognizers), thread_name_prefix="ferlab-infer")
        # a model's version: the one its ONNX file records, else a hash of its file
        self.version = "+".join(
            m.meta.get("model_version") or hashlib.sha256(m.source.read_bytes()).hexdigest()[:12]
            for m in self.recognizer.models)
        self.waiting = 0  # requests admitted (running or queued); changed on the event loop

    async def run(self, fn, *args):
        """``fn(recognizer, job, *args)`` on a worker thread, refused with 503 when the queue is
        full and abandoned with 504 after the timeout (a job still queued never starts; one
        under way stops at its next step)."""
        if self.waiting >= self.limits.workers + self.limits.queue:
            raise ApiError(503, "busy", f"The server is busy ({self.waiting} requests in "
                           "progress); retry shortly.", {"Retry-After": "1"})
        self.waiting += 1
        job = Job()
        try:
            future = asyncio.get_running_loop().run_in_executor(self.pool, self._with_recognizer,
                                                                fn, job, args)
            return await asyncio.wait_for(future, self.limits.timeout_s)
        except TimeoutError:
            job.cancelled.set()
            raise ApiError(504, "timeout", f"The request took longer than "
                           f"{self.limits.timeout_s:g} s.") from None
        finally:
            self.waiting -= 1

    def _with_recognizer(self, fn, job: Job, args):
        job.check()
        recognizer = self.idle.get()
        try:
            return fn(recognizer, job, *args)
        finally:
            self.idle.put(recognizer)

    def decode(self, data: bytes, budget: int, grey: bool = False) -> np.ndarray:
        """One image, refused (413) when its pixels exceed what is left of the request's
        budget."""
        try:
            return decode_image(data, max_pixels=budget, grey=grey)
        except ImageTooLargeError as err:
            said = str(err).split(" pixels", 1)[0].removeprefix("the image bytes: ")
            raise ApiError(413, "too_many_pixels", f"An image of {said} pixels takes the request "
                           f"past the {self.limits.max_pixels:,} pixels the server decodes for "
                           "one request (all its images together; ferlab.serve --max-pixels)."
                           ) from None
        except ImageError as err:
            raise ApiError(400, "bad_image", str(err)) from None

    def analyze(self, recognizer: EmotionRecognizer, job: Job, data: bytes, kind: str,
                annotate_image: bool, top_k: int) -> dict[str, Any]:
        start = time.perf_counter()
        images = parts(data, kind, "image", 1)
        if len(images) != 1:
            raise ApiError(400, "one_image", f"Send one image; got {len(images)}.")
        image = self.decode(images[0], self.limits.max_pixels)  # (H, W, 3) BGR
        job.check()
        found = recognizer.detect_faces(image)
        job.check()
        faces = recognizer.describe(found)
        for face in faces:
            if top_k:
                ranked = sorted(face["probabilities"].items(), key=lambda kv: -kv[1])[:top_k]
                face["top_k"] = [{"label": c, "p": p} for c, p in ranked]
        answer: dict[str, Any] = {
            "faces": faces, "image": {"width": image.shape[1], "height": image.shape[0]},
            "model": self.model_id()}
        if annotate_image:
            job.check()
            ok, png = cv2.imencode(".png", annotate(image, faces))
            answer["annotated_png"] = base64.b64encode(png.tobytes()).decode() if ok else None
        answer["time_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return answer

    def faces(self, recognizer: EmotionRecognizer, job: Job, data: bytes,
              kind: str) -> dict[str, Any]:
        start = time.perf_counter()
        crops = parts(data, kind, "faces", self.limits.max_faces)
        if len(crops) > self.limits.max_faces:
            raise ApiError(413, "too_many_faces", f"{len(crops)} faces in one request; the "
                           f"limit is {self.limits.max_faces}.")
        budget, faces = self.limits.max_pixels, []
        for crop in crops:  # one decoded crop at a time, shrunk to a face at once
            job.check()
            grey = self.decode(crop, budget, grey=True)
            budget -= grey.shape[0] * grey.shape[1]
            faces.append(to_face(grey))
        job.check()
        probs = recognizer.predict_faces(np.stack(faces))
        classes = recognizer.classes
        answer = [{"label": classes[int(p.argmax())], "score": float(p.max()),
                   "probabilities": {c: float(v) for c, v in zip(classes, p)}} for p in probs]
        return {"faces": answer, "model": self.model_id(),
                "time_ms": round((time.perf_counter() - start) * 1000, 2)}

    def model_id(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}

    def describe(self) -> dict[str, Any]:
        r = self.recognizer
        return {**self.model_id(), "classes": list(r.classes), "backend": r.backend,
                "tta": r.tta, "prior": r.prior, "files": [m.source.name for m in r.models],
                "privatetest_acc": artifacts.SHIPPED_ACCURACY.get(self.name),
                "ferlab": __version__,
                "limits": {"max_bytes": self.limits.max_bytes,
                           "max_pixels": self.limits.max_pixels,
                           "max_faces": self.limits.max_faces,
                           "timeout_s": self.limits.timeout_s}}


def parts(data: bytes, kind: str, field: str, most: int) -> list[bytes]:
    """The files of a multipart ``field`` (at most ``most`` of them are parsed), or the raw
    body as one file; in memory only. Runs off the event loop, inside the request's time."""
    if not data:
        raise ApiError(400, "empty", "The request has no image; send one as the multipart "
                       f"field {field!r} or as the raw body.")
    if not kind.lower().startswith("multipart/"):
        return [data]
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {kind}\r\n\r\n".encode("latin-1", "replace") + data)
    if not message.is_multipart():
        raise ApiError(400, "bad_multipart", "The multipart body could not be parsed.")
    found = [p.get_payload(decode=True) or b"" for p in message.iter_parts()
             if p.get_param("name", header="content-disposition") == field]
    if not found:
        raise ApiError(400, "missing_field", f"The multipart body has no field {field!r}.")
    return found


def count_parts(data: bytes, kind: str) -> int:
    """How many parts a multipart body holds, by its boundary (0 for a raw body): a cheap
    count, on the event loop, before anything is parsed."""
    if not kind.lower().startswith("multipart/"):
        return 0
    boundary = next((p.split("=", 1)[1].strip().strip('"') for p in kind.split(";")[1:]
                     if p.strip().lower().startswith("boundary=")), "")
    if not boundary:
        raise ApiError(400, "bad_multipart", "The multipart body has no boundary in its "
                       "Content-Type.")
    return max(0, data.count(b"--" + boundary.encode("latin-1", "replace")) - 1)


def build_app(model: Any = None, limits: Limits | None = None, backend: str = "auto",
              prior: str | None = None, host: str = "127.0.0.1"):
    """The FastAPI application serving ``model`` (a shipped name, a path or a list), answering
    requests addressed to ``host`` (the bound address), localhost and ``limits.allowed_hosts``."""
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or Limits()
    name = model if isinstance(model, str) else "default" if model is None else "custom"
    if limits.workers < 1 or limits.queue < 0 or limits.max_pixels < 1 or limits.max_faces < 1:
        raise ValueError(f"workers, max_pixels and max_faces must be >= 1 and queue >= 0; got "
                         f"{limits.workers}, {limits.max_pixels}, {limits.max_faces} and "
                         f"{limits.queue}.")
    recognizers = [EmotionRecognizer(model, backend=backend, prior=prior)
                   for _ in range(limits.workers)]
    service = Service(recognizers, name, limits)
    # the docs page (Swagger UI) loads its code from a CDN, which an offline server cannot
    # reach: the schema is served (/openapi.json), the page is not
    app = FastAPI(title="ferlab", version=__version__, docs_url=None, redoc_url=None,
                  description="Facial expression recognition: faces, boxes and the "
                              "probability of each emotion.")
    app.state.service = service
    hosts = {h.lower() for h in (host, *LOCAL_HOSTS, *limits.allowed_hosts)}

    def error(status: int, code: str, message: str, headers=None) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status,
                            headers=headers)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        given = request.headers.get("host", "")
        bare = given.rsplit(":", 1)[0] if given.count(":") == 1 or given.startswith("[") \
            else given
        if "*" not in hosts and bare.lower().strip("[]") not in {h.strip("[]") for h in hosts}:
            response = error(400, "bad_host", f"This server answers requests for "
                             f"{', '.join(sorted(hosts))}, not {given[:100]!r}; start it with "
                             "--allow-host NAME to accept another name.")
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return error(err.status, err.code, err.message, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error(err.status_code, codes.get(err.status_code, "http_error"), str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return error(422, "invalid_request", where)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):  # logged here, never sent
        log.exception("unexpected error on %s", request.url.path)
        return error(500, "internal", "The server failed on this request; it is logged.")

    async def body(request: Request, most_parts: int) -> tuple[bytes, str]:
        """The request body, read up to the size limit (413 beyond, before reading it all),
        and its content type; a multipart body of more than ``most_parts`` parts is refused
        before it is parsed (parsing happens off the event loop, in the request's time)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_bytes:
            raise ApiError(413, "too_large", f"The upload is {int(declared):,} bytes; the "
                           f"limit is {limits.max_bytes:,}.")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_bytes:
                raise ApiError(413, "too_large", f"The upload is over the limit of "
                               f"{limits.max_bytes:,} bytes.")
            chunks.append(chunk)
        data, kind = b"".join(chunks), request.headers.get("content-type", "")
        count = count_parts(data, kind)
        if count > most_parts:
            raise ApiError(413, "too_many_parts", f"The multipart body has {count:,} parts; "
                           f"this endpoint takes at most {most_parts}.")
        return data, kind

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return (resources.files("ferlab") / "web" / "index.html").read_text()

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "busy": service.waiting}

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        return service.describe()

    @app.post("/v1/analyze", openapi_extra={"requestBody": {"content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "format": "binary"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def analyze(request: Request, annotate: bool = False,
                      top_k: int = Query(0, ge=0, le=16)) -> dict[str, Any]:
        """Every face in one image, largest first."""
        data, kind = await body(request, most_parts=4)
        return await service.run(service.analyze, data, kind, annotate, top_k)

    @app.post("/v1/faces", openapi_extra={"requestBody": {"content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "faces": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}})
    async def faces(request: Request) -> dict[str, Any]:
        """Probabilities for pre-cropped faces (any size, grey or colour), in order."""
        data, kind = await body(request, most_parts=limits.max_faces + 4)
        return await service.run(service.faces, data, kind)

    return app


def launch(args: list[str], cwd: str | os.PathLike | None = None,
           env: dict[str, str] | None = None, log: str | os.PathLike | None = None,
           wait_s: float = 120):
    """Start ``python -m ferlab.serve ARGS`` on a free loopback port in a subprocess, its
    output to the file ``log`` (else discarded: an unread pipe would fill and stop the server),
    and wait until it answers /v1/health: (the process, its URL). For tests and the load test."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    output = open(log, "w") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = subprocess.Popen([sys.executable, "-m", "ferlab.serve", "--port", str(port),
                                    *args], cwd=cwd, env=env, stdout=output,
                                   stderr=subprocess.STDOUT)
    finally:
        if log is not None:
            output.close()  # the child holds its own copy
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = f": {open(log).read()[-2000:]}" if log is not None else ""
            raise RuntimeError(f"ferlab.serve stopped with status {process.returncode}{said}")
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"ferlab.serve did not answer within {wait_s:g} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferlab.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="default",
                        help="a shipped model (default, cpu-trained, *-int8, fast, ensemble, "
                             "ensemble-int8), a model or ONNX file, a .ckpt or a run directory")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--prior", choices=NAMED_PRIORS, default=None,
                        help="the class mix the probabilities assume (as ferlab.predict)")
    parser.add_argument("--workers", type=int, default=Limits.workers,
                        help="inferences at once")
    parser.add_argument("--queue", type=int, default=Limits.queue,
                        help="requests waiting beyond the workers before 503")
    parser.add_argument("--max-bytes", type=int, default=Limits.max_bytes,
                        help="the largest upload, in bytes")
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels,
                        help="the decoded pixels of one request's images together")
    parser.add_argument("--max-faces", type=int, default=Limits.max_faces,
                        help="face crops in one /v1/faces request")
    parser.add_argument("--timeout", type=float, default=Limits.timeout_s,
                        help="seconds for one request's work")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a Host name to answer besides the bound address and localhost "
                             "(repeatable; '*' for any: only behind a proxy that checks it)")
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print("error: ferlab.serve needs its extra: pip install 'ferlab[serve]'", file=sys.stderr)
        return 2
    limits = Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels,
                    max_faces=args.max_faces, timeout_s=args.timeout, workers=args.workers,
                    queue=args.queue, allowed_hosts=tuple(args.allow_host))
    # the workers share the CPUs: each engine gets its share (ONNX Runtime follows torch's)
    torch.set_num_threads(max(1, cpu_limit() // max(1, args.workers)))
    try:
        app = build_app(args.model, limits, args.backend, args.prior, host=args.host)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.host not in LOCAL_HOSTS and not args.allow_host:
        log.warning("Bound to %s, but only requests for %s and localhost are answered: add "
                    "--allow-host <the name clients use>.", args.host, args.host)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
