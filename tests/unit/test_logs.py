import io
import logging

from bot.config import load_settings
from bot.logs import REDACTED, setup_logging


def test_known_secrets_are_redacted_from_messages_and_tracebacks():
    settings = load_settings(
        None, discord_token="tok-SECRET-1234567", modelslab_api_key="ml-SECRET-7654321"
    )
    stream = io.StringIO()
    setup_logging(settings, stream=stream)
    log = logging.getLogger("bot.test")
    log.error("body was %s", {"key": "ml-SECRET-7654321"})
    try:
        raise RuntimeError("token tok-SECRET-1234567 rejected")
    except RuntimeError:
        log.exception("failure")
    output = stream.getvalue()
    assert "SECRET" not in output
    assert output.count(REDACTED) >= 3
    logging.getLogger().handlers.clear()
