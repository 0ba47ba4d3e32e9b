"""The Temporal Web UI's remote codec: our compressed payloads shown as the JSON they carry.

Payloads above `COMPRESS_ABOVE` travel as `binary/zlib` (`opsconductor.schema.payloads`); the
Web UI and `temporal workflow show` print those as binary. Temporal's codec-server protocol
lets the UI send payloads to an HTTP endpoint to be decoded: a POST of a `Payloads` protobuf
as JSON to `.../decode` (and `.../encode`), answered in kind. `opsconductor serve` mounts
this at `/codec`; `opsconductor dev` runs it beside its Temporal and starts the UI with
`--ui-codec-endpoint` pointing at it. Payloads not ours pass through untouched.

The browser calls it from the UI's origin, so the allowed origins (CORS) are the UI's. Every
call needs a credential (`opsconductor.starter.auth`): a bearer token at `/codec/decode`
(the UI server sends the user's access token with `codec.passAccessToken`, over https), or,
with the local token only, the codec key in the path, `/codec/key/<key>/decode`: the dev
stack's UI has no login and so no token to pass, and is started with that endpoint instead. A
request is bounded (`MAX_REQUEST_BYTES`) and so is what one payload may inflate to
(`MAX_INFLATED_BYTES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from opsconductor.schema.payloads import LargePayloadCodec
from opsconductor.starter.auth import (
    Authenticator,
    AuthError,
    AuthUnavailable,
    authenticate_request,
    refusal,
)

CODEC_PATH = "/codec"
KEY_PATH = "/key"
MAX_REQUEST_BYTES = 64 * 1024 * 1024
MAX_INFLATED_BYTES = 256 * 1024 * 1024


def ui_origins(ui_url: str | None, configured: str | None = None) -> list[str]:
    """The origins allowed to call the codec: `configured` (a comma list), else the UI's own
    origin under both loopback names a browser may have used to open it."""
    if configured:
        return [o.strip().rstrip("/") for o in configured.split(",") if o.strip()]
    if not ui_url:
        return []
    parts = urlsplit(ui_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    port = f":{parts.port}" if parts.port else ""
    if parts.hostname in ("127.0.0.1", "localhost"):
        return [f"{parts.scheme}://127.0.0.1{port}", f"{parts.scheme}://localhost{port}"]
    return [origin]


def _problem(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def codec_endpoint(base_url: str, codec_key: str | None = None) -> str:
    """What the Web UI's `--ui-codec-endpoint` is set to: `<base>/codec`, or with the local
    token's codec key `<base>/codec/key/<key>` (the UI appends `/decode`)."""
    base = base_url.rstrip("/") + CODEC_PATH
    return f"{base}{KEY_PATH}/{codec_key}" if codec_key else base


def codec_app(origins: Sequence[str], *, auth: Authenticator) -> Starlette:
    """The codec endpoints (`/encode`, `/decode`, and under `/key/<key>`) as an app to serve
    or mount; every call authenticated by `auth`."""
    codec = LargePayloadCodec()

    async def convert(request: Request, decode: bool) -> Response:
        try:
            key = request.path_params.get("key")
            if key is None:
                await authenticate_request(auth, request)
            elif not auth.codec_key_valid(key):
                raise AuthError("the codec key in the path is not this service's")
        except (AuthError, AuthUnavailable) as err:
            return refusal(err)
        size = int(request.headers.get("content-length") or 0)
        if size > MAX_REQUEST_BYTES:
            return _problem(f"the request is {size} bytes; at most {MAX_REQUEST_BYTES}", 413)
        body = await request.body()
        if len(body) > MAX_REQUEST_BYTES:
            return _problem(f"the request is over {MAX_REQUEST_BYTES} bytes", 413)
        try:
            payloads = json_format.Parse(body, Payloads())
        except json_format.ParseError as err:
            return _problem(f"the body is not a Payloads protobuf as JSON: {err}")
        try:
            out = (await codec.decode_bounded(payloads.payloads, MAX_INFLATED_BYTES) if decode
                   else await codec.encode(payloads.payloads))
        except Exception as err:  # zlib.error, a protobuf DecodeError, the inflation bound
            return _problem(f"a payload could not be {'decoded' if decode else 'encoded'}: "
                            f"{type(err).__name__}: {err}")
        return Response(json_format.MessageToJson(Payloads(payloads=out)),
                        media_type="application/json")

    async def decode(request: Request) -> Response:
        return await convert(request, True)

    async def encode(request: Request) -> Response:
        return await convert(request, False)

    return Starlette(routes=[Route("/decode", decode, methods=["POST"]),
                             Route("/encode", encode, methods=["POST"]),
                             Route(KEY_PATH + "/{key}/decode", decode, methods=["POST"]),
                             Route(KEY_PATH + "/{key}/encode", encode, methods=["POST"])],
                     middleware=[Middleware(
                         CORSMiddleware, allow_origins=list(origins), allow_methods=["POST"],
                         allow_headers=["Content-Type", "X-Namespace", "Authorization"])])
