"""A stand-in OpenTelemetry collector for the load tests: answers every OTLP/HTTP POST with
200 and an empty protobuf body, and counts requests and bytes (printed at exit). It decodes
nothing: the load tests measure what the gateway spends, not what a collector does.

Usage: otlp_sink.py PORT
"""

import http.server
import signal
import sys

seen = {"posts": 0, "bytes": 0}


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        seen["posts"] += 1
        seen["bytes"] += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    print(f"otlp sink: {seen['posts']} posts, {seen['bytes']} bytes", flush=True)


if __name__ == "__main__":
    main()
