"""Corpus, cleaning, tokenizer, token shards (TFDS/ArrayRecord) and the Grain loader."""

import logging


class _DropBeamGcpNotice(logging.Filter):
    """apache_beam logs "apitools not found, and bigquery client libraries are not available ..." on the root
    logger when it is imported without its GCP extra, which is every command on a machine without Dataflow;
    that one message is dropped (the GCP extra's absence is reported where it matters: a Dataflow runner)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


logging.getLogger().addFilter(_DropBeamGcpNotice())
