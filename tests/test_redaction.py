from backtrans.redaction import redact


def test_a_long_secret_is_masked_wherever_it_appears():
    secret = "sk-proj-abcdefghijklmnop"
    assert redact(f"bad key {secret}; again:{secret}!", secret) == "bad key ***; again:***!"


def test_a_short_key_never_cuts_ordinary_words():
    message = "duplicate of docs.jsonl:1 (same text); the key x was refused"
    assert redact(message, "x") == "duplicate of docs.jsonl:1 (same text); the key *** was refused"
    assert redact("texts and extras", "ext") == "texts and extras"


def test_provider_shaped_keys_are_masked_without_being_named():
    assert redact("header Bearer hf_abcdefghijklmnop and sk-live-0123456789ab", None) == \
        "header Bearer hf-*** and sk-***"
