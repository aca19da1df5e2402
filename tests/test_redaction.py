"""`urls.redact`: credentials in a URL (userinfo, secret-named query values) and known secrets become `***`."""

from __future__ import annotations

import pytest

from gen_ssd_dagster.core.engines.urls import redact


@pytest.mark.parametrize("param", ["api_key", "API_KEY", "apikey", "key", "token", "access_token", "secret",
                                   "client_secret", "password", "sig", "X-Amz-Signature", "auth"])
def test_secret_named_query_values_are_masked(param):
    url = f"http://10.0.0.5:8000/v1?model=m&{param}=s3cr3t-VALUE&n=4"
    assert redact(url) == f"http://10.0.0.5:8000/v1?model=m&{param}=***&n=4"
    first = f"https://h/v1/completions?{param}=s3cr3t-VALUE"
    assert redact(first) == f"https://h/v1/completions?{param}=***"


def test_a_secret_in_a_message_is_masked_up_to_its_end_and_the_rest_stays():
    message = ("cannot reach teacher server at https://h.example/v1/models?token=abc.DEF-123_x#frag after 3 tries: "
               "'https://h.example/v1?sig=QQ%2Fzz' said no")
    out = redact(message)
    assert "abc.DEF-123_x" not in out and "QQ%2Fzz" not in out
    assert out == ("cannot reach teacher server at https://h.example/v1/models?token=***#frag after 3 tries: "
                   "'https://h.example/v1?sig=***' said no")


def test_harmless_query_values_stay():
    url = "http://h:8000/v1/completions?model=qwen&n=4&temperature=0.7"
    assert redact(url) == url


@pytest.mark.parametrize("url, want", [
    ("http://user:hunter2@127.0.0.1:8000/v1", "http://***@127.0.0.1:8000/v1"),
    ("https://only-a-token@h.example/v1", "https://***@h.example/v1"),
    ("http://user:p@ss@h:1/v1?x=1", "http://***@h:1/v1?x=1"),  # a password holding '@'
])
def test_userinfo_is_masked(url, want):
    assert redact(url) == want
    assert redact(f"at {url} after 3 tries") == f"at {want} after 3 tries"


def test_an_email_after_a_path_is_not_taken_for_userinfo():
    text = "see http://h/v1/help or write to ops@example.org"
    assert redact(text) == text


def test_given_secrets_are_masked_wherever_they_appear():
    key = "sk-Zq8vN3secretKEY-1234"
    assert redact(f"invalid api key: Bearer {key}", [key, None, ""]) == "invalid api key: Bearer ***"
    assert redact(f"invalid api key: Bearer {key}") == f"invalid api key: Bearer {key}"  # not a URL: needs the key


def test_all_at_once():
    text = "http://u:pw@h:8000/v1?api_key=K1&model=m rejected key K2"
    assert redact(text, ["K2"]) == "http://***@h:8000/v1?api_key=***&model=m rejected key ***"
