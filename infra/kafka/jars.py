"""Kafka's runtime jars from Maven Central, fetched once into a cache, and the Java to run them.

``ensure_jars`` runs ``mvn dependency:copy-dependencies`` on ``pom.xml`` next to this module;
a marker holding the pom's hash makes an interrupted or outdated download start over.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from schemas.errors import OutsideFailure

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
log = logging.getLogger(__name__)


class BrokerError(OutsideFailure):
    """The broker could not be fetched, started or stopped; the message says why."""


def kafka_version() -> str:
    """Kafka version pinned in ``pom.xml`` (its ``kafka.version`` property)."""
    node = (
        ET.parse(POM)
        .getroot()
        .find("m:properties/m:kafka.version", {"m": "http://maven.apache.org/POM/4.0.0"})
    )
    if node is None or not (node.text or "").strip():
        msg = f"{POM} has no <kafka.version> property"
        raise BrokerError(msg)
    return node.text.strip()


def _cache_root(cache_dir: str | None) -> Path:
    chosen = cache_dir or os.environ.get("QBTC_KAFKA_CACHE")
    if chosen:
        return Path(chosen).expanduser()
    return Path.home() / ".cache" / "qbtc" / f"kafka-{kafka_version()}"


def jars_ready(cache_dir: str | None = None) -> bool:
    """Whether the jar cache is complete for the pinned pom, so ``ensure_jars`` will not download."""
    marker = _cache_root(cache_dir) / "lib" / ".complete"
    return marker.is_file() and marker.read_text() == _marker_text()


def _marker_text() -> str:
    return f"kafka {kafka_version()} pom-sha256 {hashlib.sha256(POM.read_bytes()).hexdigest()}\n"


def _duplicate_artifacts(lib: Path) -> list[str]:
    seen: dict[str, list[str]] = {}
    for jar in sorted(lib.glob("*.jar")):
        m = re.match(r"(.+?)-\d[^/]*\.jar$", jar.name)  # artifact-<version>.jar
        seen.setdefault(m.group(1) if m else jar.stem, []).append(jar.name)
    return [" and ".join(names) for names in seen.values() if len(names) > 1]


def ensure_jars(cache_dir: str | None = None) -> Path:
    """Kafka's runtime jars, fetched with mvn on first use; returns the directory holding them.

    The cache is ``cache_dir``, else ``$QBTC_KAFKA_CACHE``, else ``~/.cache/qbtc/kafka-<version>``,
    and the jars go to its ``lib/``. A marker written after a successful download (holding the
    pom's hash) makes an interrupted or outdated download start over.
    """
    root = _cache_root(cache_dir)
    lib = root / "lib"
    if jars_ready(cache_dir):
        return lib
    _java()  # mvn needs it too: say so clearly
    mvn = shutil.which("mvn")
    if mvn is None:
        msg = f"mvn not found on PATH: Maven is needed once to fetch the Kafka jars into {lib}"
        raise BrokerError(msg)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching into the same cache
        if jars_ready(cache_dir):
            return lib
        shutil.rmtree(lib, ignore_errors=True)
        cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime"]
        cmd += [f"-DoutputDirectory={lib}", "-Dstyle.color=never"]
        log.info("fetching Kafka %s jars into %s", kafka_version(), lib)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        except subprocess.TimeoutExpired as e:
            msg = f"mvn took longer than {e.timeout:.0f}s to fetch the Kafka jars: {' '.join(cmd)}"
            raise BrokerError(msg) from e
        if out.returncode != 0:
            text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # Maven's colour codes
            tail = "\n".join(text.strip().splitlines()[-30:])
            msg = f"mvn failed (exit {out.returncode}) to fetch the Kafka jars: {' '.join(cmd)}\n{tail}"
            raise BrokerError(msg)
        dups = _duplicate_artifacts(lib)
        if dups or not (lib / f"kafka_2.13-{kafka_version()}.jar").is_file():
            msg = f"unusable jar set in {lib}: " + ("; ".join(dups) or f"no kafka_2.13-{kafka_version()}.jar")
            raise BrokerError(msg)
        (lib / ".complete").write_text(_marker_text())
    return lib


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").is_file() else None
    java = java or shutil.which("java")
    if java is None:
        msg = "java not found (set JAVA_HOME or put java on PATH): Kafka 4 needs a Java 17+ runtime"
        raise BrokerError(msg)
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    text = (out.stderr + out.stdout).strip()
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    major = (int(m.group(2) or 0) if m.group(1) == "1" else int(m.group(1))) if m else 0
    if major < 17:
        msg = f"{java} is not Java 17+ ({text.splitlines()[0] if text else 'no version'}): Kafka 4 needs 17+"
        raise BrokerError(msg)
    return java
