from conveyor_core.redaction import MASK, Redactor


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
