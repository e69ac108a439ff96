"""A PyFlink smoke job: read JSON events from Kafka, count per key in event time, write the counts as JSON.

It checks the pieces the real tiling job stands on, on this machine: the Kafka connector jars load into a
Flink 2.3 mini-cluster, a ``KafkaSource`` reads every partition, watermarks come from the Kafka record timestamps
(no Python timestamp assigner), a Python operator parses JSON and keyed state counts per key, and event-time timers
fire at the end of a bounded input. Runs in ``.venv-flink`` (not in the main environment)::

    .venv-flink/bin/python -m flink_jobs.smoke --bootstrap 127.0.0.1:9092 --topic payments --out counts.json

The source is bounded at the topic's latest offsets when the job starts; the replay's end markers make that
exact on tansu (see flink_jobs/replay.py). Output (JSON): ``counts`` {key: n}, and the checks ``late`` (records
at or behind the watermark when they reached the counter), ``ts_mismatch`` (record timestamp != the JSON event
time), ``malformed`` (unparseable or missing key/event time; counted and skipped), ``end_markers``, and timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JARS = ROOT / ".tools" / "jars"
JAR_NAMES = ("flink-connector-kafka.jar", "kafka-clients.jar")

# Kept in step with flink_jobs.replay (not imported: this module must not need kafka-python).
END_MARKER_FIELD = "__tessera_end__"
MALFORMED_KEY = "\x00malformed"
MARKER_KEY = "\x00end"
#: Far beyond any event time, below Long.MAX_VALUE: the end-of-input watermark fires it, nothing earlier does.
END_OF_TIME_MS = 2**63 - 2


def parse(raw: str, key: str, event_time: str) -> tuple[str, int]:
    """(key, event time) of one record; malformed records and end markers map to reserved keys."""
    try:
        value = json.loads(raw)
    except (ValueError, TypeError):
        return MALFORMED_KEY, -1
    if not isinstance(value, dict):
        return MALFORMED_KEY, -1
    if value.get(END_MARKER_FIELD):
        return MARKER_KEY, -1
    k, ts = value.get(key), value.get(event_time)
    if k is None or not isinstance(ts, int) or isinstance(ts, bool):
        return MALFORMED_KEY, -1
    return str(k), ts


def _counter_class() -> Any:
    from pyflink.common import Types
    from pyflink.datastream import KeyedProcessFunction, RuntimeContext
    from pyflink.datastream.state import ValueStateDescriptor

    class CountPerKey(KeyedProcessFunction):
        """Counts per key in ValueState; emits one JSON line per key when the final watermark passes."""

        def open(self, runtime_context: RuntimeContext) -> None:
            self.stats = runtime_context.get_state(
                ValueStateDescriptor("stats", Types.PICKLED_BYTE_ARRAY())  # [count, late, ts_mismatch]
            )

        def process_element(self, value: tuple[str, int], ctx: KeyedProcessFunction.Context) -> Any:
            stats = self.stats.value()
            if stats is None:
                stats = [0, 0, 0]
                ctx.timer_service().register_event_time_timer(END_OF_TIME_MS)
            stats[0] += 1
            record_ts = ctx.timestamp()
            if value[0] not in (MALFORMED_KEY, MARKER_KEY):
                if record_ts is None or record_ts <= ctx.timer_service().current_watermark():
                    stats[1] += 1
                if record_ts != value[1]:
                    stats[2] += 1
            self.stats.update(stats)
            return iter(())

        def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Any:
            count, late, mismatch = self.stats.value()
            yield json.dumps([ctx.get_current_key(), count, late, mismatch])

    return CountPerKey


def run(
    bootstrap: str,
    topic: str,
    *,
    key: str = "card_id",
    event_time: str = "ts",
    jars_dir: Path = DEFAULT_JARS,
    out_of_orderness_ms: int = 0,
    parallelism: int = 1,
    group_id: str = "tessera-smoke",
) -> dict[str, Any]:
    """Run the job to the end of the topic (as of now) and return the result dict."""
    t_start = time.monotonic()
    from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource

    jars = [jars_dir / name for name in JAR_NAMES]
    missing = [str(j) for j in jars if not j.exists()]
    if missing:
        raise FileNotFoundError(f"missing {missing}; run scripts/setup-streaming.sh")

    config = Configuration()
    # Python workers must run this interpreter (the Flink venv), or they fail with "No module named 'pyflink'".
    config.set_string("python.executable", sys.executable)
    config.set_string("python.client.executable", sys.executable)
    config.set_string("rest.bind-address", "127.0.0.1")
    config.set_string("rest.address", "127.0.0.1")
    config.set_string("taskmanager.host", "127.0.0.1")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(parallelism)
    env.add_jars(*(j.as_uri() for j in jars))

    source = (
        KafkaSource.builder()
        .set_bootstrap_servers(bootstrap)
        .set_topics(topic)
        .set_group_id(group_id)
        .set_client_id_prefix(group_id)
        .set_starting_offsets(KafkaOffsetsInitializer.earliest())
        .set_bounded(KafkaOffsetsInitializer.latest())
        .set_value_only_deserializer(SimpleStringSchema())
        .build()
    )
    # No timestamp assigner: the KafkaSource stamps each record with its Kafka timestamp (the event time, set by
    # the producer) and the watermark generator runs per partition inside the source.
    watermarks = WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(out_of_orderness_ms))
    stream = env.from_source(source, watermarks, "kafka-events")
    parsed = stream.map(
        lambda raw: parse(raw, key, event_time), output_type=Types.TUPLE([Types.STRING(), Types.LONG()])
    )
    counted = parsed.key_by(lambda kv: kv[0], key_type=Types.STRING()).process(
        _counter_class()(), output_type=Types.STRING()
    )

    t_submit = time.monotonic()
    counts: dict[str, int] = {}
    late = mismatch = malformed = markers = 0
    first_result: float | None = None
    with counted.execute_and_collect("tessera-kafka-smoke") as results:
        for line in results:
            if first_result is None:
                first_result = time.monotonic()
            k, n, k_late, k_mismatch = json.loads(line)
            if k == MALFORMED_KEY:
                malformed += n
            elif k == MARKER_KEY:
                markers += n
            else:
                counts[k] = n
                late += k_late
                mismatch += k_mismatch
    t_end = time.monotonic()
    return {
        "topic": topic,
        "events": sum(counts.values()),
        "counts": counts,
        "late": late,
        "ts_mismatch": mismatch,
        "malformed": malformed,
        "end_markers": markers,
        "seconds": {
            "imports_and_setup": round(t_submit - t_start, 3),
            "job": round(t_end - t_submit, 3),
            "total": round(t_end - t_start, 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flink_jobs.smoke", description=__doc__.split("\n")[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--key", default="card_id")
    p.add_argument("--event-time", default="ts")
    p.add_argument("--jars", type=Path, default=DEFAULT_JARS)
    p.add_argument("--out-of-orderness-ms", type=int, default=0)
    p.add_argument("--parallelism", type=int, default=1)
    p.add_argument("--group-id", default="tessera-smoke")
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here (default: stdout)")
    args = p.parse_args(argv)
    result = run(
        args.bootstrap,
        args.topic,
        key=args.key,
        event_time=args.event_time,
        jars_dir=args.jars,
        out_of_orderness_ms=args.out_of_orderness_ms,
        parallelism=args.parallelism,
        group_id=args.group_id,
    )
    text = json.dumps(result, sort_keys=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(
            f"smoke: {result['events']} events, {len(result['counts'])} keys, late {result['late']}, "
            f"malformed {result['malformed']}, {result['seconds']}",
            file=sys.stderr,
        )
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
