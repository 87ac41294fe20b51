"""Progress of long steps: a bar on a terminal; elsewhere (CI, nohup, a log file) one plain line every
~10 s with the count, the elapsed time and an estimate of the time left - never bar fragments."""
from __future__ import annotations

import sys
import time


def progress(iterable, total: int, desc: str, unit: str = "item", every: float = 10.0, min_total: int = 1):
    """Iterate `iterable` (of `total` items) reporting progress on stderr; quiet below `min_total` items."""
    if total < min_total:
        yield from iterable
        return
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, total=total, desc=desc, unit=unit, mininterval=1.0, leave=False)
        return
    units = unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")
    start = last = time.time()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.time()
        if now - last >= every and done < total:
            last = now
            eta = (now - start) / done * (total - done)
            print(f"[{desc}] {done:,}/{total:,} {units} ({done / total:.0%}), {now - start:.0f}s elapsed, "
                  f"about {eta:.0f}s left", file=sys.stderr, flush=True)
    if time.time() - start >= every:
        print(f"[{desc}] {done:,} {units} in {time.time() - start:.0f}s", file=sys.stderr, flush=True)
