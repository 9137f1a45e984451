"""The package logger. Handlers are the application's choice, so none is configured here."""
import logging

logger = logging.getLogger("mindpet")
logger.addHandler(logging.NullHandler())
