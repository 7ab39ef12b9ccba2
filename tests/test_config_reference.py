"""The configuration reference cannot drift from conf/: every key has a comment, every key the reference
names exists, every option says what it is, and the committed file is what the generator writes."""
from __future__ import annotations

from pathlib import Path

from regbench import config_reference as ref

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "configuration.md"


def test_every_key_of_every_tasks_config_has_a_comment():
    assert ref.undocumented() == [], "add a `# comment` beside these keys in conf/"


def test_every_option_has_a_description():
    missing = [f"{group}={name}" for group in ref.GROUPS for name, text in ref.options(group) if not text]
    assert missing == [], "give these option files an opening comment"


def test_the_reference_names_exactly_the_keys_that_exist_and_is_up_to_date():
    text = REFERENCE.read_text()
    keys = {k for defaults in ref.defaults_by_task().values() for k in defaults}
    assert ref.documented_keys(text) == keys
    assert text == ref.reference() + "\n", "regenerate: python -m regbench.config_reference > " + str(REFERENCE)


def test_comments_are_read_inline_continued_and_from_the_block_above(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("# the option's description, not a key's\n\n"
                    "# above the key\n"
                    "a: 1   # inline\n"
                    "b:\n"
                    "  c: '#not a comment'  # real\n"
                    "       # continued\n"
                    "d: 2\n")
    found = ref.comments(path, "grp")
    assert found == {"grp.a": "above the key inline", "grp.b": "", "grp.b.c": "real continued", "grp.d": ""}
