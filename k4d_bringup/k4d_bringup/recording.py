"""MCAP recording and replay of ROS 2 topics without a distro (Foxglove and ``ros2 bag`` read the files).

Recording subscribes with ``raw=True``, so messages are stored exactly as they crossed DDS (CDR),
with ``ros2msg`` schemas built from the installed ``.msg`` definitions, the layout ``ros2 bag record
-s mcap`` writes. Replay publishes the stored bytes on the same topics with the recorded timing.

    k4d sim --headless --duration 10 --record out/run1      # writes out/run1/*.mcap
    k4d replay out/run1/k4d_sim.mcap                          # publishes it into the graph
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

from mcap.reader import make_reader
from mcap.writer import CompressionType, Writer

_MSG_SEPARATOR = "=" * 80


def _share_dirs() -> list[Path]:
    """Candidate ``share/`` prefixes holding ``<pkg>/msg/*.msg`` (AMENT_PREFIX_PATH, the venv, k4d_msgs' install)."""
    dirs = [Path(p) / "share" for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    dirs.append(Path(sys.prefix) / "share")
    try:
        import k4d_msgs

        pkg_dir = Path(k4d_msgs.__file__).parent  # .../install/k4d_msgs/lib/pythonX/site-packages/k4d_msgs
        dirs.append(pkg_dir.parents[3] / "share")
    except ImportError:
        pass
    return dirs


def _find_definition(datatype: str) -> str:
    pkg, _, name = datatype.partition("/msg/") if "/msg/" in datatype else datatype.partition("/")
    for d in _share_dirs():
        f = d / pkg / "msg" / f"{name}.msg"
        if f.is_file():
            return f.read_text()
    raise FileNotFoundError(f"no .msg definition found for {datatype!r} (searched {[str(d) for d in _share_dirs()]})")


def _dependencies(definition: str, pkg: str) -> list[str]:
    builtin = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32",
               "uint32", "int64", "uint64", "string", "wstring", "time", "duration"}
    deps = []
    for line in definition.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or "=" in line.split()[0]:
            continue
        parts = line.split()
        if len(parts) < 2 or "=" in parts[1]:
            continue  # constants
        typ = parts[0].split("[")[0].split("<")[0]
        if typ in builtin:
            continue
        if "/" not in typ:
            typ = f"{pkg}/{typ}"
        deps.append(typ.replace("/msg/", "/"))
    return deps


def message_definition(datatype: str) -> str:
    """The concatenated ``ros2msg`` definition of ``pkg/msg/Type`` with all its dependencies."""
    root = datatype.replace("/msg/", "/")
    text = _find_definition(root)
    seen, order, stack = {root}, [], list(_dependencies(text, root.split("/")[0]))
    while stack:
        dep = stack.pop(0)
        if dep in seen:
            continue
        seen.add(dep)
        dtext = _find_definition(dep)
        order.append((dep, dtext))
        stack.extend(_dependencies(dtext, dep.split("/")[0]))
    parts = [text.rstrip("\n")]
    for dep, dtext in order:
        parts.append(f"{_MSG_SEPARATOR}\nMSG: {dep}\n{dtext.rstrip()}")
    return "\n".join(parts) + "\n"


def _type_string(msg_class) -> str:
    module = msg_class.__module__.split(".")[0]
    return f"{module}/msg/{msg_class.__name__}"


class McapRecorder:
    """Records raw serialized messages of the given topics into one MCAP file (thread-safe)."""

    def __init__(self, path: str | os.PathLike, compression: str = "zstd"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "wb")
        comp = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}[compression]
        self._writer = Writer(self._fh, compression=comp)
        self._writer.start(profile="ros2", library="k4d")
        self._lock = threading.Lock()
        self._channels: dict[str, int] = {}
        self._schemas: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self._closed = False

    def add_topic(self, topic: str, msg_class) -> int:
        datatype = _type_string(msg_class)
        with self._lock:
            if datatype not in self._schemas:
                self._schemas[datatype] = self._writer.register_schema(
                    name=datatype, encoding="ros2msg", data=message_definition(datatype).encode())
            if topic not in self._channels:
                self._channels[topic] = self._writer.register_channel(
                    topic=topic, message_encoding="cdr", schema_id=self._schemas[datatype])
                self.counts[topic] = 0
            return self._channels[topic]

    def write(self, topic: str, data: bytes, log_time_ns: Optional[int] = None, publish_time_ns: Optional[int] = None) -> None:
        now = time.time_ns() if log_time_ns is None else log_time_ns
        with self._lock:
            if self._closed:
                return
            self._writer.add_message(channel_id=self._channels[topic], log_time=now, data=bytes(data),
                                     publish_time=publish_time_ns if publish_time_ns is not None else now,
                                     sequence=self.counts[topic])
            self.counts[topic] += 1

    def subscribe(self, node, topics: Iterable[tuple[str, type, object]]) -> list:
        """Subscribe ``node`` to ``(topic, msg_class, qos)`` triples in raw mode, writing every message."""
        subs = []
        for topic, cls, qos in topics:
            self.add_topic(topic, cls)
            subs.append(node.create_subscription(cls, topic, lambda data, t=topic: self.write(t, data), qos, raw=True))
        return subs

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._writer.finish()
                self._fh.close()
                self._closed = True


def read_messages(path: str | os.PathLike, topics: Optional[Iterable[str]] = None) -> Iterator[tuple[str, str, int, bytes]]:
    """Yield ``(topic, datatype, log_time_ns, cdr_bytes)`` in log-time order: of every topic when ``topics`` is
    None, of none when it is empty."""
    with open(path, "rb") as fh:
        reader = make_reader(fh)
        wanted = None if topics is None else list(topics)
        for schema, channel, message in reader.iter_messages(topics=wanted, log_time_order=True):
            yield channel.topic, schema.name if schema else "", message.log_time, message.data


def import_message_class(datatype: str):
    """``pkg/msg/Type`` -> the generated Python class."""
    pkg, _, name = datatype.replace("/msg/", "/").partition("/")
    module = __import__(f"{pkg}.msg", fromlist=[name])
    return getattr(module, name)


def deserialize(datatype: str, data: bytes):
    from rclpy.serialization import deserialize_message

    return deserialize_message(data, import_message_class(datatype))


def recording_topics(path: str | os.PathLike) -> dict[str, str]:
    """``{topic: datatype}`` of a recording, from its summary section."""
    with open(path, "rb") as fh:
        summary = make_reader(fh).get_summary()
    if summary is None:
        raise ValueError(f"{path}: MCAP file has no summary (was the recording closed cleanly?)")
    return {ch.topic: summary.schemas[ch.schema_id].name for ch in summary.channels.values()}


def replay(node, path: str | os.PathLike, rate: float = 1.0, topics: Optional[Iterable[str]] = None,
           qos=10, stop: Optional[threading.Event] = None, discovery_wait_s: float = 2.0,
           start_delay_s: float = 0.5) -> dict[str, int]:
    """Publish a recording's messages into the graph with the recorded timing (scaled by ``rate``).

    Publishers are created first and given up to ``discovery_wait_s`` to match subscribers, then
    ``start_delay_s`` more (like ``ros2 bag play --delay``): DDS discovery is not symmetric, and a
    subscriber that the publisher already sees may not yet see the publisher, which would lose the
    first messages of a volatile topic.
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    wanted = set(topics) if topics else None
    recorded = recording_topics(path)
    if wanted is not None and not wanted <= recorded.keys():
        raise ValueError(f"{path} has no topic {', '.join(sorted(wanted - recorded.keys()))}; it has "
                         f"{', '.join(sorted(recorded)) or 'none'}")
    types = {t: d for t, d in recorded.items() if wanted is None or t in wanted}
    pubs = {t: node.create_publisher(import_message_class(d), t, qos) for t, d in types.items()}
    counts = {t: 0 for t in pubs}
    deadline = time.monotonic() + discovery_wait_s
    while time.monotonic() < deadline and not all(p.get_subscription_count() > 0 for p in pubs.values()):
        time.sleep(0.05)
    time.sleep(max(0.0, start_delay_s))
    t0_log = t0_wall = None
    for topic, _datatype, log_ns, data in read_messages(path, list(pubs)):
        if stop is not None and stop.is_set():
            break
        if t0_log is None:
            t0_log, t0_wall = log_ns, time.monotonic()
        delay = (log_ns - t0_log) * 1e-9 / rate - (time.monotonic() - t0_wall)
        if delay > 0:
            time.sleep(delay)
        pubs[topic].publish(data)
        counts[topic] += 1
    return counts
