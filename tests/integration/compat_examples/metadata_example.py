"""A MetadataJSONReproducer: the column names, row count and checksum of CSV files."""

import hashlib

from workers.compat import MetadataJSONReproducer


class CSVMetadataReproducer(MetadataJSONReproducer):
    """Extracts a metadata dictionary from each CSV file read from the topic."""

    def _get_metadata_dict_for_file(self, datafile):
        lines = datafile.bytestring.decode().splitlines()
        return {
            "filename": datafile.filename,
            "columns": lines[0].split(","),
            "n_rows": len(lines) - 1,
            "sha256": hashlib.sha256(datafile.bytestring).hexdigest(),
        }


def main():
    CSVMetadataReproducer.run_from_command_line()


if __name__ == "__main__":
    main()
