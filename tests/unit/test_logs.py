import asyncio
import io
import json
import logging

from bot.config import load_settings
from bot.logs import REDACTED, bind_job, setup_logging


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


def test_json_lines_with_job_id_traceback_and_redaction():
    settings = load_settings(None, log_format="json", modelslab_api_key="ml-SECRET-7654321")
    stream = io.StringIO()
    setup_logging(settings, stream=stream)
    log = logging.getLogger("bot.test")
    try:
        log.info("before any job: Émile")

        async def job() -> None:
            bind_job("job-1")
            log.warning("inside the job")
            try:
                raise RuntimeError("key ml-SECRET-7654321 refused")
            except RuntimeError:
                log.exception("it broke")

        asyncio.run(job())
        log.info("after the job")
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == [
        "before any job: Émile",
        "inside the job",
        "it broke",
        "after the job",
    ]
    # The job's context ends with its task: lines outside carry no job id.
    assert [line.get("job_id") for line in lines] == [None, "job-1", "job-1", None]
    assert lines[2]["level"] == "ERROR" and lines[2]["logger"] == "bot.test"
    assert "RuntimeError: key [redacted] refused" in lines[2]["exception"]
    assert "SECRET" not in stream.getvalue()
    assert lines[0]["time"].endswith("+00:00")


def test_text_lines_name_the_job():
    stream = io.StringIO()
    setup_logging(load_settings(None), stream=stream)
    log = logging.getLogger("bot.test")

    async def job() -> None:
        bind_job("abc123")
        log.info("working")

    try:
        asyncio.run(job())
    finally:
        logging.getLogger().handlers.clear()
    assert "bot.test [job abc123]: working" in stream.getvalue()


async def test_image_worker_threads_log_with_the_job_id():
    from bot.images import ImageProcessor
    from bot.logs import current_job

    with ImageProcessor(max_input_bytes=1 << 20, max_input_pixels=1 << 20, workers=1) as images:

        async def job(job_id: str) -> str | None:
            bind_job(job_id)
            return await images._run(current_job)

        assert list(await asyncio.gather(job("a"), job("b"))) == ["a", "b"]
