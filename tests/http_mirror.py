"""A loopback mirror of the authors' storage for the download tests: an HTTP server on 127.0.0.1 (a free port)
serving a folder with Range requests, logging every request, able to cut a file's first transfer short or to
slow transfers down. Nothing here reaches beyond 127.0.0.1."""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHUNK = 16 * 1024


class Mirror:
    """`url` serves `folder`; `requests` lists (method, path, Range header or None); `cut[path] = n` ends that path's
    next transfer after n bytes (the connection drops); `delay` seconds pass between chunks."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.requests: list[tuple[str, str, str | None]] = []
        self.cut: dict[str, int] = {}
        self.delay = 0.0
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                path = self.path.split("?")[0].lstrip("/")
                mirror.requests.append(("GET", path, self.headers.get("Range")))
                file = mirror.folder / path
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                stop = len(data)
                if path in mirror.cut:
                    stop = min(stop, start + mirror.cut.pop(path))
                for offset in range(start, stop, CHUNK):
                    self.wfile.write(data[offset:min(offset + CHUNK, stop)])
                    self.wfile.flush()
                    time.sleep(mirror.delay)
                if stop < len(data):
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, path: str) -> list[str | None]:
        """The Range header of every GET of `path`, in order."""
        return [rng for method, p, rng in self.requests if method == "GET" and p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
