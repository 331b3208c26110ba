"""A DataFileStreamProcessor: appends a checksum line per file to a summary file in the output directory."""

import hashlib

from workers.compat import DataFileStreamProcessor


class ChecksumProcessor(DataFileStreamProcessor):
    """Writes "<relative path> <size> <sha256>" for every file; files named corrupt* fail."""

    def __init__(self, config, topic_name, summary_name, **kwargs):
        super().__init__(config, topic_name, **kwargs)
        self.summary_path = self._output_dir / summary_name

    def _process_downloaded_data_file(self, datafile, lock):
        try:
            if datafile.filename.startswith("corrupt"):
                raise ValueError(f"{datafile.filename}: unreadable header")
            digest = hashlib.sha256(datafile.bytestring).hexdigest()
            with lock:
                with open(self.summary_path, "a") as handle:
                    handle.write(f"{datafile.relative_filepath} {len(datafile.bytestring)} {digest}\n")
        except Exception as exc:
            return exc
        return None

    @classmethod
    def run_from_command_line(cls, args=None):
        parser = cls.get_argument_parser()
        parser.add_argument("--summary_name", default="checksums.txt", help="name of the summary file")
        args = parser.parse_args(args)
        processor = cls(
            args.config,
            args.topic_name,
            args.summary_name,
            consumer_group_id=args.consumer_group_id,
            update_secs=args.update_seconds,
            mode=args.mode,
            filepath_regex=args.download_regex,
            output_dir=args.output_dir,
            n_threads=args.n_threads,
        )
        n_read, n_processed, n_files, recent = processor.process_files_as_read()
        processor.logger.info(f"Read {n_read} msgs, processed {n_processed} msgs and {n_files} files")


def main(args=None):
    ChecksumProcessor.run_from_command_line(args)


if __name__ == "__main__":
    main()
