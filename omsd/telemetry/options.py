"""OpenMSIStream's heartbeat and log-topic options, over the config's ``heartbeat:``/``log:`` sections.

``--heartbeat_topic_name``, ``--heartbeat_program_id``, ``--heartbeat_interval_secs``,
``--log_topic_name``, ``--log_program_id``, ``--log_interval_secs`` (and their
dash spellings), as OpenMSIStream's long-running programs take them; used by
``omsd upload --watch`` and ``omsd download``.
"""

from __future__ import annotations

import argparse

from omsd.config import Config, HeartbeatConfig, LogTopicConfig


def add_telemetry_arguments(parser: argparse.ArgumentParser, title: str = "heartbeats and log topic") -> None:
    """OpenMSIStream's heartbeat and log-topic options (they override the config's sections)."""
    group = parser.add_argument_group(f"{title} (override the config's heartbeat:/log:)")
    for kind, what in (("heartbeat", "heartbeat messages"), ("log", "warnings and errors, batched")):
        group.add_argument(f"--{kind}-topic-name", f"--{kind}_topic_name", dest=f"{kind}_topic", default=None,
                           metavar="TOPIC", help=f"topic for {what}")
        group.add_argument(f"--{kind}-program-id", f"--{kind}_program_id", dest=f"{kind}_program_id", default=None,
                           metavar="ID", help=f"key prefix of the {kind} messages (<ID>_{kind})")
        group.add_argument(f"--{kind}-interval-secs", f"--{kind}_interval_secs", dest=f"{kind}_interval_secs",
                           type=_positive_float, default=None, metavar="S",
                           help=f"seconds between {kind} messages (default 30)")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds > 0")
    return value


def resolve(config: Config, args: argparse.Namespace) -> tuple[HeartbeatConfig | None, LogTopicConfig | None]:
    """The heartbeat and log settings: the command line's, else the config's."""
    hb = config.heartbeat
    heartbeat = None
    if args.heartbeat_topic or hb is not None:
        base = hb or HeartbeatConfig(topic=args.heartbeat_topic)
        heartbeat = HeartbeatConfig(topic=args.heartbeat_topic or base.topic,
                                    interval_secs=args.heartbeat_interval_secs or base.interval_secs,
                                    program_id=args.heartbeat_program_id or base.program_id)
    lg = config.log
    log_cfg = None
    if args.log_topic or lg is not None:
        base_id = heartbeat.program_id if heartbeat is not None else "omsd"
        base = lg or LogTopicConfig(topic=args.log_topic, program_id=base_id)
        log_cfg = LogTopicConfig(topic=args.log_topic or base.topic,
                                 interval_secs=args.log_interval_secs or base.interval_secs,
                                 program_id=args.log_program_id or base.program_id, level=base.level)
    return heartbeat, log_cfg
