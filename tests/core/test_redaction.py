import traceback

import pytest

from conveyor_core.redaction import (
    FIELD_MAX_CHARS,
    MASK,
    Redactor,
    bounded,
    clean,
    clean_job_id,
    clean_traceback,
    scrub,
)


def test_masks_secret_looking_keys_at_any_depth_and_case() -> None:
    redact = Redactor()
    data = {
        "Email": "a@b.c",
        "user_password": "p",
        "profile": {"api_token": "t", "name": "Ada", "tags": [{"client_secret": "s"}]},
        "count": 3,
    }
    assert redact(data) == {
        "Email": MASK,
        "user_password": MASK,
        "profile": {"api_token": MASK, "name": "Ada", "tags": [{"client_secret": MASK}]},
        "count": 3,
    }
    assert data["Email"] == "a@b.c"  # the original is left alone


def test_the_list_is_configurable() -> None:
    assert Redactor(["ssn"])({"ssn": "1", "email": "e"}) == {"ssn": MASK, "email": "e"}


def test_the_default_list_covers_the_usual_secret_names() -> None:
    names = ["api_key", "X-Api-Key", "credentials", "cookie", "passwd", "Authorization"]
    names += ["client_secret", "refresh_token", "private_key", "notify_email"]
    assert Redactor()(dict.fromkeys(names, "v")) == dict.fromkeys(names, MASK)
    assert Redactor()({"name": "Ada", "count": 3}) == {"name": "Ada", "count": 3}


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("mail to ada.l+x@example.co.uk refused", "mail to *** refused"),
        ("Authorization: Bearer cvk_abcdefgh12345", "Authorization: Bearer ***"),
        ("sent with bearer abcdefgh.ijkl-mnop", "sent with bearer ***"),
        ("the bearer key is missing", "the bearer key is missing"),
        ("token eyJhbGciOiJI.eyJzdWIiOiIx.c2lnbmF0dXJl here", "token *** here"),
        ("key cvk_prod_0123456789abcdef leaked", "key *** leaked"),
        ("redis://user:s3cr%40t@redis:6379/0", "redis://user:***@redis:6379/0"),
        ("https://:hunter2@example.org/x", "https://:***@example.org/x"),
        ("password=hunter2&user=ada", "password=***&user=ada"),
        ("DB_PASSWD: hunter2, next", "DB_PASSWD: ***, next"),
        ('{"api_key": "abc", "n": 1}', '{"api_key": ***, "n": 1}'),
        ("{'client_secret': 'zz'}", "{'client_secret': ***}"),
        ("access_token=abc max_tokens=5", "access_token=*** max_tokens=5"),
        (
            "1 validation error\nto\n  value is not valid [type=value_error, "
            "input_value='ada@example.com', input_type=str]",
            "1 validation error\nto\n  value is not valid [type=value_error, "
            "input_value=***, input_type=str]",
        ),
    ],
)
def test_scrub_masks_secrets_by_value(text: str, scrubbed: str) -> None:
    assert scrub(text) == scrubbed


def test_scrub_leaves_ordinary_text_alone() -> None:
    for text in [
        "Error 111 connecting to localhost:6379. Connection refused.",
        "http://localhost:8000/v1/jobs?state=dead",
        'File "/app/jobs.py", line 3, in send\n    @router.get("/x")',
        "job end: ValueError: key: value",
    ]:
        assert scrub(text) == text


def test_bounded_says_how_much_was_cut() -> None:
    assert bounded("x" * 10, 10) == "x" * 10
    assert (
        bounded("x" * 5000)
        == "x" * FIELD_MAX_CHARS + f"… [{5000 - FIELD_MAX_CHARS} more characters cut]"
    )
    assert clean("ada@example.com " + "y" * 5000).startswith("*** yyy")
    # A secret across the cut is masked whole, not shown in part.
    across = clean("y" * (FIELD_MAX_CHARS - 5) + " ada@example.com and more")
    assert "ada" not in across
    assert across.startswith("y" * (FIELD_MAX_CHARS - 5) + " ***")


def test_a_traceback_keeps_its_end_and_each_line_is_bounded() -> None:
    try:
        raise ValueError("refused ada@example.com: " + "z" * 10_000)
    except ValueError:
        text = "".join(traceback.format_exc())
    cleaned = clean_traceback(text)
    assert len(cleaned) < 4 * FIELD_MAX_CHARS + 100
    assert "ada@example.com" not in cleaned
    assert "ValueError: refused ***: zzz" in cleaned
    assert "more characters cut]" in cleaned


@pytest.mark.parametrize(
    "tag",
    [
        "{arq:queue}",
        "{bench:conveyor~3}",
        "{token:abc}",  # a pair's name and value in the tag
        "{x.token:}",
        "{password=}",
        "{cvk_abcdefgh12}",
        "{cvk_}",
        "{eyJhbGciOi.eyJzdWIiOi.sig}",
        "{api-key:",  # no closing brace: not minted
        "{}",
        "{a@b.co}",
    ],
)
@pytest.mark.parametrize(
    "tail", ["0123456789abcdef" * 2, "deadbeef" * 4, "0" * 32, "ab12", "A" * 32]
)
def test_a_job_id_is_cleaned_as_any_text_is(tag: str, tail: str) -> None:
    job_id = tag + tail
    assert clean_job_id(job_id) == clean(job_id)
    assert clean_job_id(job_id) == clean(job_id)  # the second time, its tag's verdict kept
