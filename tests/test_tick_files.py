"""The tick file reader: resuming mid-file and header errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from sources.tick_files import InputError, TickFileReader

T = 1_700_000_000_000


def _arrivals(chunks) -> list[int]:
    out = []
    for chunk in chunks:
        out.extend(int(a) for b in chunk.batches for a in b.arrival)
        out.extend(int(d.source.rsplit(":", 1)[1]) for d in chunk.dead)
    return sorted(out)


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_resume_at_any_chunk_reads_exactly_the_rest(tmp_path, name):
    lines = ["ts,symbol,price,qty"]
    for i in range(3000):
        lines.append("" if i % 500 == 7 else ("bad" if i % 400 == 3 else f"{T + i},S{i % 3}/USDT,1.5,2"))
    body = ("\n".join(lines) + "\n").encode()
    path = tmp_path / name
    with (gzip.open if name.endswith(".gz") else open)(path, "wb") as f:  # closed: 3.12 flushes no
        f.write(body)  # gzip buffer of a file object only collected
    reader = TickFileReader(str(path), "x", lambda: 0, block_bytes=4096)
    chunks = list(reader.chunks())
    assert len(chunks) > 5
    everything = _arrivals(chunks)
    assert len(everything) == sum(c.records for c in chunks) == 3000 - 6
    for k, chunk in enumerate(chunks):
        rest = _arrivals(reader.chunks(skip_lines=chunk.resume_at))
        assert rest == _arrivals(chunks[k + 1 :])
        assert np.all(np.array(rest) > max(_arrivals([chunk])))


def test_repeated_header_column_is_an_input_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("ts,symbol,price,price,qty\n1,A,1,2,3\n")
    with pytest.raises(InputError, match="price more than once"):
        TickFileReader(str(path), "x", lambda: 0)
