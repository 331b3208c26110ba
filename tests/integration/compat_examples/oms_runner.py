"""Run a MetadataJSONReproducer subclass under the real OpenMSIStream package.

    python oms_runner.py FILE CLASS [OpenMSIStream arguments]

OpenMSIStream 1.8.8's MetadataJSONReproducer.run_from_command_line passes the
consumer topic twice (a TypeError), so this builds the instance the way its
constructor documents and runs it; it stops on "q" typed on stdin.
"""

import importlib.util
import sys


def main():
    path, class_name, *argv = sys.argv[1:]
    spec = importlib.util.spec_from_file_location("oms_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = getattr(module, class_name)
    args = cls.get_argument_parser().parse_args(argv)
    reproducer = cls(args.config, args.consumer_topic_name, args.producer_topic_name, output_dir=args.output_dir,
                     mode=args.mode, consumer_group_id=args.consumer_group_id,
                     n_consumer_threads=args.n_consumer_threads, n_producer_threads=args.n_producer_threads)
    reproducer.produce_processing_results_for_files_as_read()
    reproducer.close()


if __name__ == "__main__":
    main()
