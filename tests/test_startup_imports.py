"""A file replay from the command line loads none of the heavy libraries it does not use.

River's ``river.drift`` package init would import ``scipy.stats`` and pandas,
pyarrow's first conversion would import pandas, and the Kafka client is not
needed for a file: each of these cost a noticeable part of a short run's
start-up (tests/bench_pipeline.py measures it).
"""

from __future__ import annotations

import json
import subprocess
import sys

from sources.simulator import DEFAULT_SYMBOLS, SimulatorSettings, write_csv

PROBE = """
import json, sys
from flows.cli import main
code = main(["replay", sys.argv[1], "--null-sink", "--quiet"])
heavy = ("scipy", "pandas", "confluent_kafka")
print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_a_file_replay_imports_no_scipy_pandas_or_kafka_client(tmp_path):
    path = tmp_path / "ticks.csv"
    write_csv(
        str(path), SimulatorSettings(symbols=DEFAULT_SYMBOLS[:2], duration_s=20.0, trades_per_s=5.0, seed=1)
    )
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"code": 0, "loaded": []}


def test_adwin_is_river_drifts_own_class_once_the_package_is_imported():
    import river.drift

    from operators.features.drift_flag import ADWIN, DriftFlag

    assert river.drift.ADWIN is ADWIN
    assert type(DriftFlag()._adwin) is river.drift.ADWIN
