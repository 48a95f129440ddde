"""Reads a multipart upload straight from the request stream into its final file.

Starlette's form parser spools the whole body to a temporary file before a route runs (and before
its dependencies, the API key check among them, have run). This reader runs inside the route, after
the key check: it feeds the body to python-multipart's streaming parser as it arrives, writes the
one file part to a path built from an id we generated, hashes it on the way, and stops with 413 as
soon as the byte count passes the limit, whatever Content-Length said (or without one: chunked).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.errors import Problem, invalid

# Multipart framing around the file (boundaries, part headers, small fields) may add this much.
FRAMING_ALLOWANCE = 64 * 1024
FLUSH_BYTES = 1 << 20
HEAD_BYTES = 64


def client_filename(raw: str) -> str:
    """The last path component of what the client named its file: never used as a path, only for
    its extension and to show it back. Both separators count ("..\\..\\x.pt" and "../../x.pt")."""
    name = PureWindowsPath(PurePosixPath(raw).name).name.strip().replace("\x00", "")
    return name if name not in ("", ".", "..") else "upload"


@dataclass
class ReceivedFile:
    filename: str
    path: Path
    size: int = 0
    sha256: str = ""
    head: bytes = b""


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str | None = None
    filename: str | None = None


class _Reader:
    def __init__(self, field_name: str, limit: int, open_dest: Callable[[str], Path],
                 on_flush: Callable[[int], None], check_head: Callable[[str, bytes], None]):
        self.field_name, self.limit = field_name, limit
        self.open_dest, self.on_flush, self.check_head = open_dest, on_flush, check_head
        self.part = _Part()
        self._hname, self._hvalue = b"", b""
        self.file: ReceivedFile | None = None
        self.out: BinaryIO | None = None
        self.sha = hashlib.sha256()
        self.buf = bytearray()
        self.in_file = False
        self.head_checked = False
        self.other_bytes = 0

    # python-multipart callbacks (synchronous, called from parser.write)
    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers[self._hname.lower()] = self._hvalue
        self._hname, self._hvalue = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        self.part.name = name.decode("utf-8", "replace") if name is not None else None
        fname = options.get(b"filename")
        self.in_file = self.part.name == self.field_name and fname is not None
        if self.in_file:
            if self.file is not None:
                raise invalid(("body", self.field_name), "send one file per upload")
            filename = client_filename(fname.decode("utf-8", "replace"))
            self.file = ReceivedFile(filename=filename, path=Path())
            self.check_head(filename, b"")  # the extension alone can already be refused
            self.file.path = self.open_dest(filename)
            self.out = open(self.file.path, "wb")  # noqa: SIM115 - closed by close()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.buf += data[start:end]
        else:
            self.other_bytes += end - start
            if self.other_bytes > FRAMING_ALLOWANCE:
                raise Problem(413, f"form fields other than {self.field_name!r} exceed {FRAMING_ALLOWANCE} bytes")

    def on_part_end(self) -> None:
        self.in_file = False

    # work done between parser writes, outside the event loop
    def flush(self, final: bool = False) -> None:
        if self.file is None or not self.buf or self.out is None:
            return
        if not final and len(self.buf) < FLUSH_BYTES and (self.head_checked or len(self.buf) < HEAD_BYTES):
            return
        data = bytes(self.buf)
        self.buf.clear()
        if self.file.size + len(data) > self.limit:
            raise Problem(413, f"upload exceeds the limit of {self.limit} bytes (KD_MAX_UPLOAD_BYTES)")
        if not self.head_checked:
            self.file.head = data[:HEAD_BYTES]
            self.check_head(self.file.filename, self.file.head)
            self.head_checked = True
        self.on_flush(len(data))
        self.sha.update(data)
        self.out.write(data)
        self.file.size += len(data)

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


async def receive_file(request: Request, field_name: str, limit: int, open_dest: Callable[[str], Path],
                       on_flush: Callable[[int], None], check_head: Callable[[str, bytes], None]) -> ReceivedFile:
    """Streams the multipart field `field_name` into `open_dest(filename)`.

    `on_flush(n)` runs (in a worker thread) before each n bytes are written, to count them against a
    quota; `check_head(filename, head)` sees the extension at once and the first bytes when they
    arrive, to refuse a wrong format before the rest is read. Either may raise a Problem. On any error
    the partly written file is removed and the error propagates.
    """
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise Problem(415, "send the file as multipart/form-data with a part named "
                      f"{field_name!r} (curl -F {field_name}=@path)")
    boundary = options.get(b"boundary")
    if not boundary:
        raise Problem(400, "multipart/form-data without a boundary")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FRAMING_ALLOWANCE:
        raise Problem(413, f"upload of {declared} bytes exceeds the limit of {limit} bytes (KD_MAX_UPLOAD_BYTES)",
                      headers={"Connection": "close"})
    reader = _Reader(field_name, limit, open_dest, on_flush, check_head)
    parser = MultipartParser(boundary, {  # type: ignore[arg-type]
        "on_part_begin": reader.on_part_begin, "on_part_data": reader.on_part_data,
        "on_part_end": reader.on_part_end, "on_header_field": reader.on_header_field,
        "on_header_value": reader.on_header_value, "on_header_end": reader.on_header_end,
        "on_headers_finished": reader.on_headers_finished})
    received, done = 0, False
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + FRAMING_ALLOWANCE:  # Content-Length absent or lying
                raise Problem(413, f"upload exceeds the limit of {limit} bytes (KD_MAX_UPLOAD_BYTES)")
            try:
                parser.write(chunk)
            except Problem:
                raise
            except Exception as e:  # python-multipart's parse errors
                raise Problem(400, f"malformed multipart body: {e}") from None
            if reader.buf:
                await run_in_threadpool(reader.flush)
        done = True
        try:
            parser.finalize()
        except Exception as e:
            raise Problem(400, f"malformed multipart body: {e}") from None
        await run_in_threadpool(reader.flush, True)
        if reader.file is None:
            raise invalid(("body", field_name), f"no file: send a multipart part named {field_name!r} with a "
                          "filename")
        if reader.file.size == 0:
            raise invalid(("body", field_name), f"{reader.file.filename!r} is empty")
        reader.file.sha256 = reader.sha.hexdigest()
        return reader.file
    except BaseException as e:
        if isinstance(e, Problem) and not done:
            # answer, then close the connection: uvicorn would otherwise read (and drop) the rest of the body
            e.headers = {**(e.headers or {}), "Connection": "close"}
        reader.close()
        if reader.file is not None and reader.file.path != Path():
            reader.file.path.unlink(missing_ok=True)
        raise
    finally:
        reader.close()
