"""Every stream dasd touches (DESIGN.md "Streams"), in three parts:

- ``read``: inputs in order, compression sniffed, lines parsed into records;
- ``write``: stdout kept for records, ``-o`` written atomically, compression, resume;
- ``terminal``: what a person sees: messages, progress and library logs on stderr, and
  a view asked for instead of records (``dasd score --explain``) on stdout.

Commands import this package and use the names below.
"""

from __future__ import annotations

from dasd_cli.io.read import (GZIP_MAGIC, ZSTD_MAGIC, Line, RawLine, SkipSink, check_inputs,
                              iter_lines, iter_raw_lines, open_input, parse_line, with_rejection)
from dasd_cli.io.terminal import (progress, quiet_libraries, quiet_spawned_process,
                                  route_library_logging_to_stderr, say, show, silence_stdout_at_fd_level,
                                  stderr_is_terminal, stdout_is_terminal)
from dasd_cli.io.write import (COMPRESS_CHOICES, RecordWriter, claim_stdout, discard_records,
                               is_special_file, read_existing_ids, records_stream,
                               resolve_compression, write_json_atomic, write_text_atomic)

__all__ = ["COMPRESS_CHOICES", "GZIP_MAGIC", "ZSTD_MAGIC", "Line", "RawLine", "RecordWriter",
           "SkipSink", "check_inputs", "claim_stdout", "discard_records", "is_special_file",
           "iter_lines", "iter_raw_lines", "open_input", "parse_line", "progress", "quiet_libraries",
           "quiet_spawned_process", "read_existing_ids", "records_stream", "resolve_compression",
           "route_library_logging_to_stderr", "say", "show", "silence_stdout_at_fd_level",
           "stderr_is_terminal", "stdout_is_terminal", "with_rejection", "write_json_atomic", "write_text_atomic"]
