"""A DataFileStreamReproducer: line and byte counts of each file, read back from disk ("disk" mode)."""

import json

from workers.compat import DataFileStreamReproducer, ReproducerMessage


class LineCountMessage(ReproducerMessage):
    """The counts of one file as a JSON string."""

    def __init__(self, datafile, counts):
        super().__init__(datafile)
        self.counts = counts

    @property
    def msg_value(self):
        return json.dumps(self.counts)


class LineCountReproducer(DataFileStreamReproducer):
    """Produces the line and byte counts of every file to the producer topic."""

    def _get_processing_result_message_for_file(self, datafile, lock):
        try:
            with open(datafile.full_filepath, "rb") as handle:
                data = handle.read()
            counts = {"file": datafile.filename, "lines": data.count(b"\n"), "bytes": len(data)}
        except Exception as exc:
            self.logger.error(f"could not count the lines of {datafile.filename}", exc_info=exc)
            return None
        return LineCountMessage(datafile, counts)

    @classmethod
    def run_from_command_line(cls, args=None):
        parser = cls.get_argument_parser()
        args = parser.parse_args(args)
        reproducer = cls(
            args.config,
            args.consumer_topic_name,
            args.producer_topic_name,
            output_dir=args.output_dir,
            mode=args.mode,
            consumer_group_id=args.consumer_group_id,
            n_consumer_threads=args.n_consumer_threads,
            n_producer_threads=args.n_producer_threads,
            filepath_regex=args.download_regex,
        )
        reproducer.produce_processing_results_for_files_as_read()
        reproducer.close()


def main(args=None):
    LineCountReproducer.run_from_command_line(args)


if __name__ == "__main__":
    main()
