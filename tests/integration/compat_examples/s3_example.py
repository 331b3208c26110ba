"""The ready S3TransferStreamProcessor, run as OpenMSIStream's own module runs it."""

from workers.compat import S3TransferStreamProcessor


def main(args=None):
    S3TransferStreamProcessor.run_from_command_line(args)


if __name__ == "__main__":
    main()
