"""Test servers for remote storage: a real S3 endpoint (moto's server mode) and a range-capable
HTTP file server written here on the stdlib (http.server has no Range support of its own).

Both count the requests they answer and the body bytes they send, so tests check ckptdoctor's
own `requests` / `bytes_read` against the server's view (an independent count)."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Traffic:
    requests: int = 0
    body_bytes: int = 0
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, range)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests, self.body_bytes, self.log = 0, 0, []

    def add(self, method: str, path: str, rng: str, nbytes: int) -> None:
        with self.lock:
            self.requests += 1
            self.body_bytes += nbytes
            self.log.append((method, path, rng))


class _CountingApp:
    """WSGI middleware in front of moto: counts requests and response body bytes."""

    def __init__(self, app, traffic: Traffic):
        self.app, self.traffic = app, traffic

    def __call__(self, environ, start_response):
        body = b"".join(self.app(environ, start_response))
        self.traffic.add(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                         environ.get("HTTP_RANGE", ""), len(body) if environ["REQUEST_METHOD"]
                         == "GET" else 0)
        return [body]


class MotoS3:
    """moto's ThreadedMotoServer on a random local port, its traffic counted."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.traffic = Traffic()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        wsgi = self.server._server  # the werkzeug server moto starts
        wsgi.app = _CountingApp(wsgi.app, self.traffic)
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing-secret-key", "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing-secret-key", region_name="us-east-1")

    def upload_tree(self, bucket: str, prefix: str, local: Path) -> None:
        c = self.client()
        if local.is_file():
            c.upload_file(str(local), bucket, prefix)
            return
        for p in sorted(local.rglob("*")):
            if p.is_file():
                c.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local).as_posix()}")

    def stop(self) -> None:
        self.server.stop()


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single `Range: bytes=a-b`, ETag / If-Match (412) and an
    optional stall on paths named in `server.stall`. Directory listings are the stdlib's."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _etag(self, path: str) -> str:
        st = os.stat(path)
        return '"' + hashlib.md5(f"{st.st_mtime_ns}-{st.st_size}".encode()).hexdigest() + '"'

    def send_head(self):
        srv = self.server
        rel = self.path.split("?", 1)[0]
        if any(rel.endswith(s) for s in srv.stall):
            time.sleep(srv.stall_seconds)
        path = self.translate_path(self.path)
        if os.path.isdir(path):
            if not self.path.endswith("/"):
                self.send_response(301)
                self.send_header("Location", self.path + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            f = self.list_directory(path)
            return f
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        etag = self._etag(path)
        want = self.headers.get("If-Match")
        if want and want != etag:
            self.send_response(412)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        size = os.path.getsize(path)
        f = open(path, "rb")  # noqa: SIM115 - closed by copyfile's caller
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "") or "")
        if m and not srv.ignore_ranges:
            start = int(m.group(1))
            end = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
            if start >= size:
                f.close()
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            f.seek(start)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            length = end - start + 1
        else:
            self.send_response(200)
            length = size
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.end_headers()
        self._length = length
        return f

    def copyfile(self, source, outputfile):
        n = getattr(self, "_length", None)
        data = source.read(n) if n is not None else source.read()
        # counted before the client can see the answer (no race with the test's assertions)
        self.server.traffic.add(self.command, self.path, self.headers.get("Range", ""),
                                len(data))
        outputfile.write(data)

    def send_response(self, code, message=None):
        if self.command == "HEAD" or code not in (200, 206):  # no body follows: count now
            self.server.traffic.add(self.command, self.path, self.headers.get("Range", ""), 0)
        super().send_response(code, message)


class RangeHTTP:
    """A threaded range-capable HTTP server over `root` on a random local port."""

    def __init__(self, root: Path):
        handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.traffic = self.traffic = Traffic()
        self.httpd.stall = ()
        self.httpd.stall_seconds = 0.0
        self.httpd.ignore_ranges = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
