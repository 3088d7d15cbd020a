#!/usr/bin/env python3
"""Load test of an OpenAI-compatible server on loopback (spo serve, llama-server, ...).

N concurrent clients send completions of a fixed length for a fixed time; prints
throughput (completion tokens/s), latency percentiles, time to first token (with
--stream), errors, and the server's RSS before and after (with --pid).

    python3 bench/load_serve.py --url http://127.0.0.1:8080 --clients 16 --tokens 64 --seconds 60 --pid PID
"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def rss_mib(pid):
    if not pid:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def one_request(url, body, stream):
    """Returns (completion tokens, latency s, time to first token s)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    if not stream:
        data = json.loads(resp.read())
        latency = time.perf_counter() - t0
        return data["usage"]["completion_tokens"], latency, latency
    first, pieces = None, 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk["choices"][0].get("text"):
            pieces += 1
            if first is None:
                first = time.perf_counter() - t0
    return pieces, time.perf_counter() - t0, first or 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=100000)
    ap.add_argument("--stream", action="store_true", help="stream, and measure time to first token")
    ap.add_argument("--pid", type=int, help="server process, for its RSS")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--label", default="")
    ap.add_argument("--hog-words", type=int, default=0,
                    help="one more client that keeps sending a prompt of this many words (1 new token each); "
                         "its requests are not counted: it measures how a huge prompt delays the others")
    args = ap.parse_args()

    lock = threading.Lock()
    results, errors = [], []
    deadline = time.perf_counter() + args.seconds
    rss_before = rss_mib(args.pid)

    def client(k):
        i = 0
        while time.perf_counter() < deadline:
            with lock:
                if len(results) + len(errors) >= args.max_requests:
                    return
            body = {"prompt": args.prompt, "max_tokens": args.tokens, "temperature": 1.0,
                    "seed": k * 100000 + i, "ignore_eos": True, "stream": args.stream}
            try:
                r = one_request(args.url, body, args.stream)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                with lock:
                    errors.append(str(e))
            i += 1

    def hog():
        body = {"prompt": " ".join(["word"] * args.hog_words), "max_tokens": 1}
        while time.perf_counter() < deadline:
            try:
                one_request(args.url, body, False)
            except Exception:  # noqa: BLE001 - the hog's own failures do not matter
                time.sleep(0.1)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    if args.hog_words:
        threads.append(threading.Thread(target=hog))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    rss_after = rss_mib(args.pid)
    tokens = sum(r[0] for r in results)
    lat = sorted(r[1] for r in results)
    ttft = sorted(r[2] for r in results)

    def pct(v, p):
        return v[min(len(v) - 1, int(p / 100 * len(v)))] if v else float("nan")

    report = {
        "label": args.label, "clients": args.clients, "tokens_per_request": args.tokens, "stream": args.stream,
        "seconds": round(wall, 1), "requests": len(results), "errors": len(errors),
        "completion_tokens": tokens, "tokens_per_second": round(tokens / wall, 1),
        "latency_p50_s": round(pct(lat, 50), 3), "latency_p99_s": round(pct(lat, 99), 3),
        "ttft_p50_s": round(pct(ttft, 50), 3), "ttft_p99_s": round(pct(ttft, 99), 3),
        "mean_tokens_per_request": round(statistics.mean([r[0] for r in results]), 1) if results else 0,
        "rss_mib_before": rss_before and round(rss_before), "rss_mib_after": rss_after and round(rss_after),
        "first_errors": errors[:3],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
