"""Unary gRPC calls in a loop with grpcio (gRPC C-core), for tests/grpc.rs.

Usage: python3 grpc_unary_loop.py TARGET CLIENTS
Each of CLIENTS threads has its own channel to TARGET (host:port) and calls /baton.test.Probe/Echo with a distinct
payload, which must come back unchanged, until stdin closes. Every 100 ms, and once more at the end, it prints one
JSON line: {"ok": [per client], "failed": [per client], "errors": [first few]}.
"""
import json
import sys
import threading
import time

import grpc

METHOD = "/baton.test.Probe/Echo"


def main():
    target, clients = sys.argv[1], int(sys.argv[2])
    stop = threading.Event()
    ok = [0] * clients
    failed = [0] * clients
    errors = []

    def run(i):
        # A dedicated channel per client (no subchannel sharing between clients).
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        echo = channel.unary_unary(METHOD)  # raw bytes in and out: no serializer
        n = 0
        while not stop.is_set():
            n += 1
            body = ("client %d call %d %s" % (i, n, "x" * (n % 300))).encode()
            try:
                got = echo(body, timeout=10)
                if got == body:
                    ok[i] += 1
                else:
                    failed[i] += 1
                    errors.append("client %d call %d: answered %r" % (i, n, got[:40]))
            except grpc.RpcError as e:
                failed[i] += 1
                if len(errors) < 10:
                    errors.append("client %d call %d: %s %s" % (i, n, e.code(), e.details()))
            time.sleep(0.002)
        channel.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()

    def report():
        print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:10]}), flush=True)

    def reporter():
        while not stop.is_set():
            report()
            time.sleep(0.1)

    threading.Thread(target=reporter, daemon=True).start()
    sys.stdin.read()  # until the test closes stdin
    stop.set()
    for t in threads:
        t.join(timeout=15)
    report()


if __name__ == "__main__":
    main()
