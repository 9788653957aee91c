"""The runs' console log: Dagster's own colored console logger, whose lines show control
characters as text.

Run logs quote file names and endpoints' messages, and reach a terminal (``mllmdf
materialize``, and the runs a ``dagster dev`` daemon launches); an escape sequence in a file
name must not act on it. Named ``console``, this logger replaces Dagster's default one for every
job, with the same configuration.
"""

from __future__ import annotations

import logging

import dagster as dg

from defake_pipeline.text import visible_controls


def _shown_as_text(record: logging.LogRecord) -> bool:
    # Dagster has already formatted the whole line into msg (no args left); line breaks stay,
    # as a step's error shows its stack trace on the lines below.
    record.msg = visible_controls(record.getMessage())
    record.args = ()
    return True


@dg.logger(
    config_schema=dg.colored_console_logger.config_schema,
    description="Dagster's colored console logger, with control characters shown as text.",
)
def console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = dg.colored_console_logger.logger_fn(init_context)
    logger.addFilter(_shown_as_text)
    return logger


console = dg.Definitions(loggers={"console": console_logger})
