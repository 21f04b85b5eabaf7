import pytest

from backtrans.owners import OwnershipError, check_hub_id, confined_path, new_browser_id, owner_for


def test_owners_are_the_account_when_signed_in_else_the_browser():
    browser = new_browser_id()
    assert owner_for("alice", browser).key == "hf:alice"
    anonymous = owner_for(None, browser)
    assert anonymous == owner_for(None, browser) and browser not in anonymous.key  # the store keeps a hash
    assert owner_for(None, new_browser_id()) != anonymous
    assert owner_for(None, "short") != owner_for(None, "short")  # a malformed id gets a fresh owner, not a shared one
    assert anonymous.slug.startswith("anon-") and owner_for("alice", None).slug == "alice"


@pytest.mark.parametrize("text", ["squad/v2", "HuggingFaceH4/ultrafeedback_binarized", "a-b/c.d"])
def test_hub_ids_in_the_hubs_grammar_pass(text):
    assert check_hub_id(f" {text} ") == text


@pytest.mark.parametrize("text", ["/etc/passwd", "../x", "a/../b", "a/b/c", "a//b", ".a/b", "a/b.", "a--b/c",
                                  "a/..", "~/x", "a\\b/c", "", "a" * 97 + "/b", "x"])
def test_anything_else_is_refused_without_echoing_it(text):
    with pytest.raises(OwnershipError) as refused:
        check_hub_id(text)
    assert text not in str(refused.value) or not text


def test_confined_path_follows_real_paths(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.csv").write_text("x")
    (tmp_path / "out.csv").write_text("x")
    (root / "escape.csv").symlink_to(tmp_path / "out.csv")
    assert confined_path(root, "sub/ok.csv") == (root / "sub" / "ok.csv").resolve()
    for bad in ("../out.csv", str(tmp_path / "out.csv"), "escape.csv", "sub", "missing.csv"):
        with pytest.raises(OwnershipError):
            confined_path(root, bad)
