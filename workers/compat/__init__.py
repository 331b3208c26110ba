"""OpenMSIStream-compatible base classes, run on omsd's supervisor and worker pool.

A subclass written for OpenMSIStream runs unchanged except for its import
line::

    from workers.compat import DataFileStreamProcessor   # was: from openmsistream import ...

The hooks keep their names and contracts:

- ``DataFileStreamProcessor._process_downloaded_data_file(datafile, lock)``
  returns None on success or a caught Exception (raising fails too);
- ``DataFileStreamReproducer._get_processing_result_message_for_file(datafile, lock)``
  returns a :class:`ReproducerMessage` (or bytes, str, dict), or None when
  the result could not be computed — a failure, as in OpenMSIStream;
- ``MetadataJSONReproducer._get_metadata_dict_for_file(datafile)`` returns a
  dict, sent as ``json.dumps``.

``run_from_command_line``, ``get_argument_parser``,
``get_command_line_arguments`` and ``get_init_args_kwargs`` accept the
arguments OpenMSIStream registers for each class. Constructing an instance
is cheap and never touches Kafka: the arguments it was built with are
recorded, and each worker process builds its own instance from them (once)
for the ``openmsistream`` pipeline step. ``process_files_as_read()`` (and its
reproducer and S3 equivalents) runs the omsd supervisor with one pipeline
whose only step is that class; it returns after a graceful stop (SIGTERM,
SIGINT, ``omsctl stop``); the counts it returns are zeros (omsd reports its
counts through ``omsctl status``, heartbeats and metrics). Like
OpenMSIStream, such a program keeps its state (registry, control socket
``omsd.sock``) in ``<output_dir>/LOGS``; a non-zero daemon exit (78 for a
configuration error) becomes the program's exit status.

Importing this module never imports confluent_kafka (workers import it).
"""

from workers.compat.arguments import CompatArgumentParser
from workers.compat.classes import (
    DataFileStreamProcessor, DataFileStreamReproducer, MetadataJSONReproducer, Runnable, S3TransferStreamProcessor,
    handler_kind,
)
from workers.compat.messages import CompatLogger, MetadataJSONMessage, ReproducerMessage
from workers.compat.settings import class_spec, load_compat_config, s3_settings
from workers.steps.compat_step import PROCESS_LOCK

__all__ = [
    "CompatArgumentParser", "CompatLogger", "DataFileStreamProcessor", "DataFileStreamReproducer",
    "MetadataJSONMessage", "MetadataJSONReproducer", "PROCESS_LOCK", "ReproducerMessage", "Runnable",
    "S3TransferStreamProcessor", "class_spec", "handler_kind", "load_compat_config", "s3_settings",
]
