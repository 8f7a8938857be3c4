"""Helper of tests/test_history.py: write results into a History as fast as possible until killed.

Usage: python tests/history_writer.py PATH TAG [MAX_BYTES]

It submits in a tight loop (yielding the GIL every 100 results); the queue drops what the writer cannot keep
up with, and only committed rows are reported. Every result gets `target=TAG` and `detail="seq N"`. After each
commit of the writer thread this prints `LAST_ID TOTAL` (the highest id just committed, and how many rows this
process has committed so far) with a single write(2), so a SIGKILL can cut the output only between lines, never
inside one.
"""

from __future__ import annotations

import os
import sys
import time

from monitor.history import History
from monitor.result import Result, TlsFacts


def main() -> None:
    path, tag = sys.argv[1], sys.argv[2]
    max_bytes = int(sys.argv[3]) if len(sys.argv) > 3 else 200 * 1024 * 1024
    total = 0

    def committed(last_id: int, rows: int) -> None:
        nonlocal total
        total += rows
        os.write(1, f"{last_id} {total}\n".encode())

    history = History.open(path, max_bytes=max_bytes, on_commit=committed)
    transcript = ["S: 220 mail.lab.test ESMTP", "C: EHLO probe", "S: 250-mail.lab.test", "S: 250 PIPELINING",
                  "C: AUTH PLAIN ********", "S: 235 2.7.0 Authentication successful", "C: QUIT"]
    tls = TlsFacts(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", cert_not_after=1.9e9)
    seq = 0
    while True:
        history.submit(Result(target=tag, check="smtp", vantage="kill-test", ok=seq % 5 != 0,
                              started_at=time.time(), duration_seconds=0.25, phases={"dns": 0.01, "connect": 0.02},
                              stage=None if seq % 5 else "rcpt", reason=None if seq % 5 else "reply_5xx",
                              detail=f"seq {seq}", smtp_code=250, tls=tls, transcript=transcript))
        seq += 1
        if seq % 100 == 0:
            # Let the writer thread have the GIL now and then, as an event loop waiting on sockets does. A loop
            # that never lets go makes each of the writer's sqlite3 calls wait a whole switch interval for the
            # GIL (a convoy) and the first commit can then take seconds, which only slows this test down.
            time.sleep(0)


if __name__ == "__main__":
    main()
