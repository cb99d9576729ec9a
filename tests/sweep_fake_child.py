"""A stand-in evaluation for the sweep kill tests: starts in milliseconds, writes like a careless driver.

It records its PID, writes a truncated result non-atomically (as an interrupted writer would leave
it) and the temporary file an atomic writer has open mid-write, sleeps while `$FAKE_STATE/slow_<label>` exists (so a test can interrupt it mid-point), then writes the
complete result to every file of `$PRUNING_BENCH_SWEEP_OUTPUTS` and records that it finished.
"""
import json
import os
import sys
import time
from pathlib import Path

state = Path(os.environ["FAKE_STATE"])
label = sys.argv[-1]
(state / "pids").mkdir(parents=True, exist_ok=True)
(state / "pids" / str(os.getpid())).write_text(label)
outputs = [Path(p) for p in os.environ["PRUNING_BENCH_SWEEP_OUTPUTS"].split(os.pathsep)]
with open(state / "events", "a") as events:
    events.write(f"start {label} {time.time()}\n")
for path in outputs:
    path.write_text('{"dataset": "tiny", "metrics": {"acc')
    path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}").write_text("{")  # an AtomicFile mid-write
deadline = time.time() + 30
while (state / f"slow_{label}").exists() and time.time() < deadline:
    time.sleep(0.05)
time.sleep(float(os.environ.get("FAKE_SECONDS", "0.2")))
for path in outputs:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"dataset": "tiny", "model": "m", "task": "zeroshot_classification",
                               "metrics": {"acc1": 0.5}, "pruning": {"strategy": label}}))
    os.replace(tmp, path)
    path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}").unlink()
with open(state / "events", "a") as events:
    events.write(f"end {label} {time.time()}\n")
